//! Exec for a CLI on the bus: the CLI passes its stdin (a pipe it feeds),
//! stdout and stderr as descriptors, and the daemon runs the command on the
//! machine over its pooled connection (or here, for the device itself), so
//! output goes straight to the caller's descriptors, never through the bus.
//! The caller's Ctrl-C and window sizes arrive as calls naming the exec's
//! token; a caller that leaves the bus takes its command with it.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use futures_util::StreamExt;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use zbus::Connection;
use zbus::names::UniqueName;

use super::Error;
use crate::cluster::Cluster;
use crate::command::spawn::StdioMode;
use crate::exec::ExecError;
use crate::exec::client::{DrainThread, Io, LazyDrain, run_with};
use crate::exec::proto::{ClientMsg, WindowSize};
use crate::p2p::EXEC_ALPN;

/// The running execs of one cluster object, by (caller, token): where that
/// caller's signals and window sizes go.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<(String, String), mpsc::Sender<ClientMsg>>>);

impl Sessions {
    /// Delivers `msg` to the exec `token` of `caller`; false: none such.
    pub fn send(&self, caller: &str, token: &str, msg: ClientMsg) -> bool {
        let key = (caller.to_owned(), token.to_owned());
        let Some(tx) = self.0.lock().expect("sessions").get(&key).cloned() else {
            return false;
        };
        tx.try_send(msg).is_ok()
    }
}

/// What a caller asked to run.
pub struct Call {
    pub caller: UniqueName<'static>,
    pub uid: u32,
    pub machine: String,
    pub argv: Vec<String>,
    pub env: HashMap<String, String>,
    pub pty: Option<WindowSize>,
    pub fds: [OwnedFd; 3],
    pub token: String,
}

/// Machine `name` of `config`, or the error listing the machines.
fn machine_named<'c>(
    config: &'c crate::config::ClusterConfig,
    cluster: &str,
    name: &str,
) -> Result<&'c crate::config::Machine, Error> {
    config.machines.get(name).ok_or_else(|| {
        let known: Vec<&str> = config.machines.keys().map(String::as_str).collect();
        Error::NoSuchMachine(format!(
            "no machine {name:?} in cluster {cluster:?} (machines: {})",
            known.join(", ")
        ))
    })
}

/// Runs `call` on `cluster`; the command's exit code.
pub async fn run(
    cluster: &Cluster,
    sessions: &Sessions,
    bus: &Connection,
    call: Call,
) -> Result<u8, Error> {
    let what = format!("{}.{}", call.machine, cluster.alias());
    let in_force = cluster.in_force();
    let config = in_force
        .config
        .clone()
        .ok_or_else(|| Error::Failed(format!("cluster {:?} has no config yet", cluster.alias())))?;
    let machine = machine_named(&config, cluster.alias(), &call.machine)?;
    let (id, addrs) = (machine.id52, machine.addrs.clone());
    let me = cluster.id52();
    tracing::info!(
        malai_cluster = %cluster.alias(), malai_argv = ?call.argv,
        "uid {} runs {:?} on {what} through the daemon", call.uid, call.argv
    );

    let key = (call.caller.to_string(), call.token.clone());
    let (tx, controls) = mpsc::channel(8);
    {
        let mut map = sessions.0.lock().expect("sessions");
        if map.contains_key(&key) {
            return Err(Error::Failed(format!(
                "token {:?} is in use by another exec",
                call.token
            )));
        }
        map.insert(key.clone(), tx.clone());
    }
    let gone = caller_gone(bus, call.caller.clone());
    let env: Vec<(String, String)> = call.env.into_iter().collect();
    let result = if id == me {
        // The device itself: decide here (not with an expired config), run
        // with the caller's descriptors.
        if let Err(why) = in_force.for_peer(&me, &cluster.cm_id52()) {
            sessions.0.lock().expect("sessions").remove(&key);
            return Err(Error::Denied(format!("{what} denied the command: {why}")));
        }
        let caller = crate::exec::local::Caller {
            who: crate::audit::Who {
                cluster: cluster.alias(),
                peer: &me,
                config_version: in_force.version,
                uid: Some(call.uid),
                claimed: None,
                recording: None,
            },
            unprivileged_uid: (call.uid != 0 && call.uid != nix::unistd::geteuid().as_raw())
                .then_some(call.uid),
        };
        // Decided again with each config put in force, as for a peer.
        let (argv, cm) = (call.argv.clone(), cluster.cm_id52());
        let decide = |f: &crate::cluster::InForce| decide_here(f, &me, &cm, &argv);
        let run = crate::exec::local::run(
            &config,
            &caller,
            call.argv,
            &what,
            StdioMode::Fds(call.fds),
            env,
            controls,
            cluster.revoked(decide),
        );
        tokio::pin!(run);
        tokio::select! {
            r = &mut run => r,
            () = gone => {
                let _ = tx.send(ClientMsg::Signal { signal: 1 }).await;
                run.await
            }
        }
    } else {
        let [stdin, stdout, stderr] = call.fds;
        let (stdout, out) = LazyDrain::new(stdout);
        let (stderr, err) = LazyDrain::new(stderr);
        let io = Io {
            stdin: reader(stdin)?,
            stdout: Box::new(stdout),
            stderr: Box::new(stderr),
            env,
            pty: call.pty,
            controls,
            on_behalf: Some(crate::exec::proto::OnBehalf::uid(call.uid)),
            copy: None,
            ssh: Default::default(),
        };
        let conn = cluster
            .pool()
            .get(cluster.endpoint(), &id, &addrs, EXEC_ALPN)
            .await
            .map_err(|e| ExecError::Unreachable(format!("cannot reach {what}: {e:#}")));
        let result = match conn {
            Err(e) => Err(e),
            // Dropping the run when the caller leaves resets the stream:
            // the machine then kills the command's whole session.
            Ok(conn) => tokio::select! {
                r = run_with(&conn, call.argv, &what, io) => r,
                () = gone => Err(ExecError::Lost("the caller left the bus".into())),
            },
        };
        drained([out, err], matches!(result, Err(ExecError::Lost(_)))).await;
        result
    };
    sessions.0.lock().expect("sessions").remove(&key);
    Ok(result?)
}

