//! The CM side of config distribution: personalize and sign each machine's
//! config, push it to every machine that has not acknowledged the current
//! version (a window of them at a time, retrying the unreachable with
//! backoff), answer fetches; `Cluster::record_push` keeps the
//! acknowledgements. A machine removed from the cluster is sent a signed
//! farewell (a config naming no machine) until it acknowledges one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::envelope::Envelope;
use super::proto::{ConfigRequest, FetchAnswer, PushAnswer};
use crate::cluster::{Cluster, Pushed};
use crate::identity::Id52;
use crate::p2p::{CONFIG_ALPN, frame};
use crate::personalize;

/// How long one push (dial, send, acknowledgement) may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(15);
/// Retry delays for an unreachable machine: doubling from the first to the
/// second.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Pushes in flight at once (parallel-ssh's default parallelism). Pushing
/// to hundreds of machines at once spends the CM's CPU, and on a shared
/// host the machines', on interleaving hundreds of handshakes: measured
/// in docs/BENCHMARKS.md, a window of 32 halves the CPU and the time of a
/// round to 300 machines.
const PUSH_WINDOW: usize = 32;
/// A push still unanswered after this long leaves the window to the next
/// one, and goes on: an unreachable machine (a dial waits up to 10 s)
/// holds back the others by this much at most.
const PUSH_SLOT: Duration = Duration::from_secs(1);

/// The signed config for the machine `peer` at the current version,
/// written for the protocol it understands.
struct ForMachine {
    alias: String,
    envelope: Envelope,
    protocol: u32,
    withheld: Vec<String>,
}

/// `protocol`: what the machine just said it understands; `None`: what
/// the ledger last heard from it.
fn envelope_for(cluster: &Cluster, peer: &Id52, protocol: Option<u32>) -> Option<ForMachine> {
    let in_force = cluster.in_force();
    let config = in_force.config?;
    let (alias, _) = config.machine_by_id52(peer)?;
    let protocol = protocol.map_or_else(
        || cluster.machine_protocol(alias, peer),
        |p| p.min(super::proto::PROTOCOL),
    );
    let rendered = personalize::machine_toml(&config, alias, in_force.version, protocol)?;
    Some(ForMachine {
        alias: alias.to_owned(),
        envelope: Envelope::seal(cluster.identity(), peer, in_force.version, rendered.text),
        protocol,
        withheld: rendered.withheld,
    })
}

/// A machine's fetch, saying which `protocol` it understands (1 when it
/// does not say).
pub async fn serve_fetch(cluster: &Cluster, peer: Id52, protocol: u32) -> FetchAnswer {
    match envelope_for(cluster, &peer, Some(protocol)) {
        Some(ForMachine {
            alias,
            envelope,
            withheld,
            ..
        }) => {
            cluster
                .record_fetch(&alias, &peer, protocol, &withheld)
                .await;
            tracing::info!(malai_cluster = %cluster.alias(), malai_peer = %peer, "machine {alias} fetched config version {}", envelope.version);
            // The machine is back, perhaps restarted: a pooled connection to
            // it may be dead. Dial afresh and retry its push now rather
            // than at the end of a backoff; nobody else's.
            cluster.pool().forget(&peer, CONFIG_ALPN).await;
            cluster.machine_returned(&alias);
            FetchAnswer::Config { envelope }
        }
        None => {
            tracing::warn!(malai_cluster = %cluster.alias(), malai_peer = %peer, "refused a config fetch: not a machine of this cluster");
            FetchAnswer::Denied {
                reason: "not a machine of this cluster".into(),
            }
        }
    }
}

