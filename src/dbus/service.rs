//! What the daemon serves on the bus, from a `daemon::Handle`: the daemon
//! object (Status from the published clusters; Rescan through the handle,
//! so that a D-Bus Rescan and SIGHUP run the same code, with the same
//! RELOADING=1/READY=1 around it), and one object per running cluster,
//! kept in step with the clusters the daemon publishes. The cluster
//! objects read their `Cluster` directly.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::{Mutex, broadcast};
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::{Connection, interface};

use super::config;
use super::exec::{self, Call, Sessions};
use super::{ADMIN_GROUP, BUS_NAME, Bus, CONFIG_GROUP, Error, ROOT_PATH, cluster_path};
use crate::cluster::{ByAlias, Cluster, Event};
use crate::daemon::Handle;
use crate::exec::proto::{ClientMsg, WindowSize};
use crate::status::ClusterStatus;

/// The daemon on the bus: its connection, and the task that keeps the
/// cluster objects in step with the daemon's clusters (stopped on drop).
pub struct Service {
    _conn: Connection,
    follow: tokio::task::JoinHandle<()>,
}

/// The cluster objects served now. Behind a tokio `Mutex`: a Rescan call
/// and the follower both sync, each across awaits on the object server.
type Objects = Arc<Mutex<Served>>;

#[derive(Default)]
struct Served {
    /// The daemon's MALAI_HOME, canonical: what `ExecIn` compares.
    home: Arc<str>,
    clusters: ByAlias,
    /// Per served cluster: the task turning its events into signals.
    relays: BTreeMap<String, tokio::task::JoinHandle<()>>,
}

impl Service {
    /// Connects to `bus`, serves the daemon object and one object per
    /// cluster, and only then requests the bus name.
    pub async fn start(bus: &Bus, daemon: Handle) -> anyhow::Result<Service> {
        let conn = bus.connect().await?;
        let service = Service::serve(conn.clone(), daemon).await?;
        conn.request_name(BUS_NAME)
            .await
            .with_context(|| format!("requesting the name {BUS_NAME} on {bus}"))?;
        Ok(service)
    }

    /// Serves the daemon object and one object per cluster on `conn`: a
    /// connection to a bus (`start` then requests the name), or a
    /// peer-to-peer one, whose caller is the process at the other end of
    /// the socket as the kernel names it.
    pub async fn serve(conn: Connection, daemon: Handle) -> anyhow::Result<Service> {
        let home = daemon.home();
        let home = std::fs::canonicalize(home).unwrap_or_else(|_| home.to_path_buf());
        let objects = Objects::new(Mutex::new(Served {
            home: home.to_string_lossy().into(),
            ..Served::default()
        }));
        let mut clusters = daemon.clusters();
        sync(&conn, &objects, &clusters.borrow_and_update().clone()).await?;
        conn.object_server()
            .at(
                ROOT_PATH,
                DaemonObject {
                    daemon,
                    conn: conn.clone(),
                    objects: objects.clone(),
                },
            )
            .await?;
        let follower = conn.clone();
        let follow = tokio::spawn(async move {
            while clusters.changed().await.is_ok() {
                let want = clusters.borrow_and_update().clone();
                if let Err(e) = sync(&follower, &objects, &want).await {
                    tracing::warn!("updating the cluster objects on D-Bus: {e:#}");
                }
            }
        });
        Ok(Service {
            _conn: conn,
            follow,
        })
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.follow.abort();
    }
}

/// Serves exactly the objects of `want`: removes those of clusters gone or
/// restarted, adds those of new or restarted ones.
async fn sync(conn: &Connection, objects: &Objects, want: &ByAlias) -> anyhow::Result<()> {
    let mut served = objects.lock().await;
    let same = |a: &ByAlias, alias: &String, c: &Arc<Cluster>| {
        a.get(alias).is_some_and(|o| Arc::ptr_eq(o, c))
    };
    let server = conn.object_server();
    let gone: Vec<String> = served
        .clusters
        .iter()
        .filter(|(alias, c)| !same(want, alias, c))
        .map(|(alias, _)| alias.clone())
        .collect();
    for alias in gone {
        if let Some(relay) = served.relays.remove(&alias) {
            relay.abort();
        }
        server
            .remove::<ClusterObject, _>(cluster_path(&alias).as_str())
            .await?;
    }
    for (alias, cluster) in want {
        if !same(&served.clusters, alias, cluster) {
            let object = ClusterObject {
                cluster: cluster.clone(),
                home: served.home.clone(),
                sessions: Sessions::default(),
            };
            let path = cluster_path(alias);
            // Subscribed before the object is visible: no event is missed.
            let events = cluster.events();
            server.at(path.as_str(), object).await?;
            let iface = server.interface::<_, ClusterObject>(path.as_str()).await?;
            served
                .relays
                .insert(alias.clone(), tokio::spawn(relay(iface, events)));
        }
    }
    served.clusters = want.clone();
    Ok(())
}

