//! `malai daemon`: one process hosting every cluster identity of a
//! MALAI_HOME. Start-up validates everything (exit 78 listing every error),
//! takes the lock, starts one listener per identity, serves its objects on
//! D-Bus and then takes its bus name, and tells systemd it is ready; then it
//! serves until SIGTERM/SIGINT, rescanning on SIGHUP or a D-Bus Rescan.
//! The forward listeners of malai.toml (and the sockets systemd passed for
//! them) follow the same reconcile.

pub mod cluster;
pub mod lock;
pub mod sockets;

use std::collections::BTreeMap;
use std::time::Duration;

use std::sync::Arc;

use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, mpsc};

use crate::config::{Diagnostics, LocalConfig};
use crate::dbus::service::{Request, Service};
use crate::forward::client::Clusters;
use crate::forward::listeners::Listeners;
use crate::home::{self, ClusterDir, Home, Role};
use crate::status::{ClusterStatus, Status};
use cluster::RunningCluster;
use sockets::Inherited;

/// How long running commands may take to finish at shutdown.
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(10);

pub struct Daemon {
    signals: Signals,
    changed: Arc<Notify>,
    home: Home,
    local: LocalConfig,
    clusters: BTreeMap<String, RunningCluster>,
    /// The running clusters as the forward listeners look them up.
    view: Clusters,
    /// `[forward.NAME]` and `[http]` listeners.
    listeners: Listeners,
    /// The daemon on D-Bus, when a bus could be reached.
    dbus: Option<Service>,
    /// What D-Bus methods ask of the main loop.
    requests: mpsc::Receiver<Request>,
    _lock: lock::HomeLock,
}

