//! The CM side of config distribution: personalize and sign each machine's
//! config, push it to every machine that has not acknowledged the current
//! version (all at once, retrying the unreachable with backoff), answer
//! fetches, and record acknowledgements in state.json.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::envelope::Envelope;
use super::proto::{ConfigAnswer, ConfigRequest};
use crate::daemon::cluster::Shared;
use crate::identity::Id52;
use crate::p2p::{CONFIG_ALPN, frame};
use crate::personalize;
use crate::state::unix_now;

/// The signed config for the machine `peer` at the current version.
async fn envelope_for(shared: &Shared, peer: &Id52) -> Option<(String, Envelope)> {
    let config = shared.host.config()?;
    let (alias, _) = config.machine_by_id52(peer)?;
    let version = shared.cm_state.lock().await.version;
    let text = personalize::machine_toml(&config, alias, version)?;
    Some((
        alias.to_owned(),
        Envelope::seal(&shared.identity, peer, version, text),
    ))
}

pub async fn serve_fetch(shared: &Arc<Shared>, peer: Id52) -> super::proto::ConfigAnswer {
    match envelope_for(shared, &peer).await {
        Some((alias, envelope)) => {
            tracing::info!(malai_cluster = %shared.alias, malai_peer = %peer, "machine {alias} fetched config version {}", envelope.version);
            ConfigAnswer::Config { envelope }
        }
        None => {
            tracing::warn!(malai_cluster = %shared.alias, malai_peer = %peer, "refused a config fetch: not a machine of this cluster");
            ConfigAnswer::Denied {
                reason: "not a machine of this cluster".into(),
            }
        }
    }
}

/// Pushes until every machine holds the current version; sleeps until woken
/// by a config change, or until the next retry of an unreachable machine.
pub async fn pusher(shared: Arc<Shared>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let woken = shared.wake.notified();
        let pending = pending_machines(&shared).await;
        if !pending.is_empty() {
            let mut set = JoinSet::new();
            for (alias, id, addrs) in pending {
                let shared = shared.clone();
                set.spawn(async move {
                    let result = push_one(&shared, &id, &addrs).await;
                    record(&shared, &alias, &id, result).await
                });
            }
            let mut all_ok = true;
            while let Some(ok) = set.join_next().await {
                all_ok &= ok.unwrap_or(false);
            }
            if !all_ok {
                tokio::select! {
                    _ = woken => backoff = Duration::from_secs(1),
                    _ = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(Duration::from_secs(60)),
                }
                continue;
            }
        }
        backoff = Duration::from_secs(1);
        woken.await;
    }
}

/// Machines (other than the CM itself) whose acknowledged version is behind.
async fn pending_machines(shared: &Shared) -> Vec<(String, Id52, Vec<std::net::SocketAddr>)> {
    let Some(config) = shared.host.config() else {
        return Vec::new();
    };
    let state = shared.cm_state.lock().await;
    let me = shared.identity.id52();
    config
        .machines
        .iter()
        .filter(|(_, m)| m.id52 != me)
        .filter(|(alias, m)| {
            state
                .machines
                .get(*alias)
                .is_none_or(|s| s.id52 != m.id52.to_string() || s.acked_version < state.version)
        })
        .map(|(alias, m)| (alias.clone(), m.id52, m.addrs.clone()))
        .collect()
}

async fn push_one(
    shared: &Shared,
    id: &Id52,
    addrs: &[std::net::SocketAddr],
) -> anyhow::Result<u64> {
    let (_, envelope) = envelope_for(shared, id)
        .await
        .ok_or_else(|| anyhow::anyhow!("no longer a machine"))?;
    let conn = shared
        .pool
        .get(&shared.endpoint, id, addrs, CONFIG_ALPN)
        .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    frame::write_msg(&mut send, &ConfigRequest::Push { envelope }).await?;
    send.finish()?;
    match frame::read_msg::<_, ConfigAnswer>(&mut recv).await? {
        ConfigAnswer::Ack { version } => Ok(version),
        ConfigAnswer::Rejected { reason } | ConfigAnswer::Denied { reason } => {
            anyhow::bail!("refused: {reason}")
        }
        ConfigAnswer::Config { .. } => anyhow::bail!("unexpected answer to a push"),
    }
}

/// Writes the outcome of a push into state.json; true when acknowledged.
async fn record(shared: &Shared, alias: &str, id: &Id52, result: anyhow::Result<u64>) -> bool {
    let mut state = shared.cm_state.lock().await;
    let entry = state.machines.entry(alias.to_owned()).or_default();
    if entry.id52 != id.to_string() {
        *entry = crate::state::MachineSync {
            id52: id.to_string(),
            ..Default::default()
        };
    }
    let now = unix_now();
    let ok = match &result {
        Ok(version) => {
            entry.acked_version = *version;
            entry.last_contact = Some(now);
            entry.unreachable_since = None;
            entry.last_error = None;
            tracing::info!(malai_cluster = %shared.alias, malai_peer = %id, malai_config_version = *version, "machine {alias} acknowledged config version {version}");
            true
        }
        Err(e) => {
            entry.unreachable_since.get_or_insert(now);
            entry.last_error = Some(format!("{e:#}"));
            tracing::info!(malai_cluster = %shared.alias, malai_peer = %id, "push to machine {alias} failed: {e:#}");
            false
        }
    };
    if let Err(e) = state.save(&shared.state_path()) {
        tracing::error!(malai_cluster = %shared.alias, "cannot record sync state: {e:#}");
    }
    drop(state);
    shared.changed.notify_one();
    ok
}
