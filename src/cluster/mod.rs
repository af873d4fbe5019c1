//! One cluster identity of this device, as a handle: its key, endpoint and
//! connection pool, its role, the config in force (published on a `watch`),
//! the gate that decides who may connect, and on a cluster manager the
//! ledger of versions and acknowledgements (state.json). Every change of
//! the config in force goes through one of two doors: `commit` on a
//! cluster manager (start-up, rescan, upload) and `accept` on a machine (a
//! config its CM signed). The protocols (`exec`, `sync`, `forward`) and
//! `dbus` take a `&Cluster`; they read it, and change it only through its
//! methods.

mod accept;
mod commit;
pub mod envelope;
mod freshness;
mod revocation;
pub mod revoked;
mod saver;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use iroh::Endpoint;
use tokio::sync::{Notify, broadcast, watch};

pub use accept::AcceptError;
pub use commit::{Change, Committed, EditError, IN_FORCE_FILE, commit_files, lock_dir};
pub use revocation::Revoked;

use crate::config::ClusterConfig;
use crate::home::{self, ClusterDir, Role};
use crate::identity::{Id52, Identity};
use crate::p2p::Pool;
use crate::p2p::gate::Gate;
use crate::state::{CmState, MachineSync, unix_now};
use crate::status::ClusterStatus;

/// The running clusters of a daemon, by alias.
pub type ByAlias = std::collections::BTreeMap<String, Arc<Cluster>>;

/// The config in force and the version it has: what every decision of
/// this cluster is taken with.
#[derive(Debug, Clone, Default)]
pub struct InForce {
    /// `None` while a machine waits for its first config.
    pub config: Option<Arc<ClusterConfig>>,
    /// Its version (0: none).
    pub version: u64,
    /// Why it allows nothing now but to the CM: no word from the CM for
    /// longer than its `max_config_age` (`freshness`).
    pub expired: Option<String>,
}

impl InForce {
    /// The config to decide a request of `peer` with, or why every request
    /// of `peer` is refused now: no config yet, or an expired one (the CM
    /// `cm` is still served, so it can bring the next).
    pub fn for_peer(&self, peer: &Id52, cm: &Id52) -> Result<&Arc<ClusterConfig>, String> {
        let config = self.config.as_ref().ok_or_else(|| {
            "this machine has not received its config from the cluster manager yet".to_owned()
        })?;
        match &self.expired {
            Some(why) if peer != cm => Err(why.clone()),
            _ => Ok(config),
        }
    }
}

/// Something that happened to a cluster, announced as it happens.
#[derive(Debug, Clone)]
pub enum Event {
    /// A config version was put in force here.
    ConfigApplied { version: u64, hash: String },
    /// A machine acknowledged a config version (CM only).
    MachineAcknowledged {
        machine: String,
        id52: String,
        version: u64,
    },
}

/// One cluster identity; shared as `Arc<Cluster>`.
#[derive(Debug)]
pub struct Cluster {
    alias: String,
    dir: PathBuf,
    identity: Identity,
    cm_id52: Id52,
    endpoint: Endpoint,
    pool: Pool,
    gate: Gate,
    /// The config in force. A `watch`: readers take a cheap snapshot (two
    /// `Arc`s), and whoever wants to follow it subscribes.
    in_force: watch::Sender<InForce>,
    /// Where the CM may be reached. A std `RwLock`: read for each dial,
    /// written when a config brings new hints; never held across `.await`.
    cm_addrs: RwLock<Vec<SocketAddr>>,
    /// A std `RwLock`: read everywhere, written once when a waiting machine
    /// gets its first config; never held across `.await`.
    role: RwLock<Role>,
    /// Serializes the changes to the config in force (`applying`). A tokio
    /// `Mutex`: a change waiting for it gives the worker to other tasks.
    apply: tokio::sync::Mutex<()>,
    /// CM only: versions and acknowledgements, mirrored in state.json (this
    /// daemon is its only writer while it runs: it holds malai.lock). A
    /// std `Mutex`: every holder reads or writes it (a commit also the
    /// file), and never awaits while holding it.
    ledger: Arc<Mutex<CmState>>,
    /// Writes state.json for acknowledgements and fetches (group commit).
    saver: Arc<saver::Saver>,
    /// Wakes the CM's pusher when there is something new to push.
    wake: Notify,
    /// Machines that fetched since the pusher last looked (at most one
    /// entry per machine alias). A std `Mutex`: held to insert or take,
    /// never across an `.await`.
    returned: Mutex<std::collections::BTreeSet<String>>,
    returned_wake: Notify,
    /// When the CM last answered with or pushed a config (`freshness`). A
    /// std `Mutex`: held to read or set, never across an `.await`.
    heard: Mutex<std::time::Instant>,
    heard_wake: Notify,
    /// Wakes the daemon's main loop to re-announce its status.
    changed: Arc<Notify>,
    /// Machine: the CM key a handover moved it to (`take_handover`).
    handed_over: Mutex<Option<Id52>>,
    /// What happened, for whoever listens (D-Bus signals).
    events: broadcast::Sender<Event>,
}

