//! Who may talk to a cluster identity at all, and how much. Decided right
//! after the TLS handshake, before any stream is read: a key that the
//! config in force does not name (as a machine, in any principal list, or
//! as the cluster manager) is a stranger and its connection is closed at
//! once; a machine still waiting for its first config admits only its CM.
//! Members get a bounded number of connections and of streams in flight,
//! per peer and in total. Refusals are logged, at most a few lines per
//! window, so a flood of strangers cannot flood the journal.
//!
//! The one door for strangers: on a cluster manager with joins open, a
//! connection for `malai/join/1` (and nothing else: a connection carries
//! one protocol) is admitted, one per key and `MAX_JOIN_CONNECTIONS` in
//! all; the join handler decides the rest.
//!
//! Before all that, the handshakes: a connection's state is kept from its
//! first packet, before anyone knows who sends it. At most
//! `MAX_HANDSHAKES` are in flight at once (as sshd's `MaxStartups`);
//! past `RETRY_ABOVE`, a source that has not proved it receives at its
//! address gets a QUIC Retry first, which costs a real client one round
//! trip and a forged source everything.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use iroh::endpoint::{
    AfterHandshakeOutcome, Connection, EndpointHooks, Incoming, IncomingAddr, SendStream, Side,
    VarInt,
};

use crate::config::ClusterConfig;
use crate::identity::Id52;

/// Connections one peer may hold open to one cluster identity. The daemon
/// keeps one per protocol; the rest is for CLIs that dial directly.
pub const MAX_CONNECTIONS_PER_PEER: usize = 32;
/// Connections all peers together may hold open to one cluster identity.
pub const MAX_CONNECTIONS: usize = 1024;
/// Streams one peer may have in flight (commands, forwarded connections,
/// config requests) on one cluster identity, over all its connections:
/// room for a client's connection pool to a forwarded database; commands
/// have a lower cap of their own (`exec::server::MAX_COMMANDS_PER_PEER`).
pub const MAX_STREAMS_PER_PEER: usize = 256;
/// Streams all peers together may have in flight on one cluster identity.
pub const MAX_STREAMS: usize = 4096;

/// Strangers' join connections held open at once, all keys together.
pub const MAX_JOIN_CONNECTIONS: usize = 16;

/// Handshakes in flight at once (from the first packet until the gate's
/// decision), all sources together: what a flood of handshakes that never
/// finish, or of fresh keys, can make an identity hold (each is a QUIC
/// connection's state, some tens of KiB). Past it, new connections are
/// refused before any state is kept; `p2p::dial` tries again.
pub const MAX_HANDSHAKES: usize = 64;
/// Handshakes in flight past which a source address not yet validated is
/// sent a QUIC Retry (stateless) before its connection is taken: a forged
/// source never answers it, so it cannot fill the slots.
pub const RETRY_ABOVE: usize = 16;

/// The QUIC close code for a refused connection; its reason says why.
pub const REFUSED: u32 = 403;
/// The QUIC close code for a connection over the caps.
pub const OVER_CAP: u32 = 429;

/// Refusal lines logged per window; the rest are counted and summed up.
const LOG_BURST: u32 = 5;
const LOG_WINDOW: Duration = Duration::from_secs(60);

/// The gate of one cluster identity; cheap to clone.
#[derive(Debug, Clone)]
pub struct Gate {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    cluster: String,
    cm: Id52,
    /// The keys the config in force names. A std `RwLock`: read by every
    /// handshake, replaced when a config is put in force, never held across
    /// an `.await`.
    known: RwLock<Arc<BTreeSet<Id52>>>,
    connections: Counter,
    streams: Counter,
    /// Strangers' join connections (one per key), when joins are open.
    joins: Counter,
    joins_open: std::sync::atomic::AtomicBool,
    /// Every connection completed, dialled or accepted, for status.
    links: super::links::Links,
    /// Handshakes in flight (`MAX_HANDSHAKES` permits).
    handshakes: Arc<tokio::sync::Semaphore>,
    log: Mutex<RateLimit>,
}