/// Waits until the drains of a caller's stdout and stderr wrote all to
/// it, so that the output is there before the answer; not for a caller
/// that left (its descriptors may never drain).
async fn drained(threads: [DrainThread; 2], caller_left: bool) {
    if !caller_left {
        crate::exec::client::join_drains(threads).await;
    }
}

/// Whether the device `me` may still run `argv` (empty: a shell) on
/// itself under the config `f` of the cluster managed by `cm`.
fn decide_here(
    f: &crate::cluster::InForce,
    me: &crate::identity::Id52,
    cm: &crate::identity::Id52,
    argv: &[String],
) -> crate::acl::Decision {
    let request = if argv.is_empty() {
        crate::acl::Request::Shell
    } else {
        crate::acl::Request::Exec(argv)
    };
    match f.for_peer(me, cm) {
        Err(reason) => crate::acl::Decision::Deny(reason),
        Ok(config) => crate::acl::decide(config, me, me, request),
    }
}

/// An exec error as its named D-Bus error: the one place that says which.
impl From<ExecError> for Error {
    fn from(e: ExecError) -> Error {
        let message = e.to_string();
        match e {
            ExecError::Denied { .. } => Error::Denied(message),
            ExecError::Unreachable(_) => Error::Unreachable(message),
            ExecError::NotRun { .. }
            | ExecError::Lost(_)
            | ExecError::Revoked { .. }
            | ExecError::Local(_) => Error::Failed(message),
        }
    }
}

/// How long a command runs before its caller is watched. The watch is
/// three calls to the bus (`AddMatch`, `NameHasOwner`, and `RemoveMatch`
/// at its end) that would otherwise run beside every command's start, on
/// the same cores; most commands end sooner. A caller that left in the
/// meantime is found by the `NameHasOwner` check once the watch is set:
/// its command ends at most this much later than it would have.
const WATCH_CALLER_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// Resolves when `caller` has left the bus (noticed from
/// `WATCH_CALLER_AFTER` on).
async fn caller_gone(bus: &Connection, caller: UniqueName<'static>) {
    tokio::time::sleep(WATCH_CALLER_AFTER).await;
    let watch = async {
        let dbus = zbus::fdo::DBusProxy::new(bus).await.ok()?;
        let mut changes = dbus
            .receive_name_owner_changed_with_args(&[(0, caller.as_str())])
            .await
            .ok()?;
        // It may have left before the watch was set up.
        if !dbus
            .name_has_owner(caller.clone().into())
            .await
            .unwrap_or(false)
        {
            return Some(());
        }
        while let Some(change) = changes.next().await {
            if change.args().ok()?.new_owner().is_none() {
                return Some(());
            }
        }
        Some(())
    };
    if watch.await.is_none() {
        // Cannot watch: never report the caller gone.
        std::future::pending::<()>().await;
    }
}

/// The caller's stdin: a pipe it feeds (read without blocking a thread,
/// so that an exec ending mid-read leaves nothing behind) or a regular file.
fn reader(fd: OwnedFd) -> Result<Box<dyn AsyncRead + Unpin + Send>, Error> {
    let file = std::fs::File::from(fd);
    let kind = file
        .metadata()
        .map_err(|e| Error::Failed(format!("stdin: {e}")))?
        .file_type();
    if kind.is_file() {
        return Ok(Box::new(tokio::fs::File::from_std(file)));
    }
    let pipe = tokio::net::unix::pipe::Receiver::from_file(file).map_err(|e| {
        Error::Failed(format!(
            "stdin must be a pipe or a regular file (the malai CLI passes a pipe): {e}"
        ))
    })?;
    Ok(Box::new(pipe))
}