/// Pushes until every machine holds the current version, each machine on
/// its own task, `PUSH_WINDOW` of them at a time, so one unreachable
/// machine delays nobody else by more than `PUSH_SLOT`; retries a failed
/// machine with exponential backoff. A config change restarts every
/// push at once (pushes are idempotent, and a push stuck on a dead
/// connection must not hold back the new one); a machine that fetched
/// restarts its own push only, so fetching cannot make the CM redo its
/// work for everyone.
///
/// A machine that last heard from a key the CM retired is handed over
/// first (`super::handover`), as that key, through `dialer`.
pub async fn pusher(cluster: Arc<Cluster>, dialer: super::handover::Dialer) {
    let mut set: JoinSet<(String, bool)> = JoinSet::new();
    let mut inflight: HashMap<String, tokio::task::AbortHandle> = HashMap::new();
    let mut retry: HashMap<String, (Instant, Duration)> = HashMap::new();
    let window = Arc::new(Semaphore::new(PUSH_WINDOW));
    loop {
        let woken = cluster.wait_for_work();
        let returned = cluster.wait_for_returned();
        let now = Instant::now();
        for (alias, id, addrs) in departed_machines(&cluster) {
            // Keyed apart from the members' aliases.
            let key = format!("departed {id}");
            if inflight.contains_key(&key) || retry.get(&key).is_some_and(|(at, _)| *at > now) {
                continue;
            }
            let task_cluster = cluster.clone();
            let task_key = key.clone();
            let window = window.clone();
            let handle = set.spawn(async move {
                let cluster = task_cluster;
                let sent = in_window(&window, farewell(&cluster, &id, &addrs));
                let result = match sent.await {
                    Ok(result) => result.map_err(|e| format!("{e:#}")),
                    Err(_) => Err(format!("no answer within {} s", PUSH_TIMEOUT.as_secs())),
                };
                if result.is_err() {
                    cluster.pool().forget(&id, CONFIG_ALPN).await;
                }
                let ok = cluster.record_farewell(&alias, &id, result).await;
                (task_key, ok)
            });
            inflight.insert(key, handle);
        }
        for (alias, id, addrs) in pending_machines(&cluster) {
            if inflight.contains_key(&alias) || retry.get(&alias).is_some_and(|(at, _)| *at > now) {
                continue;
            }
            let task_cluster = cluster.clone();
            let task_alias = alias.clone();
            let (dialer, window) = (dialer.clone(), window.clone());
            let handle = set.spawn(async move {
                let cluster = task_cluster;
                let delivered = async {
                    if hand_over_first(&cluster, &dialer, &task_alias, &id, &addrs).await {
                        return Ok(Landed::HandedOver);
                    }
                    push_one(&cluster, &id, &addrs).await
                };
                let result = match in_window(&window, delivered).await {
                    // It restarts on this key and fetches (`machine_returned`
                    // retries its push at once); a dial now would find it
                    // between endpoints. Retried after the first backoff
                    // if it does not.
                    Ok(Ok(Landed::HandedOver)) => return (task_alias, false),
                    Ok(Ok(Landed::Acked(p))) => Ok(p),
                    Ok(Ok(Landed::MachineAhead { offered, holds })) => {
                        move_past(&cluster, &task_alias, offered, holds).await;
                        Err(format!(
                            "it holds version {holds}, ahead of this cluster manager's {offered}"
                        ))
                    }
                    Ok(Err(e)) => Err(format!("{e:#}")),
                    Err(_) => Err(format!("no answer within {} s", PUSH_TIMEOUT.as_secs())),
                };
                if result.is_err() {
                    cluster.pool().forget(&id, CONFIG_ALPN).await;
                }
                let ok = cluster.record_push(&task_alias, &id, result).await;
                (task_alias, ok)
            });
            inflight.insert(alias, handle);
        }
        let next_retry = retry.values().map(|(at, _)| *at).min();
        tokio::select! {
            _ = woken => {
                set.abort_all();
                inflight.clear();
                retry.clear();
            }
            _ = returned => {
                for alias in cluster.take_returned() {
                    retry.remove(&alias);
                    if let Some(task) = inflight.remove(&alias) {
                        task.abort();
                    }
                }
            }
            Some(done) = set.join_next_with_id(), if !set.is_empty() => {
                if let Ok((task, (alias, ok))) = done
                    && inflight.get(&alias).is_some_and(|h| h.id() == task)
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

/// Runs `push` once `window` has room, for `PUSH_TIMEOUT` from then,
/// holding its place there until the push ends or `PUSH_SLOT` passes.
async fn in_window<T>(
    window: &Semaphore,
    push: impl Future<Output = T>,
) -> Result<T, tokio::time::error::Elapsed> {
    let place = window.acquire().await.expect("the window is never closed");
    let push = tokio::time::timeout(PUSH_TIMEOUT, push);
    tokio::pin!(push);
    tokio::select! {
        done = &mut push => done,
        () = tokio::time::sleep(PUSH_SLOT) => {
            drop(place);
            push.await
        }
    }
}

/// Hands machine `alias` over to this CM's key when it last heard from a
/// retired one; whether it did. A failure is only logged: the push that
/// follows fails too if the machine still knows only the old key, and is
/// retried; it succeeds if an earlier handover landed and its answer was
/// lost.
async fn hand_over_first(
    cluster: &Cluster,
    dialer: &super::handover::Dialer,
    alias: &str,
    id: &Id52,
    addrs: &[std::net::SocketAddr],
) -> bool {
    let chain = match crate::handover::read(cluster.dir()) {
        Ok(chain) => chain,
        Err(e) => {
            tracing::error!(malai_cluster = %cluster.alias(), "cannot read the handovers: {e:#}");
            return false;
        }
    };
    let Some(from) = super::handover::known_key(cluster, &chain, alias, id) else {
        return false;
    };
    match super::handover::send(cluster, dialer, &chain, &from, id, addrs).await {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(
                malai_cluster = %cluster.alias(), malai_peer = %id,
                "handover to machine {alias} as {from} failed: {e:#}"
            );
            false
        }
    }
}

/// Machines (other than the CM itself) whose acknowledged version is behind.
fn pending_machines(cluster: &Cluster) -> Vec<(String, Id52, Vec<std::net::SocketAddr>)> {
    let Some(config) = cluster.config() else {
        return Vec::new();
    };
    let me = cluster.id52();
    cluster.with_ledger(|state| {
        config
            .machines
            .iter()
            .filter(|(_, m)| m.id52 != me)
            .filter(|(alias, m)| {
                // Behind, or upgraded since (the same version, written for more).
                state
                    .machines
                    .get(*alias)
                    .is_none_or(|s| s.id52 != m.id52.to_string() || !s.holds(state.version))
            })
            .map(|(alias, m)| (alias.clone(), m.id52, m.addrs.clone()))
            .collect()
    })
}

/// Machines removed from the cluster that have not acknowledged a
/// farewell yet: alias, id52, address hints.
fn departed_machines(cluster: &Cluster) -> Vec<(String, Id52, Vec<std::net::SocketAddr>)> {
    cluster.with_ledger(|state| {
        state
            .departed
            .iter()
            .filter(|(_, d)| d.acked_version == 0)
            .filter_map(|(id, d)| Some((d.alias.clone(), id.parse().ok()?, d.addrs.clone())))
            .collect()
    })
}

/// Sends machine `id`, removed from the cluster, the signed farewell at the
/// current version; the version it acknowledged.
async fn farewell(
    cluster: &Cluster,
    id: &Id52,
    addrs: &[std::net::SocketAddr],
) -> anyhow::Result<u64> {
    let in_force = cluster.in_force();
    let config = in_force
        .config
        .ok_or_else(|| anyhow::anyhow!("no config in force"))?;
    let text = personalize::farewell_toml(&config, in_force.version);
    let envelope = Envelope::seal(cluster.identity(), id, in_force.version, text);
    let conn = cluster
        .pool()
        .get(cluster.endpoint(), id, addrs, CONFIG_ALPN)
        .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    frame::write_msg(&mut send, &ConfigRequest::Push { envelope }).await?;
    send.finish()?;
    match frame::read_msg::<_, PushAnswer>(&mut recv).await? {
        PushAnswer::Ack { version, .. } => Ok(version),
        // It holds a later farewell already.
        PushAnswer::Rejected {
            holds: Some(holds), ..
        } if holds >= in_force.version => Ok(holds),
        PushAnswer::Rejected { reason, .. } | PushAnswer::Denied { reason } => {
            anyhow::bail!("refused: {reason}")
        }
    }
}

/// How a push that got an answer ended.
enum Landed {
    /// Told to follow a handover to this CM's key: no push yet.
    HandedOver,
    Acked(Pushed),
    /// Refused as not newer: the machine holds `holds` >= `offered`, which
    /// this CM's state.json does not know.
    MachineAhead {
        offered: u64,
        holds: u64,
    },
}

/// A machine holds a version this CM has not reached: state.json was lost
/// or restored from an old copy. Every machine would refuse every later
/// config as "not newer", forever, so the version moves past it (the same
/// cluster.toml, through the one commit path), and it says so loudly.
async fn move_past(cluster: &Cluster, machine: &str, offered: u64, holds: u64) {
    tracing::error!(
        malai_cluster = %cluster.alias(), malai_config_version = holds,
        "machine {machine} holds config version {holds}, but this cluster manager is at {offered}: \
         its state.json was lost or restored from an old copy. Moving the version past {holds}"
    );
    let change = crate::cluster::Change::PastMachine {
        machine: machine.to_owned(),
        holds,
    };
    if let Err(e) = cluster.commit(change).await {
        tracing::error!(malai_cluster = %cluster.alias(), "cannot move the config version past {holds}: {e}");
    }
}

async fn push_one(
    cluster: &Cluster,
    id: &Id52,
    addrs: &[std::net::SocketAddr],
) -> anyhow::Result<Landed> {
    let ForMachine {
        envelope,
        protocol: rendered,
        withheld,
        ..
    } = envelope_for(cluster, id, None).ok_or_else(|| anyhow::anyhow!("no longer a machine"))?;
    let offered = envelope.version;
    tracing::debug!(malai_cluster = %cluster.alias(), malai_peer = %id, "pushing config version {offered} to {id}");
    let conn = cluster
        .pool()
        .get(cluster.endpoint(), id, addrs, CONFIG_ALPN)
        .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    frame::write_msg(&mut send, &ConfigRequest::Push { envelope }).await?;
    send.finish()?;
    match frame::read_msg::<_, PushAnswer>(&mut recv).await? {
        PushAnswer::Ack { version, protocol } => Ok(Landed::Acked(Pushed {
            version,
            reported: protocol.unwrap_or(1),
            rendered,
            withheld,
        })),
        PushAnswer::Rejected {
            holds: Some(holds), ..
        } if holds >= offered => Ok(Landed::MachineAhead { offered, holds }),
        PushAnswer::Rejected { reason, .. } | PushAnswer::Denied { reason } => {
            anyhow::bail!("refused: {reason}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two pushes that never end fill a window of two; the next one gets a
    /// place only once their slot has passed, and they go on meanwhile.
    #[tokio::test]
    async fn a_push_that_does_not_end_leaves_its_place_after_its_slot() {
        let window = Arc::new(Semaphore::new(2));
        let filled = Instant::now();
        let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
        let mut stuck = JoinSet::new();
        for _ in 0..2 {
            let (window, started_tx) = (window.clone(), started_tx.clone());
            stuck.spawn(async move {
                let _ = in_window(&window, async {
                    started_tx.send(()).unwrap();
                    std::future::pending::<()>().await;
                })
                .await;
            });
        }
        for _ in 0..2 {
            started.recv().await.unwrap();
        }
        assert_eq!(window.available_permits(), 0, "two pushes fill the window");
        let began = in_window(&window, async { Instant::now() }).await.unwrap();
        assert!(
            began - filled >= PUSH_SLOT,
            "the third push began {:?} after the window filled, before the slot passed",
            began - filled
        );
        assert!(stuck.try_join_next().is_none(), "the stuck pushes go on");
        assert_eq!(window.available_permits(), 2, "and no longer hold places");
        stuck.abort_all();
    }

    /// A push that ends gives its place back at once.
    #[tokio::test]
    async fn a_push_that_ends_gives_its_place_back() {
        let window = Semaphore::new(1);
        for n in 0..3 {
            assert_eq!(in_window(&window, async move { n }).await, Ok(n));
            assert_eq!(window.available_permits(), 1);
        }
    }
}