impl Daemon {
    /// Validates, locks and starts every cluster; `sockets` are those
    /// systemd passed, claimed by name by the listeners that want them.
    pub async fn start(home: Home, mut sockets: Inherited) -> anyhow::Result<Daemon> {
        // First, so that a SIGHUP from `malai rescan` can never kill a
        // daemon that is still starting.
        let signals = Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        };
        let (local, dirs, diags) = home::load_all(&home, None);
        if !diags.is_empty() {
            return Err(anyhow::Error::new(diags)
                .context("invalid configuration; the daemon did not start"));
        }
        let local = local.expect("no diagnostics means malai.toml loaded");
        let lock = lock::acquire(&home)?;
        let changed = Arc::new(Notify::new());
        let mut clusters = BTreeMap::new();
        for dir in dirs {
            let alias = dir.alias.clone();
            let running = RunningCluster::start(dir, &local.network, changed.clone()).await?;
            clusters.insert(alias, running);
        }
        if !sockets.names().is_empty() {
            tracing::info!("systemd passed sockets named {:?}", sockets.names());
        }
        // Listeners that take inherited sockets by name claim them here
        // (`sockets.take_tcp(name)`); what is left is a mistake.
        let view = Clusters::default();
        publish(&view, &clusters);
        let mut listeners = Listeners::new(view.clone());
        listeners.reconcile(&local, Some(&mut sockets)).await;
        sockets.close_unclaimed();
        let (tx, requests) = mpsc::channel(8);
        let dbus = match crate::dbus::Bus::for_daemon() {
            None => None,
            Some(bus) => {
                let served = clusters.iter().map(|(a, c)| (a, &c.shared));
                match Service::start(&bus, home.root.display().to_string(), tx, served).await {
                    Ok(s) => {
                        tracing::info!("serving {} on {bus}", crate::dbus::BUS_NAME);
                        Some(s)
                    }
                    Err(e) => {
                        tracing::warn!("running without D-Bus: {e:#}");
                        None
                    }
                }
            }
        };
        Ok(Daemon {
            signals,
            changed,
            home,
            local,
            clusters,
            view,
            listeners,
            dbus,
            requests,
            _lock: lock,
        })
    }

    /// The daemon's view of its running clusters, as `malai status` shows it.
    pub async fn status(&self) -> Status {
        let mut clusters = Vec::new();
        for c in self.clusters.values() {
            clusters.push(cluster_status(&c.shared).await);
        }
        Status {
            source: "daemon".into(),
            home: self.home.root.display().to_string(),
            clusters,
        }
    }

    /// A one-line summary for systemd's STATUS=.
    pub async fn status_line(&self) -> String {
        if self.clusters.is_empty() {
            return "no clusters".into();
        }
        let mut parts = Vec::new();
        for c in self.clusters.values() {
            parts.push(c.shared.status_phrase().await);
        }
        parts.join("; ")
    }

    /// Serves until SIGTERM or SIGINT; SIGHUP rescans.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let line = self.status_line().await;
        notify(&[NotifyState::Ready, NotifyState::Status(&line)]);
        tracing::info!("malai daemon ready: {line}");
        // WATCHDOG=1 at half of WATCHDOG_USEC, from this loop, so that a
        // stuck loop gets the daemon restarted.
        let watchdog = sd_notify::watchdog_enabled().map(|t| t / 2);
        let mut ping = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
        loop {
            tokio::select! {
                _ = ping.tick(), if watchdog.is_some() => notify(&[NotifyState::Watchdog]),
                _ = self.changed.notified() => {
                    notify(&[NotifyState::Status(&self.status_line().await)]);
                }
                _ = self.signals.term.recv() => break,
                _ = self.signals.int.recv() => break,
                _ = self.signals.hup.recv() => {
                    self.reload().await;
                }
                Some(req) = self.requests.recv() => match req {
                    Request::Status(reply) => {
                        let _ = reply.send(self.status().await);
                    }
                    Request::Rescan(reply) => {
                        let problems = self.reload().await;
                        let _ = reply.send(problems.0.iter().map(ToString::to_string).collect());
                    }
                },
            }
        }
        notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
        self.listeners.stop();
        self.view.write().expect("clusters lock").clear();
        tracing::info!(
            "stopping: letting running commands finish (up to {} s)",
            SHUTDOWN_BOUND.as_secs()
        );
        let stops: Vec<_> = std::mem::take(&mut self.clusters)
            .into_values()
            .map(|c| tokio::spawn(c.stop(SHUTDOWN_BOUND)))
            .collect();
        for s in stops {
            let _ = s.await;
        }
        Ok(())
    }

    /// A rescan as systemd sees it (RELOADING=1, then READY=1), for SIGHUP
    /// and D-Bus alike; the D-Bus objects follow the clusters.
    async fn reload(&mut self) -> Diagnostics {
        let usec = sd_notify::NotifyState::monotonic_usec_now().ok();
        let mut states = vec![NotifyState::Reloading];
        states.extend(usec);
        notify(&states);
        let problems = self.rescan().await;
        if !problems.is_empty() {
            tracing::error!("rescan kept the last good config of invalid clusters:\n{problems}");
        }
        if let Some(dbus) = &mut self.dbus {
            let served = self.clusters.iter().map(|(a, c)| (a, &c.shared));
            if let Err(e) = dbus.sync(served).await {
                tracing::warn!("updating the cluster objects on D-Bus: {e:#}");
            }
        }
        notify(&[
            NotifyState::Ready,
            NotifyState::Status(&self.status_line().await),
        ]);
        problems
    }

    /// Reconciles the running clusters with the files: starts new ones,
    /// stops removed ones, reloads changed ones; an invalid cluster keeps its
    /// last good config. Returns what could not be applied.
    pub async fn rescan(&mut self) -> Diagnostics {
        let mut problems = Diagnostics::default();
        match self.home.local_config() {
            Ok(local) => self.local = local,
            Err(d) => problems.extend(d),
        }
        let aliases = self.home.cluster_aliases().unwrap_or_default();
        let removed: Vec<String> = self
            .clusters
            .keys()
            .filter(|a| !aliases.contains(a))
            .cloned()
            .collect();
        for alias in removed {
            if let Some(c) = self.clusters.remove(&alias) {
                tracing::info!(malai_cluster = %alias, "cluster {alias} removed; stopping it");
                c.stop(SHUTDOWN_BOUND).await;
            }
        }
        for alias in aliases {
            let dir = match self.home.load_cluster(&alias) {
                Ok(d) => d,
                Err(d) => {
                    problems.extend(d);
                    continue;
                }
            };
            if let Err(e) = self.apply(dir).await {
                problems.0.push(crate::config::Diagnostic::whole(
                    self.home.cluster_dir(&alias),
                    format!("{e:#}"),
                    "",
                ));
            }
        }
        publish(&self.view, &self.clusters);
        for p in self.listeners.reconcile(&self.local, None).await {
            problems.0.push(crate::config::Diagnostic::whole(
                self.home.local_config_path(),
                p,
                "free the address, or change listen in malai.toml",
            ));
        }
        problems
    }

    async fn apply(&mut self, dir: ClusterDir) -> anyhow::Result<()> {
        let alias = dir.alias.clone();
        let port = self.local.network.ports.get(&alias).copied().unwrap_or(0);
        if let Some(running) = self.clusters.get(&alias) {
            let s = &running.shared;
            let same_identity = s.identity.id52() == dir.identity.id52();
            let was_cm = s.role() == Role::ClusterManager;
            let is_cm = dir.role == Role::ClusterManager;
            if same_identity && was_cm == is_cm && running.port == port {
                if is_cm {
                    reload_cm(s, &dir).await?;
                }
                return Ok(());
            }
            let old = self.clusters.remove(&alias).expect("present");
            tracing::info!(malai_cluster = %alias, "cluster {alias} changed identity, role or port; restarting it");
            old.stop(SHUTDOWN_BOUND).await;
        }
        let running = RunningCluster::start(dir, &self.local.network, self.changed.clone()).await?;
        self.clusters.insert(alias, running);
        Ok(())
    }
}