/// `/sh/malai/Malai1`: the daemon as a whole.
struct DaemonObject {
    daemon: Handle,
    conn: Connection,
    objects: Objects,
}

#[interface(name = "sh.malai.Malai1.Daemon")]
impl DaemonObject {
    /// The daemon's view of its clusters: the JSON object of
    /// `malai status --json`, with "source": "daemon". Open to everyone.
    async fn status(&self) -> Result<String, Error> {
        serde_json::to_string(&self.daemon.status()).map_err(|e| Error::Failed(e.to_string()))
    }

    /// Re-reads malai.toml and every cluster directory and applies what
    /// changed, as SIGHUP does. Returns what could not be applied (an
    /// invalid cluster keeps its last good config); empty: all applied.
    /// The cluster objects are in step when it returns. Only root and
    /// members of the group malai may call it.
    async fn rescan(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<Vec<String>, Error> {
        let uid = authorize(conn, &hdr, "Rescan", ADMIN_GROUP).await?;
        tracing::info!("D-Bus Rescan by uid {uid}");
        let problems = self
            .daemon
            .rescan()
            .await
            .map_err(|e| Error::Failed(e.to_string()))?;
        let want = self.daemon.clusters().borrow().clone();
        sync(&self.conn, &self.objects, &want)
            .await
            .map_err(|e| Error::Failed(format!("updating the cluster objects: {e:#}")))?;
        Ok(problems)
    }

    /// The MALAI_HOME this daemon serves.
    #[zbus(property(emits_changed_signal = "const"))]
    fn home(&self) -> String {
        self.daemon.home().display().to_string()
    }
}

/// `/sh/malai/Malai1/cluster/<alias>`: one cluster identity of the daemon.
struct ClusterObject {
    cluster: Arc<Cluster>,
    /// The daemon's MALAI_HOME, canonical.
    home: Arc<str>,
    sessions: Sessions,
}

impl ClusterObject {
    fn view(&self) -> ClusterStatus {
        self.cluster.status()
    }
}

#[interface(name = "sh.malai.Malai1.Cluster")]
impl ClusterObject {
    /// The cluster's name on this device.
    #[zbus(property(emits_changed_signal = "const"))]
    fn alias(&self) -> String {
        self.cluster.alias().to_owned()
    }

    /// "cluster-manager", "machine" or "waiting".
    #[zbus(property(emits_changed_signal = "false"))]
    fn role(&self) -> String {
        self.cluster.role().as_str().to_owned()
    }

    /// This device's identity in the cluster.
    #[zbus(property(emits_changed_signal = "const"))]
    fn id52(&self) -> String {
        self.cluster.id52().to_string()
    }

    /// The config version in force (0: none yet).
    #[zbus(property)]
    async fn config_version(&self) -> u64 {
        self.view().config_version.unwrap_or(0)
    }

    /// blake3 (hex) of the config in force ("" when none yet).
    #[zbus(property)]
    async fn config_hash(&self) -> String {
        self.view().config_hash.unwrap_or_default()
    }