impl Cluster {
    /// The handle of the loaded cluster `c`, on `endpoint` behind `gate`;
    /// its pool dials through `pool`'s relay.
    /// A cluster manager's config is put in force through `commit` (which
    /// may bump the version when cluster.toml changed while nobody ran).
    pub async fn start(
        c: ClusterDir,
        endpoint: Endpoint,
        pool: Pool,
        gate: Gate,
        changed: Arc<Notify>,
    ) -> anyhow::Result<Arc<Cluster>> {
        let (ledger, version) = match c.role {
            Role::ClusterManager => (CmState::load(&c.state_path())?, 0),
            Role::Machine | Role::Waiting => (
                CmState::default(),
                c.config
                    .as_ref()
                    .and_then(|c| c.received_version)
                    .unwrap_or(0),
            ),
        };
        let in_force = match c.role {
            Role::ClusterManager => InForce::default(),
            Role::Machine | Role::Waiting => {
                let mut config = c.config.clone();
                if let Some(config) = &mut config {
                    revoked::keep(&c.dir, config)?;
                }
                InForce {
                    config: config.map(Arc::new),
                    version,
                    expired: None,
                }
            }
        };
        gate.set_config(in_force.config.as_deref());
        let cluster = Arc::new(Cluster {
            alias: c.alias.clone(),
            dir: c.dir.clone(),
            cm_id52: c.cm_id52,
            endpoint,
            pool,
            gate,
            in_force: watch::Sender::new(in_force),
            cm_addrs: RwLock::new(c.cm_addrs.clone()),
            role: RwLock::new(c.role),
            apply: tokio::sync::Mutex::new(()),
            ledger: Arc::new(Mutex::new(ledger)),
            saver: Arc::new(saver::Saver::new(c.state_path(), &c.alias, changed.clone())),
            wake: Notify::new(),
            returned: Mutex::default(),
            returned_wake: Notify::new(),
            heard: Mutex::new(std::time::Instant::now()),
            heard_wake: Notify::new(),
            changed,
            handed_over: Mutex::new(None),
            events: broadcast::channel(64).0,
            identity: c.identity,
        });
        if c.role == Role::ClusterManager {
            cluster.commit(Change::Disk).await?;
        }
        Ok(cluster)
    }

