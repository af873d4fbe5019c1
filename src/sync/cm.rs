//! The CM side of config distribution: personalize and sign each machine's
//! config, push it to every machine that has not acknowledged the current
//! version (all at once, retrying the unreachable with backoff), answer
//! fetches, and record acknowledgements in state.json.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::envelope::Envelope;
use super::proto::{ConfigAnswer, ConfigRequest};
use crate::daemon::cluster::Shared;
use crate::identity::Id52;
use crate::p2p::{CONFIG_ALPN, frame};
use crate::personalize;
use crate::state::unix_now;

/// How long one push (dial, send, acknowledgement) may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(15);
/// Retry delays for an unreachable machine: doubling from the first to the
/// second.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

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
            // The machine is back, perhaps restarted: a pooled connection to
            // it may be dead. Dial afresh and retry pending pushes now
            // rather than at the end of a backoff.
            shared.pool.forget(&peer, CONFIG_ALPN).await;
            shared.wake.notify_one();
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

/// Pushes until every machine holds the current version, each machine on
/// its own task so one unreachable machine delays nobody else; retries a
/// failed machine with exponential backoff. A wake-up (config changed, or a
/// machine reconnected) restarts every push at once: pushes are idempotent,
/// and a push stuck on a dead connection must not hold back the new one.
pub async fn pusher(shared: Arc<Shared>) {
    let mut set: JoinSet<(String, bool)> = JoinSet::new();
    let mut inflight: HashMap<String, tokio::task::Id> = HashMap::new();
    let mut retry: HashMap<String, (Instant, Duration)> = HashMap::new();
    loop {
        let woken = shared.wake.notified();
        let now = Instant::now();
        for (alias, id, addrs) in pending_machines(&shared).await {
            if inflight.contains_key(&alias) || retry.get(&alias).is_some_and(|(at, _)| *at > now) {
                continue;
            }
            let task_shared = shared.clone();
            let task_alias = alias.clone();
            let handle =
                set.spawn(async move {
                    let shared = task_shared;
                    let result =
                        match tokio::time::timeout(PUSH_TIMEOUT, push_one(&shared, &id, &addrs))
                            .await
                        {
                            Ok(r) => r,
                            Err(_) => Err(anyhow::anyhow!(
                                "no answer within {} s",
                                PUSH_TIMEOUT.as_secs()
                            )),
                        };
                    if result.is_err() {
                        shared.pool.forget(&id, CONFIG_ALPN).await;
                    }
                    let ok = record(&shared, &task_alias, &id, result).await;
                    (task_alias, ok)
                });
            inflight.insert(alias, handle.id());
        }
        let next_retry = retry.values().map(|(at, _)| *at).min();
        tokio::select! {
            _ = woken => {
                set.abort_all();
                inflight.clear();
                retry.clear();
            }
            Some(done) = set.join_next_with_id(), if !set.is_empty() => {
                if let Ok((task, (alias, ok))) = done
                    && inflight.get(&alias) == Some(&task)
                {
                    inflight.remove(&alias);
                    if ok {
                        retry.remove(&alias);
                    } else {
                        let delay = retry.get(&alias).map_or(MIN_BACKOFF, |(_, d)| (*d * 2).min(MAX_BACKOFF));
                        retry.insert(alias, (Instant::now() + delay, delay));
                    }
                }
            }
            _ = tokio::time::sleep_until(next_retry.unwrap_or(now).into()), if next_retry.is_some() => {}
        }
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
        other => anyhow::bail!("unexpected answer to a push: {other:?}"),
    }
}

/// Writes the outcome of a push into state.json; true when acknowledged.
async fn record(shared: &Shared, alias: &str, id: &Id52, result: anyhow::Result<u64>) -> bool {
    let mut state = shared.cm_state.lock().await;
    let current = state.version;
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
            shared.announce(crate::daemon::cluster::Event::MachineAcknowledged {
                machine: alias.to_owned(),
                id52: id.to_string(),
                version: *version,
            });
            true
        }
        // A stale push failing after the machine already acknowledged (on a
        // fresher connection) changes nothing.
        Err(_) if entry.acked_version >= current => true,
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