/// Shows the forward listeners the running clusters.
fn publish(view: &Clusters, clusters: &BTreeMap<String, RunningCluster>) {
    *view.write().expect("clusters lock") = clusters
        .iter()
        .map(|(alias, c)| (alias.clone(), c.shared.clone()))
        .collect();
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// One running cluster as `malai status` shows it: the config in force, and
/// for a CM whether cluster.toml changed on disk since.
pub async fn cluster_status(s: &cluster::Shared) -> ClusterStatus {
    let role = s.role();
    let file = match role {
        Role::ClusterManager => s.dir.join(home::CLUSTER_FILE),
        Role::Machine | Role::Waiting => s.machine_path(),
    };
    let dir = ClusterDir {
        alias: s.alias.clone(),
        dir: s.dir.clone(),
        identity: s.identity.clone(),
        role,
        config: s.host.config().map(|c| (*c).clone()),
        config_bytes: std::fs::read(file).unwrap_or_default(),
        cm_id52: s.cm_id52,
        cm_addrs: s.cm_addrs.read().expect("addrs lock").clone(),
    };
    if role == Role::ClusterManager && dir.config.is_none() {
        // Not expected: a CM starts with its cluster.toml.
        return crate::status::cluster_status(
            &ClusterDir {
                role: Role::Waiting,
                ..dir
            },
            None,
        );
    }
    let state = match role {
        Role::ClusterManager => Some(s.cm_state.lock().await.clone()),
        Role::Machine | Role::Waiting => None,
    };
    crate::status::cluster_status(&dir, state.as_ref())
}

/// Puts a changed cluster.toml in force on a running CM: a new version when
/// the bytes changed, then a push to every machine.
async fn reload_cm(s: &cluster::Shared, dir: &ClusterDir) -> anyhow::Result<()> {
    let text = String::from_utf8_lossy(&dir.config_bytes).into_owned();
    let mut state = s.cm_state.lock().await;
    if state.reconcile(&dir.config_hash()) {
        state.save(&s.state_path())?;
        tracing::info!(malai_cluster = %s.alias, malai_config_version = state.version, "cluster.toml changed: config version {}", state.version);
    }
    *s.cluster_text.write().expect("text lock") = text;
    s.host.set_config(dir.config.clone(), state.version);
    let event = cluster::Event::ConfigApplied {
        version: state.version,
        hash: state.hash.clone(),
    };
    drop(state);
    s.announce(event);
    s.wake.notify_one();
    Ok(())
}

/// Tells systemd (when NOTIFY_SOCKET is set) how the daemon is doing.
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}