    /// On the cluster manager, each machine: (name, id52, acknowledged
    /// version, "in-sync" | "pending" | "unreachable", last contact and
    /// unreachable since, in seconds since the epoch, 0 for never).
    /// Empty on a machine.
    #[zbus(property)]
    async fn machines(&self) -> Vec<(String, String, u64, String, u64, u64)> {
        self.view()
            .machines
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                (
                    m.alias,
                    m.id52,
                    m.acked_version,
                    m.sync,
                    m.last_contact.unwrap_or(0),
                    m.unreachable_since.unwrap_or(0),
                )
            })
            .collect()
    }

    /// A config version was put in force on this device.
    #[zbus(signal)]
    async fn config_applied(
        emitter: &SignalEmitter<'_>,
        version: u64,
        hash: &str,
    ) -> zbus::Result<()>;

    /// A machine acknowledged a config version (on the cluster manager).
    #[zbus(signal)]
    async fn machine_acknowledged(
        emitter: &SignalEmitter<'_>,
        machine: &str,
        id52: &str,
        version: u64,
    ) -> zbus::Result<()>;

    /// Runs `argv` on `machine` of this cluster as this device, with the
    /// caller's `stdin` (a pipe or a file), `stdout` and `stderr`; returns
    /// the command's exit code (128+N for signal N). `env` passes TERM,
    /// LANG, COLORTERM and LC_* only; `rows`/`cols` other than 0 ask for a
    /// PTY (an interactive shell: empty `argv`). `token` names this exec in
    /// Signal and Resize calls from the same caller. Only root and members
    /// of the group malai may call it. Errors: AccessDenied, Denied (the
    /// cluster's rules), NoSuchMachine, Unreachable, Failed.
    #[allow(clippy::too_many_arguments)]
    async fn exec(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        machine: String,
        argv: Vec<String>,
        env: HashMap<String, String>,
        rows: u16,
        cols: u16,
        stdin: zbus::OwnedFd,
        stdout: zbus::OwnedFd,
        stderr: zbus::OwnedFd,
        token: String,
    ) -> Result<u8, Error> {
        // Close-on-exec before anything else: the bus hands descriptors over
        // without it, and a command this daemon starts meanwhile for another
        // peer or user must not inherit this caller's stdio.
        let fds = [cloexec(stdin)?, cloexec(stdout)?, cloexec(stderr)?];
        let uid = authorize(conn, &hdr, "Exec", ADMIN_GROUP).await?;
        let caller = hdr
            .sender()
            .ok_or_else(|| Error::AccessDenied("the call has no sender".into()))?
            .to_owned();
        let call = Call {
            caller,
            uid,
            machine,
            argv,
            env,
            pty: (rows > 0 && cols > 0).then_some(WindowSize { rows, cols }),
            fds,
            token,
        };
        exec::run(&self.cluster, &self.sessions, conn, call).await
    }

    /// Exec, for a caller whose MALAI_HOME is `home` (canonical; empty:
    /// any will do): a daemon serving another answers OtherHome with its
    /// own before it touches a descriptor or asks who calls, so that a
    /// command never runs with another home's keys. One call where Home
    /// then Exec took two. Same arguments, rights and errors as Exec.
    #[allow(clippy::too_many_arguments)]
    async fn exec_in(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        home: String,
        machine: String,
        argv: Vec<String>,
        env: HashMap<String, String>,
        rows: u16,
        cols: u16,
        stdin: zbus::OwnedFd,
        stdout: zbus::OwnedFd,
        stderr: zbus::OwnedFd,
        token: String,
    ) -> Result<u8, Error> {
        if !home.is_empty() && home != *self.home {
            return Err(Error::OtherHome(self.home.to_string()));
        }
        self.exec(
            hdr, conn, machine, argv, env, rows, cols, stdin, stdout, stderr, token,
        )
        .await
    }

    /// The machines a fan-out target names (`web01,web02.company`,
    /// `@all.company`, `@GROUP.company`) for running `argv` as this
    /// device, from the config in force (`Selection::machines`). Root and
    /// group malai only, like Exec.
    async fn select(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        target: String,
        argv: Vec<String>,
    ) -> Result<Vec<String>, Error> {
        authorize(conn, &hdr, "Select", ADMIN_GROUP).await?;
        let selection = match crate::target::Selection::parse(&target) {
            Some(Ok(s)) if s.cluster == self.cluster.alias() => s,
            Some(Ok(s)) => {
                return Err(Error::Invalid(format!(
                    "{target}: this object is cluster {:?}, not {:?}",
                    self.cluster.alias(),
                    s.cluster
                )));
            }
            Some(Err(e)) => return Err(Error::Invalid(e)),
            None => {
                return Err(Error::Invalid(format!(
                    "{target:?} is one machine, not a fan-out target"
                )));
            }
        };
        let config = self.cluster.config().ok_or_else(|| {
            Error::Failed(format!(
                "cluster {:?} has no config yet",
                self.cluster.alias()
            ))
        })?;
        selection
            .machines(&config, &self.cluster.id52(), &argv)
            .map_err(Error::Failed)
    }

    /// cluster.toml as the cluster manager has it: (text, blake3 hash in
    /// hex, version). On the CM itself, read here; on a machine, asked of
    /// the CM as this device (which must be a config editor). Root and
    /// group malai-admin only.
    async fn config_download(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(String, String, u64), Error> {
        let uid = authorize(conn, &hdr, "ConfigDownload", CONFIG_GROUP).await?;
        let file = config::download(&self.cluster, uid).await?;
        Ok((file.text, file.hash, file.version))
    }

    /// Replaces cluster.toml with `text` if its hash is still `base_hash`
    /// (or `force`) and it validates; returns the new (version, hash).
    /// Errors: Stale, Invalid, Denied, Failed. Root and group malai-admin
    /// only.
    async fn config_upload(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        text: String,
        base_hash: String,
        force: bool,
    ) -> Result<(u64, String), Error> {
        let uid = authorize(conn, &hdr, "ConfigUpload", CONFIG_GROUP).await?;
        let done = config::upload(&self.cluster, uid, text, base_hash, force).await?;
        Ok((done.version, done.hash))
    }

    /// Delivers signal `signal` (HUP, INT, QUIT or TERM) to the command of
    /// the caller's exec `token`.
    async fn signal(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        token: String,
        signal: i32,
    ) -> Result<(), Error> {
        self.control(&hdr, &token, ClientMsg::Signal { signal })
    }

    /// The caller's terminal changed size: resizes the PTY of exec `token`.
    async fn resize(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        token: String,
        rows: u16,
        cols: u16,
    ) -> Result<(), Error> {
        self.control(&hdr, &token, ClientMsg::Resize(WindowSize { rows, cols }))
    }
}