impl Gate {
    /// A gate that admits only the cluster manager `cm` until a config is
    /// put in force with `set_config`.
    pub fn new(cluster: &str, cm: Id52, config: Option<&ClusterConfig>) -> Gate {
        let gate = Gate {
            shared: Arc::new(Shared {
                cluster: cluster.to_owned(),
                cm,
                known: RwLock::new(Arc::new(BTreeSet::new())),
                connections: Counter::new(MAX_CONNECTIONS_PER_PEER, MAX_CONNECTIONS),
                streams: Counter::new(MAX_STREAMS_PER_PEER, MAX_STREAMS),
                joins: Counter::new(1, MAX_JOIN_CONNECTIONS),
                joins_open: std::sync::atomic::AtomicBool::new(false),
                links: super::links::Links::default(),
                handshakes: Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES)),
                log: Mutex::new(RateLimit::default()),
            }),
        };
        gate.set_config(config);
        gate
    }

    /// Admits, from now on, the keys `config` names and the CM.
    pub fn set_config(&self, config: Option<&ClusterConfig>) {
        let mut known = config.map(ClusterConfig::known_peers).unwrap_or_default();
        known.insert(self.shared.cm);
        *self.shared.known.write().expect("known lock") = Arc::new(known);
    }

    /// Admits strangers' `malai/join/1` connections from now on (a CM).
    pub fn open_joins(&self) {
        self.shared
            .joins_open
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether `peer` is a member of the cluster as the config in force says.
    pub fn admits(&self, peer: &Id52) -> bool {
        self.shared.known.read().expect("known lock").contains(peer)
    }

    /// A slot for one stream of `peer`, held while the stream is served;
    /// `None` (and a rate-limited log line) when the peer or everyone
    /// together is at the cap.
    pub fn stream(&self, peer: Id52) -> Option<Permit> {
        let permit = self.shared.streams.take(peer);
        if permit.is_none() {
            self.refused(peer, "too many streams in flight");
        }
        permit
    }

    /// `stream`, for a stream just accepted: without a slot, the stream is
    /// reset with `OVER_CAP` and `None` returned.
    pub fn admit_stream(&self, peer: Id52, send: &mut SendStream) -> Option<Permit> {
        let permit = self.stream(peer);
        if permit.is_none() {
            let _ = send.reset(VarInt::from_u32(OVER_CAP));
        }
        permit
    }

    /// Whether an incoming connection may start its handshake: the slot it
    /// holds until the handshake is decided, or `None` when `incoming` was
    /// answered without one (a Retry, or refused past `MAX_HANDSHAKES`).
    pub fn admit_handshake(&self, incoming: Incoming) -> Option<(Incoming, HandshakeSlot)> {
        let slots = &self.shared.handshakes;
        let in_flight = MAX_HANDSHAKES - slots.available_permits();
        if in_flight >= RETRY_ABOVE && !incoming.remote_addr_validated() {
            // Stateless: the source comes back with a token, or never.
            if let Err(e) = incoming.retry() {
                e.into_incoming().refuse();
            }
            return None;
        }
        match slots.clone().try_acquire_owned() {
            Ok(slot) => Some((incoming, HandshakeSlot { _slot: slot })),
            Err(_) => {
                self.refused_source(&incoming.remote_addr(), "too many handshakes in flight");
                incoming.refuse();
                None
            }
        }
    }

    /// The peers this identity talked to, and how (for status).
    pub fn links(&self) -> Vec<super::links::Link> {
        self.shared.links.snapshot()
    }

    /// The endpoint hooks that apply this gate to incoming connections
    /// (and record every connection, for `links`).
    pub fn hooks(&self) -> GateHooks {
        GateHooks { gate: self.clone() }
    }

    /// Logs a refusal of `peer`, at most `LOG_BURST` lines per window.
    pub fn refused(&self, peer: Id52, why: &str) {
        let Some(suppressed) = self.may_log() else {
            return;
        };
        tracing::warn!(
            malai_cluster = %self.shared.cluster, malai_peer = %peer, malai_decision = "refused",
            "refused {peer}: {why} ({suppressed} more refusals not logged in the last {} s)",
            LOG_WINDOW.as_secs()
        );
    }

    /// Whether a refusal may be logged now, and how many were not since
    /// the last one.
    fn may_log(&self) -> Option<u64> {
        self.shared
            .log
            .lock()
            .expect("log lock")
            .allow(Instant::now())
    }

    /// `refused`, for a connection whose key is not known yet.
    fn refused_source(&self, from: &IncomingAddr, why: &str) {
        let from = match from {
            IncomingAddr::Ip(addr) => addr.to_string(),
            IncomingAddr::Relay { url, endpoint_id } => format!("{endpoint_id} through {url}"),
            other => format!("{other:?}"),
        };
        let Some(suppressed) = self.may_log() else {
            return;
        };
        tracing::warn!(
            malai_cluster = %self.shared.cluster, malai_decision = "refused",
            "refused a connection from {from}: {why} ({suppressed} more refusals not logged in the last {} s)",
            LOG_WINDOW.as_secs()
        );
    }
}

