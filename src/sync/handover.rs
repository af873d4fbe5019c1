//! The CM side of a handover of its own key (`malai identity rotate` on
//! the CM). A machine that last heard from a retired key admits only that
//! key, so the CM dials it as that key, from an endpoint of its own that
//! accepts nothing, and sends the chain of handovers; the machine checks
//! it, and dials the new key from then on. The pusher does this first for
//! every machine behind, so one that was offline catches up when it is
//! reached again.

use std::net::SocketAddr;

use super::proto::{ConfigRequest, HandoverAnswer};
use crate::cluster::Cluster;
use crate::config::NetworkSettings;
use crate::handover::{self, Link};
use crate::identity::Id52;
use crate::p2p::{self, CONFIG_ALPN, Reach, RelayChoice};

/// What the CM binds a retired key's endpoint with: its network settings
/// and relay.
#[derive(Debug, Clone)]
pub struct Dialer {
    pub net: NetworkSettings,
    pub relay: RelayChoice,
}

/// The retired CM key machine `alias` (`id`) last acknowledged a config
/// from, when it has to be handed over first. A machine never heard from
/// is pushed to as the current key.
pub fn known_key(cluster: &Cluster, chain: &[Link], alias: &str, id: &Id52) -> Option<Id52> {
    let first = chain.first()?;
    let id = id.to_string();
    let key: Id52 = cluster.with_ledger(|ledger| {
        let entry = ledger.machines.get(alias).filter(|m| m.id52 == id)?;
        match &entry.cm {
            Some(key) => key.parse().ok(),
            // Acknowledged before the CM's key could rotate: its first key.
            None if entry.acked_version > 0 => first.from.parse().ok(),
            None => None,
        }
    })?;
    (key != cluster.id52()).then_some(key)
}

/// Sends machine `id` the handover `chain` as the retired key `from`.
pub async fn send(
    cluster: &Cluster,
    dialer: &Dialer,
    chain: &[Link],
    from: &Id52,
    id: &Id52,
    addrs: &[SocketAddr],
) -> anyhow::Result<()> {
    let key = handover::retired_key(cluster.dir(), from)?;
    let ep = p2p::bind(&key, &dialer.net, &dialer.relay, 0, Vec::new(), None).await?;
    let reach = Reach {
        addrs: addrs.to_vec(),
        relay: dialer.relay.dial_via(),
    };
    let request = ConfigRequest::Handover {
        chain: chain.to_vec(),
    };
    let answer = async {
        let conn = p2p::dial(&ep, id, &reach, CONFIG_ALPN).await?;
        super::edit::ask_cm::<HandoverAnswer>(&conn, &request).await
    }
    .await;
    // A daemon closes it whole (a CLI's `close_without_waiting` would
    // leave its socket behind).
    ep.close().await;
    match answer? {
        HandoverAnswer::Accepted { cm } => {
            tracing::info!(
                malai_cluster = %cluster.alias(), malai_peer = %id,
                "machine {id} followed the handover from {from} to {cm}"
            );
            Ok(())
        }
        HandoverAnswer::Rejected { reason } | HandoverAnswer::Denied { reason } => {
            anyhow::bail!("it refused the handover from {from}: {reason}")
        }
    }
}