impl ClusterObject {
    /// Sends `msg` to an exec of the caller's own (a token is only
    /// honoured from the connection that started the exec).
    fn control(&self, hdr: &Header<'_>, token: &str, msg: ClientMsg) -> Result<(), Error> {
        let caller = hdr
            .sender()
            .ok_or_else(|| Error::AccessDenied("the call has no sender".into()))?;
        if self.sessions.send(caller.as_str(), token, msg) {
            Ok(())
        } else {
            Err(Error::Failed(format!("no running exec {token:?} of yours")))
        }
    }
}

/// Turns a cluster's events into its object's signals and property
/// changes, until the object goes.
async fn relay(
    iface: zbus::object_server::InterfaceRef<ClusterObject>,
    mut events: broadcast::Receiver<Event>,
) {
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let emitter = iface.signal_emitter();
        let object = iface.get().await;
        let sent = match event {
            Event::ConfigApplied { version, hash } => {
                let _ = object.config_version_changed(emitter).await;
                let _ = object.config_hash_changed(emitter).await;
                ClusterObject::config_applied(emitter, version, &hash).await
            }
            Event::MachineAcknowledged {
                machine,
                id52,
                version,
            } => {
                let _ = object.machines_changed(emitter).await;
                ClusterObject::machine_acknowledged(emitter, &machine, &id52, version).await
            }
        };
        if let Err(e) = sent {
            tracing::debug!("cannot emit a D-Bus signal: {e}");
        }
    }
}

/// The caller's uid, if it may call `method` (a method that acts or
/// changes something): root, the daemon's own user (a user's daemon on the
/// session bus serves that user, who can read its keys anyway) and members
/// of `group` (malai, or malai-admin for the config). The bus policy says
/// the same for the system bus; this is the daemon's own check.
async fn authorize(
    conn: &Connection,
    hdr: &Header<'_>,
    method: &str,
    group: &str,
) -> Result<u32, Error> {
    let uid = caller_uid(conn, hdr).await?;
    if uid == nix::unistd::geteuid().as_raw() || may_change(uid, group) {
        return Ok(uid);
    }
    tracing::warn!(
        "D-Bus {method} refused to uid {uid}: not root, not this daemon's user, not in group {group}"
    );
    Err(Error::AccessDenied(format!(
        "uid {uid} may not call {method}: only root, the daemon's own user and members of the group {group:?} may"
    )))
}

/// A descriptor received on the bus, marked close-on-exec.
fn cloexec(fd: zbus::OwnedFd) -> Result<std::os::fd::OwnedFd, Error> {
    let fd: std::os::fd::OwnedFd = fd.into();
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC).map_err(|e| {
        Error::Failed(format!(
            "cannot mark a received descriptor close-on-exec: {e}"
        ))
    })?;
    Ok(fd)
}

/// The uid of the process that sent the call, as the bus knows it; on a
/// peer-to-peer connection, the uid of the socket's peer (`SO_PEERCRED`).
async fn caller_uid(conn: &Connection, hdr: &Header<'_>) -> Result<u32, Error> {
    if !conn.is_bus() {
        let creds = conn
            .peer_creds()
            .await
            .map_err(|e| Error::AccessDenied(format!("cannot tell who is calling: {e}")))?;
        return creds
            .unix_user_id()
            .ok_or_else(|| Error::AccessDenied("the peer of this socket has no uid".into()));
    }
    let sender = hdr
        .sender()
        .ok_or_else(|| Error::AccessDenied("the call has no sender".into()))?;
    let dbus = zbus::fdo::DBusProxy::new(conn).await?;
    dbus.get_connection_unix_user(sender.clone().into())
        .await
        .map_err(|e| Error::AccessDenied(format!("cannot tell who is calling: {e}")))
}

/// Root, or a member of `group` (primary or supplementary).
pub fn may_change(uid: u32, group: &str) -> bool {
    crate::local_users::in_group(uid, group)
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_may_change() {
        assert!(super::may_change(0, super::ADMIN_GROUP));
    }

    #[test]
    fn an_unknown_uid_may_not() {
        assert!(!super::may_change(4_000_000_000, super::ADMIN_GROUP));
    }
}
