//! One cluster identity running in the daemon: its endpoint and router (one
//! handler per ALPN: exec, config, forward), the exec host (whose config
//! the forward host decides with too), and its role's config-sync task (the
//! CM's pusher, or a machine's first fetch).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use iroh::Endpoint;
use iroh::protocol::Router;
use tokio::sync::{Mutex, Notify, broadcast};
use tokio::task::JoinHandle;

use crate::config::NetworkSettings;
use crate::exec::server::{ExecHandler, Host};
use crate::forward::host::ForwardHandler;
use crate::home::{ClusterDir, Role};
use crate::identity::{Id52, Identity};
use crate::p2p::gate::Gate;
use crate::p2p::{self, CONFIG_ALPN, EXEC_ALPN, FORWARD_ALPN, Pool};
use crate::state::CmState;
use crate::sync;

/// The state one cluster's tasks share.
#[derive(Debug)]
pub struct Shared {
    pub alias: String,
    pub dir: PathBuf,
    pub identity: Identity,
    pub cm_id52: Id52,
    pub cm_addrs: RwLock<Vec<SocketAddr>>,
    pub role: RwLock<Role>,
    pub host: Arc<Host>,
    /// Serializes config applies (machine) and state.json writes (CM).
    pub apply: Mutex<()>,
    /// CM only: versions and acknowledgements, mirrored in state.json.
    pub cm_state: Mutex<CmState>,
    /// CM only: the exact bytes of the cluster.toml in force.
    pub cluster_text: RwLock<String>,
    /// Wakes the CM's pusher when the config changed.
    pub wake: Notify,
    /// Wakes the daemon's main loop to re-announce its status (a config was
    /// applied, a machine acknowledged).
    pub changed: Arc<Notify>,
    pub endpoint: Endpoint,
    pub pool: Pool,
    /// What happened to this cluster, for whoever listens (D-Bus signals).
    pub events: broadcast::Sender<Event>,
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

impl Shared {
    /// One phrase for the daemon's STATUS= line, e.g. `company: machine v3`.
    pub async fn status_phrase(&self) -> String {
        match self.role() {
            Role::ClusterManager => {
                let state = self.cm_state.lock().await;
                let me = self.identity.id52();
                let machines: Vec<_> = self
                    .host
                    .config()
                    .map(|c| {
                        c.machines
                            .values()
                            .filter(|m| m.id52 != me)
                            .map(|m| m.id52.to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                let synced = machines
                    .iter()
                    .filter(|id| {
                        state
                            .machines
                            .values()
                            .any(|m| &m.id52 == *id && m.acked_version >= state.version)
                    })
                    .count();
                format!(
                    "{}: cluster-manager v{}, {synced}/{} machines in sync",
                    self.alias,
                    state.version,
                    machines.len()
                )
            }
            Role::Machine => {
                let v = self
                    .host
                    .config()
                    .and_then(|c| c.received_version)
                    .unwrap_or(0);
                format!("{}: machine v{v}", self.alias)
            }
            Role::Waiting => format!("{}: waiting for config", self.alias),
        }
    }

    /// Announces `event` (nobody listening is fine).
    pub fn announce(&self, event: Event) {
        let _ = self.events.send(event);
    }

    pub fn role(&self) -> Role {
        *self.role.read().expect("role lock")
    }

    pub fn machine_path(&self) -> PathBuf {
        self.dir.join(crate::home::MACHINE_FILE)
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join(crate::home::STATE_FILE)
    }
}

pub struct RunningCluster {
    pub shared: Arc<Shared>,
    pub port: u16,
    router: Router,
    task: JoinHandle<()>,
}

impl RunningCluster {
    pub async fn start(
        c: ClusterDir,
        net: &NetworkSettings,
        changed: Arc<Notify>,
    ) -> anyhow::Result<RunningCluster> {
        let port = net.ports.get(&c.alias).copied().unwrap_or(0);
        let alpns = vec![
            EXEC_ALPN.to_vec(),
            CONFIG_ALPN.to_vec(),
            FORWARD_ALPN.to_vec(),
        ];
        let gate = Gate::new(&c.alias, c.cm_id52, c.config.as_ref());
        let endpoint = p2p::bind(&c.identity, net, port, alpns, Some(&gate)).await?;
        let cm_state = if c.role == Role::ClusterManager {
            let path = c.state_path();
            let mut state = CmState::load(&path)?;
            if state.reconcile(&c.config_hash()) {
                state.save(&path)?;
            }
            state
        } else {
            CmState::default()
        };
        let version = match c.role {
            Role::ClusterManager => cm_state.version,
            Role::Machine | Role::Waiting => c
                .config
                .as_ref()
                .and_then(|c| c.received_version)
                .unwrap_or(0),
        };
        let host = Host::new(&c.alias, c.identity.id52(), gate, c.config.clone(), version);
        let shared = Arc::new(Shared {
            alias: c.alias.clone(),
            dir: c.dir.clone(),
            cm_id52: c.cm_id52,
            cm_addrs: RwLock::new(c.cm_addrs.clone()),
            role: RwLock::new(c.role),
            host: host.clone(),
            apply: Mutex::new(()),
            cm_state: Mutex::new(cm_state),
            cluster_text: RwLock::new(String::from_utf8_lossy(&c.config_bytes).into_owned()),
            wake: Notify::new(),
            changed,
            endpoint: endpoint.clone(),
            pool: Pool::default(),
            events: broadcast::channel(64).0,
            identity: c.identity,
        });
        let router = Router::builder(endpoint)
            .accept(EXEC_ALPN, ExecHandler { host: host.clone() })
            .accept(FORWARD_ALPN, ForwardHandler { host })
            .accept(
                CONFIG_ALPN,
                sync::ConfigHandler {
                    shared: shared.clone(),
                },
            )
            .spawn();
        let task = match c.role {
            Role::ClusterManager => tokio::spawn(sync::cm::pusher(shared.clone())),
            Role::Machine | Role::Waiting => {
                tokio::spawn(sync::machine::fetch_on_start(shared.clone()))
            }
        };
        tracing::info!(
            malai_cluster = %c.alias,
            "cluster {} up as {} on {:?}, id52 {}",
            c.alias,
            c.role.as_str(),
            shared.endpoint.bound_sockets(),
            shared.identity.id52()
        );
        Ok(RunningCluster {
            shared,
            port,
            router,
            task,
        })
    }

    /// Stops accepting, lets running commands finish within `bound`, closes
    /// the endpoint.
    pub async fn stop(self, bound: std::time::Duration) {
        self.task.abort();
        self.shared.host.drain(bound).await;
        let _ = self.router.shutdown().await;
    }
}