/// One handshake in flight, counted against `MAX_HANDSHAKES` until it is
/// dropped (when the handshake is decided, or given up).
#[derive(Debug)]
pub struct HandshakeSlot {
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// Applies a `Gate` right after each incoming handshake.
#[derive(Debug)]
pub struct GateHooks {
    gate: Gate,
}

impl EndpointHooks for GateHooks {
    async fn after_handshake<'a>(&'a self, conn: &'a Connection) -> AfterHandshakeOutcome {
        if conn.side() == Side::Client {
            // A connection this device dialled, to a peer it chose.
            self.gate.shared.links.record(conn);
            return AfterHandshakeOutcome::Accept;
        }
        let peer = Id52::from_public_key(conn.remote_id());
        let joining = conn.alpn() == super::JOIN_ALPN;
        if joining && !self.gate.admits(&peer) {
            return self.gate.admit_join(conn, peer);
        }
        if !self.gate.admits(&peer) {
            self.gate.refused(peer, "not a member of this cluster");
            return reject(REFUSED, "not a member of this cluster");
        }
        let Some(permit) = self.gate.shared.connections.take(peer) else {
            self.gate.refused(peer, "too many connections");
            return reject(OVER_CAP, "too many connections");
        };
        self.gate.shared.links.record(conn);
        let closed = conn.weak_handle().closed();
        tokio::spawn(async move {
            closed.await;
            drop(permit);
        });
        AfterHandshakeOutcome::Accept
    }
}

impl Gate {
    /// A stranger's join connection: admitted only where joins are open,
    /// one per key and `MAX_JOIN_CONNECTIONS` in all.
    fn admit_join(&self, conn: &Connection, peer: Id52) -> AfterHandshakeOutcome {
        if !self
            .shared
            .joins_open
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            self.refused(peer, "a join, but this device is not the cluster manager");
            return reject(REFUSED, "not a member of this cluster");
        }
        let Some(permit) = self.shared.joins.take(peer) else {
            self.refused(peer, "too many joins at once");
            return reject(OVER_CAP, "too many joins at once; try again");
        };
        let closed = conn.weak_handle().closed();
        tokio::spawn(async move {
            closed.await;
            drop(permit);
        });
        AfterHandshakeOutcome::Accept
    }
}

/// Why the peer closed `conn` as its gate does (a stranger, over a cap),
/// for the message a user sees; `None` when it closed for another reason.
pub fn refusal(conn: &Connection) -> Option<String> {
    let iroh::endpoint::ConnectionError::ApplicationClosed(close) = conn.close_reason()? else {
        return None;
    };
    let code = u64::from(close.error_code);
    (code == u64::from(REFUSED) || code == u64::from(OVER_CAP))
        .then(|| String::from_utf8_lossy(&close.reason).into_owned())
}

