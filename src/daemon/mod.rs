//! `malai daemon` as a handle: one process hosting every cluster identity
//! of a MALAI_HOME. `start` validates everything (exit 78 listing every
//! error), takes the lock and starts one listener per identity and the
//! forward listeners of malai.toml (on the sockets systemd passed); `run`
//! tells systemd it is ready and serves until its `shutdown` future
//! resolves, rescanning on each `reload` message or `Handle::rescan`. It
//! publishes its running clusters on a `watch` (the forward listeners and
//! D-Bus follow it) and never names D-Bus: `cli::daemon` composes the two.

pub mod cluster;
pub mod lock;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::cluster::ByAlias;
use crate::config::{Diagnostics, LocalConfig};
use crate::forward::listeners::Listeners;
use crate::home::{self, ClusterDir, Home, Role};
use crate::sockets::Inherited;
use crate::status::Status;
use cluster::RunningCluster;

pub use crate::exec::server::SHUTDOWN_BOUND;

/// A request to rescan, with where to send what could not be applied.
type RescanRequest = oneshot::Sender<Vec<String>>;

pub struct Daemon {
    changed: Arc<Notify>,
    home: Home,
    local: LocalConfig,
    clusters: BTreeMap<String, RunningCluster>,
    /// The running clusters, for whoever follows them (forward listeners,
    /// D-Bus).
    published: watch::Sender<ByAlias>,
    /// `[forward.NAME]` and `[http]` listeners.
    listeners: Listeners,
    /// Rescans asked through a `Handle`.
    rescans: mpsc::Receiver<RescanRequest>,
    handle: Handle,
    _lock: lock::HomeLock,
}

/// What others may ask of, and see of, a running daemon.
#[derive(Clone)]
pub struct Handle {
    home: PathBuf,
    rescans: mpsc::Sender<RescanRequest>,
    clusters: watch::Receiver<ByAlias>,
}

/// The daemon stopped before it answered.
#[derive(Debug, thiserror::Error)]
#[error("the daemon is stopping")]
pub struct Stopped;

impl Handle {
    pub fn home(&self) -> &std::path::Path {
        &self.home
    }

    /// Follows the running clusters.
    pub fn clusters(&self) -> watch::Receiver<ByAlias> {
        self.clusters.clone()
    }

    /// The daemon's view of its running clusters, as `malai status` shows it.
    pub fn status(&self) -> Status {
        Status {
            source: "daemon".into(),
            home: self.home.display().to_string(),
            clusters: self
                .clusters
                .borrow()
                .values()
                .map(|c| c.status())
                .collect(),
        }
    }

    /// Rescans as SIGHUP does; what could not be applied.
    pub async fn rescan(&self) -> Result<Vec<String>, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.rescans.send(tx).await.map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }
}

impl Daemon {
    /// Validates, locks and starts every cluster; `sockets` are those
    /// systemd passed, claimed by name by the listeners that want them.
    pub async fn start(home: Home, mut sockets: Inherited) -> anyhow::Result<Daemon> {
        let (local, dirs, diags) = home::load_all(&home, None);
        if !diags.is_empty() {
            return Err(anyhow::Error::new(diags)
                .context("invalid configuration; the daemon did not start"));
        }
        let local = local.expect("no diagnostics means malai.toml loaded");
        warn_about(&local);
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
        let (published, view) = watch::channel(by_alias(&clusters));
        // Listeners that take inherited sockets by name claim them here
        // (`sockets.take_tcp(name)`); what is left is a mistake.
        let mut listeners = Listeners::new(view.clone());
        listeners.reconcile(&local, Some(&mut sockets)).await;
        sockets.close_unclaimed();
        let (tx, rescans) = mpsc::channel(8);
        let handle = Handle {
            home: home.root.clone(),
            rescans: tx,
            clusters: view,
        };
        Ok(Daemon {
            changed,
            home,
            local,
            clusters,
            published,
            listeners,
            rescans,
            handle,
            _lock: lock,
        })
    }

