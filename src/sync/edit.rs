//! Remote editing of cluster.toml on the CM: download for `config_editors`,
//! and upload with compare-and-swap on the hash it was based on, through
//! the cluster's one commit path (`Cluster::commit`): an accepted upload is
//! validated first, written atomically, gets the next version and is pushed
//! to every machine; a refused one changes nothing.

use super::proto::{Downloaded, Uploaded};
use crate::acl::{self, Decision};
use crate::cluster::{Change, Cluster, EditError};
use crate::home::hash_hex;
use crate::identity::Id52;

/// Who asks for cluster.toml or sends one.
#[derive(Debug, Clone, Copy)]
pub enum Caller {
    /// A peer over `malai/config/1`: must be in `config_editors`.
    Peer(Id52),
    /// A local user on the CM's own D-Bus (root or group malai-admin), who
    /// may edit the file in place anyway.
    Local { uid: u32 },
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Peer(id) => write!(f, "{id}"),
            Caller::Local { uid } => write!(f, "uid {uid} on this device"),
        }
    }
}

impl Caller {
    /// Whether this caller may edit; logs a refusal.
    fn check(&self, cluster: &Cluster, what: &str) -> Result<(), EditError> {
        let Caller::Peer(peer) = self else {
            return Ok(());
        };
        let reason = match cluster.config() {
            Some(config) => match acl::may_edit_config(&config, peer) {
                Decision::Allow(_) => return Ok(()),
                Decision::Deny(reason) => reason,
            },
            None => "the cluster manager has no config".to_owned(),
        };
        tracing::warn!(malai_cluster = %cluster.alias(), malai_peer = %peer, "refused config {what} by {peer}: {reason}");
        Err(EditError::Denied(reason))
    }

    fn peer_field(&self) -> String {
        match self {
            Caller::Peer(id) => id.to_string(),
            Caller::Local { .. } => String::new(),
        }
    }
}

/// cluster.toml as it is now, with its hash and the version in force.
pub async fn download(cluster: &Cluster, caller: Caller) -> Result<Downloaded, EditError> {
    caller.check(cluster, "download")?;
    let text = std::fs::read_to_string(cluster.cluster_path())
        .map_err(|e| EditError::Failed(format!("cannot read cluster.toml: {e}")))?;
    let version = cluster.with_ledger(|l| l.version);
    tracing::info!(malai_cluster = %cluster.alias(), malai_peer = %caller.peer_field(), malai_config_version = version, "{caller} downloaded cluster.toml");
    let hash = hash_hex(text.as_bytes());
    Ok(Downloaded {
        text,
        hash,
        version,
    })
}

/// Replaces cluster.toml with `text` if its hash is still `base_hash` (or
/// `force`) and it validates, and puts it in force.
pub async fn upload(
    cluster: &Cluster,
    caller: Caller,
    text: String,
    base_hash: String,
    force: bool,
) -> Result<Uploaded, EditError> {
    let peer = caller.peer_field();
    caller.check(cluster, "upload")?;
    let change = Change::Upload {
        text,
        base_hash,
        force,
    };
    match cluster.commit(change).await {
        Ok(committed) => {
            tracing::info!(
                malai_cluster = %cluster.alias(), malai_peer = %peer, malai_config_version = committed.version,
                "{caller} uploaded cluster.toml{}: {} -> {}, version {}",
                if force { " (forced)" } else { "" },
                committed.previous_hash, committed.hash, committed.version
            );
            Ok(Uploaded {
                version: committed.version,
                hash: committed.hash,
            })
        }
        Err(refusal) => {
            tracing::warn!(malai_cluster = %cluster.alias(), malai_peer = %peer, "refused an upload of cluster.toml by {caller}: {refusal}");
            Err(refusal)
        }
    }
}

/// Sends one editing request to the CM over `conn` and reads its answer,
/// of the type that answers `req`'s kind.
pub async fn ask_cm<A: serde::de::DeserializeOwned>(
    conn: &iroh::endpoint::Connection,
    req: &super::proto::ConfigRequest,
) -> anyhow::Result<A> {
    let (mut send, mut recv) = conn.open_bi().await?;
    crate::p2p::frame::write_msg(&mut send, req).await?;
    send.finish()?;
    Ok(crate::p2p::frame::read_msg(&mut recv).await?)
}