fn reject(code: u32, reason: &str) -> AfterHandshakeOutcome {
    AfterHandshakeOutcome::Reject {
        error_code: VarInt::from_u32(code),
        reason: reason.as_bytes().to_vec(),
    }
}

/// Counts what each peer holds, with a cap per peer and one in total.
#[derive(Debug)]
struct Counter {
    /// A std `Mutex`: held for one map update, never across an `.await`.
    held: Arc<Mutex<Held>>,
    per_peer: usize,
    total: usize,
}

#[derive(Debug, Default)]
struct Held {
    by_peer: HashMap<Id52, usize>,
    total: usize,
}

impl Counter {
    fn new(per_peer: usize, total: usize) -> Counter {
        Counter {
            held: Arc::default(),
            per_peer,
            total,
        }
    }

    fn take(&self, peer: Id52) -> Option<Permit> {
        let mut held = self.held.lock().expect("counter lock");
        let mine = held.by_peer.get(&peer).copied().unwrap_or(0);
        if mine >= self.per_peer || held.total >= self.total {
            return None;
        }
        held.by_peer.insert(peer, mine + 1);
        held.total += 1;
        Some(Permit {
            held: self.held.clone(),
            peer,
        })
    }
}

/// One connection or stream counted against its peer; given back on drop.
#[derive(Debug)]
pub struct Permit {
    held: Arc<Mutex<Held>>,
    peer: Id52,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut held = self.held.lock().expect("counter lock");
        held.total -= 1;
        if let Some(n) = held.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                held.by_peer.remove(&self.peer);
            }
        }
    }
}

/// At most `LOG_BURST` lines per `LOG_WINDOW`.
#[derive(Debug, Default)]
struct RateLimit {
    window: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl RateLimit {
    /// `Some(n)` when a line may be logged now (`n` lines were suppressed
    /// since the last one); `None` when this one is to be suppressed.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .window
            .is_none_or(|start| now.duration_since(start) >= LOG_WINDOW)
        {
            self.window = Some(now);
            self.logged = 0;
        }
        if self.logged >= LOG_BURST {
            self.suppressed += 1;
            return None;
        }
        self.logged += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn a_waiting_machine_admits_only_its_manager() {
        let cm = Identity::generate().id52();
        let gate = Gate::new("company", cm, None);
        assert!(gate.admits(&cm));
        assert!(!gate.admits(&Identity::generate().id52()));
    }

    #[test]
    fn streams_are_capped_per_peer_and_given_back() {
        let cm = Identity::generate().id52();
        let gate = Gate::new("company", cm, None);
        let (a, b) = (Identity::generate().id52(), Identity::generate().id52());
        let held: Vec<_> = (0..MAX_STREAMS_PER_PEER)
            .map(|_| gate.stream(a).expect("under the cap"))
            .collect();
        assert!(gate.stream(a).is_none(), "the cap holds for a");
        assert!(gate.stream(b).is_some(), "b has its own slots");
        drop(held);
        assert!(gate.stream(a).is_some(), "slots come back on drop");
    }

    #[test]
    fn the_total_cap_holds_across_peers() {
        let counter = Counter::new(2, 3);
        let ids: Vec<_> = (0..3).map(|_| Identity::generate().id52()).collect();
        let _a = counter.take(ids[0]).unwrap();
        let _b = counter.take(ids[1]).unwrap();
        let _c = counter.take(ids[2]).unwrap();
        assert!(counter.take(ids[0]).is_none());
    }

    #[test]
    fn refusal_lines_are_rate_limited() {
        let mut limit = RateLimit::default();
        let t0 = Instant::now();
        for _ in 0..LOG_BURST {
            assert_eq!(limit.allow(t0), Some(0));
        }
        for _ in 0..100 {
            assert_eq!(limit.allow(t0), None);
        }
        assert_eq!(limit.allow(t0 + LOG_WINDOW), Some(100));
    }
}