    /// What others may ask of, and see of, this daemon.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// A one-line summary for systemd's STATUS=.
    pub fn status_line(&self) -> String {
        if self.clusters.is_empty() {
            return "no clusters".into();
        }
        let parts: Vec<String> = self
            .clusters
            .values()
            .map(|c| c.cluster.status_phrase())
            .collect();
        parts.join("; ")
    }

    /// Tells systemd it is ready, then serves until `shutdown` resolves;
    /// each message on `reload` (SIGHUP) rescans.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
        mut reload: mpsc::Receiver<()>,
    ) -> anyhow::Result<()> {
        let line = self.status_line();
        notify(&[NotifyState::Ready, NotifyState::Status(&line)]);
        tracing::info!("malai daemon ready: {line}");
        // WATCHDOG=1 at half of WATCHDOG_USEC, from this loop, so that a
        // stuck loop gets the daemon restarted.
        let watchdog = sd_notify::watchdog_enabled().map(|t| t / 2);
        let mut ping = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = ping.tick(), if watchdog.is_some() => notify(&[NotifyState::Watchdog]),
                _ = self.changed.notified() => {
                    self.restart_moved().await;
                    notify(&[NotifyState::Status(&self.status_line())]);
                }
                () = &mut shutdown => break,
                Some(()) = reload.recv() => {
                    self.reload().await;
                }
                Some(reply) = self.rescans.recv() => {
                    let problems = self.reload().await;
                    let _ = reply.send(problems.0.iter().map(ToString::to_string).collect());
                }
            }
        }
        notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
        self.listeners.stop();
        self.published.send_replace(ByAlias::new());
        tracing::info!(
            "stopping: letting running commands finish (up to {} s)",
            SHUTDOWN_BOUND.as_secs()
        );
        let stops: Vec<_> = std::mem::take(&mut self.clusters)
            .into_values()
            .map(|c| tokio::spawn(c.stop()))
            .collect();
        for s in stops {
            let _ = s.await;
        }
        Ok(())
    }

    /// A rescan as systemd sees it (RELOADING=1, then READY=1), for SIGHUP
    /// and a `Handle` alike; whoever follows the clusters sees the result.
    async fn reload(&mut self) -> Diagnostics {
        let usec = sd_notify::NotifyState::monotonic_usec_now().ok();
        let mut states = vec![NotifyState::Reloading];
        states.extend(usec);
        notify(&states);
        let problems = self.rescan().await;
        if !problems.is_empty() {
            tracing::error!("rescan kept the last good config of invalid clusters:\n{problems}");
        }
        notify(&[NotifyState::Ready, NotifyState::Status(&self.status_line())]);
        problems
    }

    /// Reconciles the running clusters with the files: starts new ones,
    /// stops removed ones, reloads changed ones; an invalid cluster keeps its
    /// last good config. Returns what could not be applied.
    pub async fn rescan(&mut self) -> Diagnostics {
        let mut problems = Diagnostics::default();
        match self.home.local_config() {
            Ok(local) => {
                warn_about(&local);
                self.local = local;
            }
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
                c.stop().await;
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
            fault_point("rescan-loaded").await;
            if let Err(e) = self.apply(dir).await {
                problems.0.push(crate::config::Diagnostic::whole(
                    self.home.cluster_dir(&alias),
                    format!("{e:#}"),
                    "",
                ));
            }
        }
        self.published.send_replace(by_alias(&self.clusters));
        for p in self.listeners.reconcile(&self.local, None).await {
            problems.0.push(crate::config::Diagnostic::whole(
                self.home.local_config_path(),
                p,
                "free the address, or change listen in malai.toml",
            ));
        }
        problems
    }

    /// A config put in force may name another relay (a push to a machine,
    /// an upload on the CM): a cluster whose relay changed is restarted on
    /// the new one, so its endpoint and its dials use it. (A config that
    /// stops naming a relay keeps the one the cluster started with until
    /// the next rescan.) So is a machine its CM handed over to a new key.
    async fn restart_moved(&mut self) {
        let moved: Vec<String> = self
            .clusters
            .iter()
            .filter(|(_, running)| {
                // A machine whose CM key moved dials the new one.
                if running.cluster.handed_over().is_some() {
                    return true;
                }
                let Some(named) = running.cluster.config().and_then(|c| c.relay.clone()) else {
                    return false;
                };
                crate::p2p::RelayChoice::resolve(&self.local.network, Some(&named)) != running.relay
            })
            .map(|(alias, _)| alias.clone())
            .collect();
        if moved.is_empty() {
            return;
        }
        for alias in moved {
            let dir = match self.home.load_cluster(&alias) {
                Ok(dir) => dir,
                Err(e) => {
                    tracing::error!(malai_cluster = %alias, "cannot reload cluster {alias} for its new relay: {e}");
                    continue;
                }
            };
            let alias = dir.alias.clone();
            if let Err(e) = self.apply(dir).await {
                tracing::error!(malai_cluster = %alias, "cannot restart cluster {alias} on its new relay: {e:#}");
            }
        }
        self.published.send_replace(by_alias(&self.clusters));
    }

    async fn apply(&mut self, dir: ClusterDir) -> anyhow::Result<()> {
        let alias = dir.alias.clone();
        let port = self.local.network.ports.get(&alias).copied().unwrap_or(0);
        if let Some(running) = self.clusters.get(&alias) {
            let c = &running.cluster;
            let same_identity = c.id52() == dir.identity.id52() && c.cm_id52() == dir.cm_id52;
            let was_cm = c.role() == Role::ClusterManager;
            let is_cm = dir.role == Role::ClusterManager;
            let relay = crate::p2p::RelayChoice::resolve(&self.local.network, dir.relay.as_ref());
            if same_identity && was_cm == is_cm && running.port == port && running.relay == relay {
                if is_cm {
                    // cluster.toml as it is now, not as `dir` read it.
                    c.commit(crate::cluster::Change::Disk).await?;
                }
                return Ok(());
            }
            let old = self.clusters.remove(&alias).expect("present");
            tracing::info!(malai_cluster = %alias, "cluster {alias} changed identity (its own or its cluster manager's), role, port or relay; restarting it");
            // Whoever follows the clusters (D-Bus objects, listeners) lets
            // go of the old one, so its endpoint frees a fixed port for the
            // new one (`cluster::bind_retrying` waits for that).
            self.published.send_replace(by_alias(&self.clusters));
            old.stop().await;
        }
        let running = RunningCluster::start(dir, &self.local.network, self.changed.clone()).await?;
        self.clusters.insert(alias, running);
        Ok(())
    }
}

/// Logs what is wrong in malai.toml but stops nothing.
fn warn_about(local: &crate::config::LocalConfig) {
    for w in &local.warnings {
        tracing::warn!("{w}");
    }
}

fn by_alias(clusters: &BTreeMap<String, RunningCluster>) -> ByAlias {
    clusters
        .iter()
        .map(|(alias, c)| (alias.clone(), c.cluster.clone()))
        .collect()
}

/// A pause for tests, compiled into debug builds only: when
/// `MALAI_TEST_FAULTS` names a directory holding a file `name`, the daemon
/// writes `name.reached` there and waits until `name` is removed (at most
/// 30 s). Release builds have no such point.
async fn fault_point(name: &str) {
    #[cfg(debug_assertions)]
    if let Some(dir) = std::env::var_os("MALAI_TEST_FAULTS") {
        let marker = std::path::Path::new(&dir).join(name);
        if marker.exists() {
            let _ = std::fs::write(marker.with_extension("reached"), b"");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while marker.exists() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await; // poll the test's release
            }
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// Tells systemd (when NOTIFY_SOCKET is set) how the daemon is doing.
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}
