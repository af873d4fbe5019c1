//! A machine's key rotation, on the cluster manager: the machine asks on a
//! connection authenticated with its current key (so the old key is
//! proven) and sends the new key's signature of `rotation_message` (so the
//! new key is proven); the CM then writes the new id52 wherever cluster.toml
//! names the old one (the machine, groups, editors, rules) in one commit.
//! From that config on the old key is a stranger everywhere. `ask` is the
//! machine's side.

use super::proto::{ConfigRequest, FetchAnswer, RotateAnswer, rotation_message};
use crate::cluster::{Change, Cluster};
use crate::config::NetworkSettings;
use crate::home::ClusterDir;
use crate::identity::{Id52, Identity};
use crate::p2p::{self, CONFIG_ALPN, Reach, RelayChoice};

/// Why a rotation did not happen.
#[derive(Debug)]
pub enum RotateError {
    /// The CM refused it; why.
    Refused(String),
    /// The CM could not be asked; the new key is kept for the next try.
    Unreachable(String),
}

/// The machine's side: asks the CM of `c` to replace `c`'s key with `new`;
/// the config version that did. A rotation that landed before its answer
/// was lost is recognised: the CM then refuses the old key, and gives the
/// new one its config.
pub async fn ask(
    c: &ClusterDir,
    new: &Identity,
    net: &NetworkSettings,
) -> Result<u64, RotateError> {
    let relay = RelayChoice::resolve(net, c.relay.as_ref());
    let reach = Reach {
        addrs: c.cm_addrs.clone(),
        relay: relay.dial_via(),
    };
    let (cm, old) = (c.cm_id52.to_string(), c.identity.id52().to_string());
    let proof = data_encoding::HEXLOWER.encode(&new.sign(&rotation_message(
        &cm,
        &old,
        &new.id52().to_string(),
    )));
    let request = ConfigRequest::Rotate {
        new_id52: new.id52().to_string(),
        proof,
    };
    let asked = async {
        let ep = p2p::bind(&c.identity, net, &relay, 0, Vec::new(), None).await?;
        let answer = async {
            let conn = p2p::dial(&ep, &c.cm_id52, &reach, CONFIG_ALPN).await?;
            super::edit::ask_cm::<RotateAnswer>(&conn, &request).await
        }
        .await;
        p2p::close_without_waiting(ep).await;
        answer
    }
    .await;
    match asked {
        Ok(RotateAnswer::Rotated { version }) => Ok(version),
        Ok(RotateAnswer::Rejected { reason } | RotateAnswer::Denied { reason }) => {
            Err(RotateError::Refused(reason))
        }
        Err(e) => match fetch_as(c, new, net, &reach).await {
            Some(version) => Ok(version),
            None => Err(RotateError::Unreachable(format!(
                "{e:#} (the new key is kept in {}; run the command again to retry)",
                c.dir.join("identity.key.next").display()
            ))),
        },
    }
}

/// The version of the config the CM gives `key` for `c`, if it knows it
/// as a machine.
async fn fetch_as(
    c: &ClusterDir,
    key: &Identity,
    net: &NetworkSettings,
    reach: &Reach,
) -> Option<u64> {
    let relay = RelayChoice::resolve(net, c.relay.as_ref());
    let ep = p2p::bind(key, net, &relay, 0, Vec::new(), None)
        .await
        .ok()?;
    let fetched = async {
        let conn = p2p::dial(&ep, &c.cm_id52, reach, CONFIG_ALPN).await.ok()?;
        let fetch = ConfigRequest::Fetch {
            protocol: Some(super::proto::PROTOCOL),
        };
        match super::edit::ask_cm::<FetchAnswer>(&conn, &fetch)
            .await
            .ok()?
        {
            FetchAnswer::Config { envelope } => Some(envelope.version),
            FetchAnswer::Rejected { .. } | FetchAnswer::Denied { .. } => None,
        }
    }
    .await;
    p2p::close_without_waiting(ep).await;
    fetched
}

pub async fn rotate(cluster: &Cluster, peer: Id52, new_id52: &str, proof: &str) -> RotateAnswer {
    let reject = |reason: String| {
        cluster
            .gate()
            .refused(peer, &format!("key rotation refused: {reason}"));
        RotateAnswer::Rejected { reason }
    };
    let Some(config) = cluster.config() else {
        return reject("no config in force".into());
    };
    let Some((alias, _)) = config.machine_by_id52(&peer) else {
        return RotateAnswer::Denied {
            reason: "only a machine of the cluster may rotate its key".into(),
        };
    };
    let alias = alias.to_owned();
    if peer == cluster.id52() {
        return RotateAnswer::Denied {
            reason: "the cluster manager's own key is not rotated this way".into(),
        };
    }
    let new: Id52 = match new_id52.parse() {
        Ok(id) => id,
        Err(e) => return reject(format!("new id52: {e}")),
    };
    if config.known_peers().contains(&new) || config.revoked.contains(&new) {
        return reject(format!("{new} is already named in the cluster's config"));
    }
    let signature: Option<[u8; 64]> = data_encoding::HEXLOWER
        .decode(proof.as_bytes())
        .ok()
        .and_then(|b| b.try_into().ok());
    let message = rotation_message(
        &cluster.id52().to_string(),
        &peer.to_string(),
        &new.to_string(),
    );
    if !signature.is_some_and(|sig| new.verify(&message, &sig)) {
        return reject("the new key's signature does not verify".into());
    }
    match cluster.commit(Change::Rename { old: peer, new }).await {
        Ok(committed) => {
            tracing::warn!(
                malai_cluster = %cluster.alias(), malai_peer = %peer, malai_config_version = committed.version,
                "machine {alias} rotated its key: {peer} -> {new} (config version {}); the old key is refused from now on",
                committed.version
            );
            RotateAnswer::Rotated {
                version: committed.version,
            }
        }
        Err(e) => RotateAnswer::Rejected {
            reason: format!("the cluster manager could not write the new key: {e}"),
        },
    }
}