    pub fn alias(&self) -> &str {
        &self.alias
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// This device's id52 in the cluster.
    pub fn id52(&self) -> Id52 {
        self.identity.id52()
    }

    pub fn cm_id52(&self) -> Id52 {
        self.cm_id52
    }

    pub fn cm_addrs(&self) -> Vec<SocketAddr> {
        self.cm_addrs.read().expect("addrs lock").clone()
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    pub fn role(&self) -> Role {
        *self.role.read().expect("role lock")
    }

    /// The config in force and its version, now.
    pub fn in_force(&self) -> InForce {
        self.in_force.borrow().clone()
    }

    /// The config in force, now (`None`: a machine still waiting).
    pub fn config(&self) -> Option<Arc<ClusterConfig>> {
        self.in_force.borrow().config.clone()
    }

    /// The version of the config in force (0: none).
    pub fn version(&self) -> u64 {
        self.in_force.borrow().version
    }

    /// Follows the config in force.
    pub fn subscribe(&self) -> watch::Receiver<InForce> {
        self.in_force.subscribe()
    }

    /// Follows what happens to the cluster.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Waits until the pusher has something to do (CM).
    pub async fn wait_for_work(&self) {
        self.wake.notified().await;
    }

    /// Asks the pusher to try every pending machine now.
    pub fn wake_pusher(&self) {
        self.wake.notify_one();
    }

    /// Machine `alias` is back (it fetched): the pusher retries its push
    /// now, on a fresh connection, and nobody else's (a member that fetches
    /// again and again makes the CM redo its own push only).
    pub fn machine_returned(&self, alias: &str) {
        self.returned
            .lock()
            .expect("returned lock")
            .insert(alias.to_owned());
        self.returned_wake.notify_one();
    }

    /// Waits until a machine came back (CM); `take_returned` says which.
    pub async fn wait_for_returned(&self) {
        self.returned_wake.notified().await;
    }

    /// The machines that came back since the last call.
    pub fn take_returned(&self) -> std::collections::BTreeSet<String> {
        std::mem::take(&mut *self.returned.lock().expect("returned lock"))
    }

    /// CM only: the versions and acknowledgements, now.
    pub fn ledger(&self) -> CmState {
        self.with_ledger(CmState::clone)
    }

    /// CM only: `look` at the ledger under its lock, without a copy. The
    /// pusher and the STATUS= line read it at every acknowledgement, and
    /// a copy of N machines' entries each time made fan-out to N machines
    /// cost N² (12% of a CM's CPU pushing to 300). `look` must not block.
    pub fn with_ledger<T>(&self, look: impl FnOnce(&CmState) -> T) -> T {
        look(&self.ledger.lock().expect("ledger lock"))
    }

    /// Runs `change` (a commit, an accepted config, a handover: reads and
    /// durable writes) once the changes before it are done, with the
    /// runtime's worker left to the other tasks while it runs
    /// (`fsutil::blocking`).
    async fn applying<T>(&self, change: impl FnOnce() -> T) -> T {
        let _apply = self.apply.lock().await;
        crate::fsutil::blocking(change)
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn machine_path(&self) -> PathBuf {
        self.dir.join(home::MACHINE_FILE)
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join(home::STATE_FILE)
    }

    pub fn cluster_path(&self) -> PathBuf {
        self.dir.join(home::CLUSTER_FILE)
    }

    /// Puts `config` in force at `version`, for the gate and every reader.
    fn put_in_force(&self, config: Option<ClusterConfig>, version: u64, hash: String) {
        self.gate.set_config(config.as_ref());
        self.in_force.send_replace(InForce {
            config: config.map(Arc::new),
            version,
            expired: None,
        });
        let _ = self.events.send(Event::ConfigApplied { version, hash });
        self.changed.notify_one();
    }

    /// Machine: the config in force does not list this device (its CM
    /// removed it and sent a farewell).
    pub fn removed(&self) -> bool {
        self.role() == Role::Machine
            && self
                .config()
                .is_some_and(|c| c.machine_by_id52(&self.id52()).is_none())
    }

    /// CM: the protocol to write machine `alias` (`id`)'s config for.
    pub fn machine_protocol(&self, alias: &str, id: &Id52) -> u32 {
        let ledger = self.ledger.lock().expect("ledger lock");
        ledger
            .machines
            .get(alias)
            .filter(|m| m.id52 == id.to_string())
            .map_or(1, MachineSync::protocol)
    }

    /// CM: machine `alias` (`id`) fetched its config, saying it
    /// understands `protocol`; what that config left out is `withheld`.
    pub async fn record_fetch(&self, alias: &str, id: &Id52, protocol: u32, withheld: &[String]) {
        if let Some(generation) = self.note_fetch(alias, id, protocol, withheld) {
            self.written(generation).await;
        }
    }

    /// `record_fetch` in the ledger; the change's generation, if any.
    fn note_fetch(
        &self,
        alias: &str,
        id: &Id52,
        protocol: u32,
        withheld: &[String],
    ) -> Option<u64> {
        let mut ledger = self.ledger.lock().expect("ledger lock");
        let me = self.id52().to_string();
        let entry = ledger_entry(&mut ledger, alias, id);
        // It dialed this key: it knows it.
        if entry.protocol == Some(protocol)
            && entry.withheld == withheld
            && entry.cm.as_ref() == Some(&me)
        {
            return None;
        }
        entry.protocol = Some(protocol);
        entry.withheld = withheld.to_vec();
        entry.cm = Some(me);
        Some(self.saver.changed())
    }

    /// CM: records the outcome of a push to machine `alias` (`id`) in the
    /// ledger and state.json; true when the machine answered (whether what
    /// it holds is written for the protocol it understands is
    /// `MachineSync::holds`'s question, the pusher's next) or held the
    /// current version already. The daemon's STATUS= follows from the
    /// write (`saver`), even when this is cancelled while it waits.
    pub async fn record_push(
        &self,
        alias: &str,
        id: &Id52,
        result: Result<Pushed, String>,
    ) -> bool {
        let (ok, generation) = self.note_push(alias, id, result);
        self.written(generation).await;
        ok
    }

    /// `record_push` in the ledger: whether the machine holds the current
    /// version, and the change's generation.
    fn note_push(&self, alias: &str, id: &Id52, result: Result<Pushed, String>) -> (bool, u64) {
        let mut ledger = self.ledger.lock().expect("ledger lock");
        let current = ledger.version;
        let entry = ledger_entry(&mut ledger, alias, id);
        let now = unix_now();
        let ok = match &result {
            Ok(Pushed {
                version,
                reported,
                rendered,
                withheld,
            }) => {
                entry.protocol = Some(*reported);
                entry.acked_protocol = Some(*rendered);
                if !withheld.is_empty() && entry.withheld != *withheld {
                    tracing::warn!(
                        malai_cluster = %self.alias, malai_peer = %id,
                        "machine {alias} runs an older malai (protocol {reported}); its config leaves out: {}. Upgrade malai there for them to take effect",
                        withheld.join(", ")
                    );
                }
                entry.withheld.clone_from(withheld);
                entry.acked_version = *version;
                entry.cm = Some(self.id52().to_string());
                entry.last_contact = Some(now);
                entry.unreachable_since = None;
                entry.last_error = None;
                tracing::info!(malai_cluster = %self.alias, malai_peer = %id, malai_config_version = *version, "machine {alias} acknowledged config version {version}");
                let _ = self.events.send(Event::MachineAcknowledged {
                    machine: alias.to_owned(),
                    id52: id.to_string(),
                    version: *version,
                });
                true
            }
            // A stale push failing after the machine already acknowledged
            // (on a fresher connection) changes nothing.
            Err(_) if entry.holds(current) => true,
            Err(e) => {
                entry.unreachable_since.get_or_insert(now);
                entry.last_error = Some(e.clone());
                tracing::info!(malai_cluster = %self.alias, malai_peer = %id, "push to machine {alias} failed: {e}");
                false
            }
        };
        (ok, self.saver.changed())
    }

    /// CM: records the outcome of a farewell to the removed machine `alias`
    /// (`id`); true when it acknowledged one.
    pub async fn record_farewell(
        &self,
        alias: &str,
        id: &Id52,
        result: Result<u64, String>,
    ) -> bool {
        let Some((ok, generation)) = self.note_farewell(alias, id, result) else {
            return true;
        };
        self.written(generation).await;
        ok
    }

    /// Resolves once the ledger change `generation` is in state.json.
    async fn written(&self, generation: u64) {
        self.saver.save(&self.ledger);
        self.saver.durable(generation).await;
    }

    /// `record_farewell` in the ledger: whether it acknowledged one, and
    /// the change's generation; `None`: not a departed machine.
    fn note_farewell(
        &self,
        alias: &str,
        id: &Id52,
        result: Result<u64, String>,
    ) -> Option<(bool, u64)> {
        let mut ledger = self.ledger.lock().expect("ledger lock");
        let entry = ledger.departed.get_mut(&id.to_string())?;
        let ok = match result {
            Ok(version) => {
                entry.acked_version = version;
                entry.last_error = None;
                tracing::warn!(
                    malai_cluster = %self.alias, malai_peer = %id, malai_config_version = version,
                    "machine {alias} ({id}), removed from the cluster, acknowledged its farewell: it grants nothing now"
                );
                true
            }
            Err(e) => {
                tracing::info!(malai_cluster = %self.alias, malai_peer = %id, "farewell to removed machine {alias} failed: {e}");
                entry.last_error = Some(e);
                false
            }
        };
        Some((ok, self.saver.changed()))
    }

    /// The cluster as `malai status` shows it: the config in force, on a
    /// CM whether cluster.toml changed on disk since, the relay in use and
    /// every peer talked to with its path.
    pub fn status(&self) -> ClusterStatus {
        let mut status = self.config_status();
        status.expired = self.in_force().expired;
        let config = self.config();
        status.relay = Some(self.pool.relay_name());
        status.peers = Some(
            self.gate
                .links()
                .into_iter()
                .map(|l| crate::status::PeerStatus {
                    alias: l.id52.parse().ok().and_then(|id| {
                        config
                            .as_ref()?
                            .machine_by_id52(&id)
                            .map(|(alias, _)| alias.to_owned())
                    }),
                    id52: l.id52,
                    path: l.path.to_owned(),
                    rtt_ms: l.rtt_ms,
                    last_contact: l.last_contact,
                })
                .collect(),
        );
        status
    }

    fn config_status(&self) -> ClusterStatus {
        let role = self.role();
        let file = match role {
            Role::ClusterManager => self.cluster_path(),
            Role::Machine | Role::Waiting => self.machine_path(),
        };
        let dir = ClusterDir {
            alias: self.alias.clone(),
            dir: self.dir.clone(),
            identity: self.identity.clone(),
            role,
            config: self.config().map(|c| (*c).clone()),
            config_bytes: std::fs::read(file).unwrap_or_default(),
            cm_id52: self.cm_id52,
            cm_addrs: self.cm_addrs(),
            relay: self.config().and_then(|c| c.relay.clone()),
        };
        match role {
            Role::ClusterManager if dir.config.is_none() => {
                // Not expected: a CM starts with its cluster.toml.
                let dir = ClusterDir {
                    role: Role::Waiting,
                    ..dir
                };
                crate::status::cluster_status(&dir, None)
            }
            Role::ClusterManager => crate::status::cluster_status(&dir, Some(&self.ledger())),
            Role::Machine | Role::Waiting => crate::status::cluster_status(&dir, None),
        }
    }

    /// One phrase for the daemon's STATUS= line, e.g. `company: machine v3`.
    pub fn status_phrase(&self) -> String {
        match self.role() {
            Role::ClusterManager => {
                let me = self.id52();
                // The ledger keeps id52s as text.
                let machines: Vec<String> = self
                    .config()
                    .map(|c| {
                        c.machines
                            .values()
                            .filter(|m| m.id52 != me)
                            .map(|m| m.id52.to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                // One pass each way: this line is written at every change,
                // an acknowledgement included.
                let (version, synced) = self.with_ledger(|ledger| {
                    let holding: std::collections::HashSet<&str> = ledger
                        .machines
                        .values()
                        .filter(|m| m.holds(ledger.version))
                        .map(|m| m.id52.as_str())
                        .collect();
                    let synced = machines
                        .iter()
                        .filter(|id| holding.contains(id.as_str()))
                        .count();
                    (ledger.version, synced)
                });
                format!(
                    "{}: cluster-manager v{version}, {synced}/{} machines in sync",
                    self.alias,
                    machines.len()
                )
            }
            Role::Machine if self.removed() => format!(
                "{}: machine v{}, removed from the cluster",
                self.alias,
                self.version()
            ),
            Role::Machine => match self.in_force().expired {
                Some(_) => format!(
                    "{}: machine v{}, config expired (no word from the cluster manager)",
                    self.alias,
                    self.version()
                ),
                None => format!("{}: machine v{}", self.alias, self.version()),
            },
            Role::Waiting => format!("{}: waiting for config", self.alias),
        }
    }
}

/// A push the machine acknowledged: the version it holds, the protocol it
/// says it understands, and the protocol the text was written for, with
/// what that left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub version: u64,
    pub reported: u32,
    pub rendered: u32,
    pub withheld: Vec<String>,
}

/// The ledger's entry for machine `alias`, started afresh when its id52
/// changed.
fn ledger_entry<'a>(ledger: &'a mut CmState, alias: &str, id: &Id52) -> &'a mut MachineSync {
    let entry = ledger.machines.entry(alias.to_owned()).or_default();
    if entry.id52 != id.to_string() {
        *entry = MachineSync {
            id52: id.to_string(),
            ..Default::default()
        };
    }
    entry
}
