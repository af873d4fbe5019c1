//! The host side of `malai/exec/1`: for each stream a peer opens, decide with
//! the ACL (the peer is the id52 iroh authenticated, never a field of the
//! request), log the decision, run the command and stream its output with
//! backpressure. A client that goes away takes the whole process group with
//! it. A config put in force that no longer allows a running command ends
//! it (`Cluster::revoked`). Stopping the router drains: running commands
//! get `SHUTDOWN_BOUND` to finish.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};
use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};

use super::launch::{self, Launch};
use super::proto::{ClientMsg, ExecRequest, FORWARDED_SIGNALS, HostMsg};
use crate::acl::{self, Decision, Request};
use crate::audit;
use crate::cluster::{Cluster, InForce, Revoked};
use crate::command::process::{Control, Process};
use crate::command::spawn;
use crate::identity::Id52;
use crate::p2p::frame::{self, Kind};
use crate::record::send::Recording;

/// The largest request: Linux takes at most 128 KiB per argument and 2 MiB
/// in all; a remote command line is far shorter.
const MAX_REQUEST: usize = 256 * 1024;
/// Commands one peer may run at once on this machine.
pub const MAX_COMMANDS_PER_PEER: usize = 16;
/// Bytes read from a command's output per frame.
const CHUNK: usize = 64 * 1024;
/// Frames of output queued per command before reading pauses.
const QUEUE: usize = 8;
/// How long output of an exited shell is still collected from its PTY.
const PTY_DRAIN: Duration = Duration::from_millis(300);

/// The commands one cluster's exec service is running, and whether it is
/// stopping.
#[derive(Debug, Default)]
pub struct Commands {
    /// A std `Mutex`: held for a map update, never across an `.await`.
    running: Mutex<Running>,
    idle: Notify,
    /// Set at shutdown: new commands are refused while running ones finish.
    stopping: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct Running {
    next: u64,
    /// command id -> (peer, what kills it once started)
    commands: HashMap<u64, (Id52, Option<Control>)>,
}

impl Commands {
    fn running_count(&self) -> usize {
        self.running.lock().expect("running lock").commands.len()
    }

    /// Waits up to `bound` for running commands to finish, then kills the
    /// process groups of those that did not.
    pub async fn drain(&self, cluster: &str, bound: Duration) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let idle = self.idle.notified();
            if self.running_count() == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                break;
            }
        }
        let running = self.running.lock().expect("running lock");
        for (peer, control) in running.commands.values() {
            if let Some(control) = control {
                tracing::warn!(malai_cluster = %cluster, malai_peer = %peer, "killing a command still running at shutdown");
                control.kill();
            }
        }
    }

    /// Takes one of the peer's command slots, atomically with the checks:
    /// refused while stopping or when the peer is at its limit.
    fn reserve(&self, peer: Id52) -> Result<u64, String> {
        let mut r = self.running.lock().expect("running lock");
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("the malai daemon here is shutting down".into());
        }
        if r.commands.values().filter(|(p, _)| *p == peer).count() >= MAX_COMMANDS_PER_PEER {
            return Err(format!(
                "{MAX_COMMANDS_PER_PEER} commands of this peer are already running here"
            ));
        }
        r.next += 1;
        let id = r.next;
        // Nothing to kill until it started.
        r.commands.insert(id, (peer, None));
        Ok(id)
    }

    fn started(&self, id: u64, control: Control) {
        if let Some(entry) = self
            .running
            .lock()
            .expect("running lock")
            .commands
            .get_mut(&id)
        {
            entry.1 = Some(control);
        }
    }

    fn unregister(&self, id: u64) {
        let mut r = self.running.lock().expect("running lock");
        r.commands.remove(&id);
        if r.commands.is_empty() {
            self.idle.notify_waiters();
        }
    }
}

/// How long running commands may take to finish when the cluster stops.
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(10);

/// `malai/exec/1` for one cluster.
#[derive(Debug, Clone)]
pub struct ExecHandler {
    cluster: Arc<Cluster>,
    commands: Arc<Commands>,
}

impl ExecHandler {
    pub fn new(cluster: Arc<Cluster>) -> ExecHandler {
        ExecHandler {
            cluster,
            commands: Arc::default(),
        }
    }
}

impl ProtocolHandler for ExecHandler {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let peer = Id52::from_public_key(conn.remote_id());
        while let Ok((mut send, recv)) = conn.accept_bi().await {
            let Some(permit) = self.cluster.gate().admit_stream(peer, &mut send) else {
                continue;
            };
            let (cluster, commands) = (self.cluster.clone(), self.commands.clone());
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = serve(&cluster, &commands, peer, send, recv).await {
                    tracing::info!(malai_cluster = %cluster.alias(), malai_peer = %peer, "exec stream ended: {e:#}");
                }
            });
        }
        Ok(())
    }

    /// Refuses new commands, lets running ones finish within
    /// `SHUTDOWN_BOUND`, then kills what is left: the router awaits this
    /// before it closes the endpoint.
    async fn shutdown(&self) {
        self.commands
            .drain(self.cluster.alias(), SHUTDOWN_BOUND)
            .await;
    }
}

async fn serve(
    cluster: &Cluster,
    commands: &Commands,
    peer: Id52,
    mut send: SendStream,
    mut recv: RecvStream,
) -> anyhow::Result<()> {
    let req: ExecRequest = frame::read_request(&mut recv, MAX_REQUEST).await?;
    let pty = req.pty.is_some();
    let in_force = cluster.in_force();
    let who = audit::Who {
        cluster: cluster.alias(),
        peer: &peer,
        config_version: in_force.version,
        uid: None,
        claimed: req.on_behalf.as_ref(),
        recording: None,
    };
    let request = match (req.argv.is_empty(), pty) {
        (true, _) => Request::Shell,
        (false, true) => Request::PtyExec(&req.argv),
        (false, false) => Request::Exec(&req.argv),
    };
    let (me, cm) = (cluster.id52(), cluster.cm_id52());
    let instead = match instead_of_argv(&req, in_force.for_peer(&peer, &cm).ok().map(|c| &**c), &me)
    {
        Ok(instead) => instead,
        Err(reason) => return answer(send, HostMsg::Failed { reason }).await,
    };
    // The one decision, taken now and again with each config put in force.
    let decide = |f: &InForce| match (f.for_peer(&peer, &cm), &instead) {
        (Err(reason), _) => Decision::Deny(reason),
        (Ok(config), Some(Instead::Copy(argv))) => acl::copy(config, &me, &peer, argv),
        (Ok(config), Some(Instead::Subsystem(argv))) => {
            acl::decide(config, &me, &peer, Request::Exec(argv))
        }
        (Ok(config), None) => acl::decide(config, &me, &peer, request),
    };
    // What the helper decides again: the argv that runs.
    let asked = match &instead {
        Some(Instead::Copy(argv) | Instead::Subsystem(argv)) => argv.clone(),
        None => req.argv.clone(),
    };
    let decision = match decide(&in_force) {
        Decision::Allow(grant) => as_user(grant, req.ssh.user.as_deref()),
        denied => denied,
    };
    let grant = match decision {
        Decision::Deny(reason) => {
            audit::command(who, &asked, pty, audit::Decision::Denied(&reason));
            return answer(send, HostMsg::Denied { reason }).await;
        }
        Decision::Allow(grant) => grant,
    };
    // A recorded session starts once the recorder took its recording (or,
    // with record = "on", could not); copies and subsystems are not.
    let session = (instead.is_none(), peer, in_force.version, req.pty);
    let recording = match super::recorded::start(cluster, &grant, session).await {
        Ok(r) => r,
        Err(reason) => {
            audit::command(who, &grant.argv, pty, audit::Decision::Denied(&reason));
            return answer(send, HostMsg::Denied { reason }).await;
        }
    };
    let recording_id = recording.as_ref().map(|r| r.id.clone());
    let who = who.recorded(recording_id.as_deref());
    let id = match commands.reserve(peer) {
        Ok(id) => id,
        Err(reason) => {
            audit::command(who, &asked, pty, audit::Decision::Refused(&reason));
            return answer(send, HostMsg::Failed { reason }).await;
        }
    };
    let spawned = match start(cluster, in_force.version, (&peer, &asked, &grant), &req).await {
        Ok(s) => s,
        Err(e) => {
            commands.unregister(id);
            let reason = format!("allowed but failed to start: {e:#}");
            audit::command(who, &grant.argv, pty, audit::Decision::Failed(&reason));
            return answer(send, HostMsg::Failed { reason }).await;
        }
    };
    commands.started(id, spawned.control.clone());
    audit::command(
        who,
        &grant.argv,
        pty,
        audit::Decision::Allowed(&grant.reason),
    );
    let control = spawned.control.clone();
    let result = async {
        frame::write_msg(&mut send, &HostMsg::Started).await?;
        let required = grant.recording.record() == crate::config::Record::Required;
        let broken = recording.as_ref().filter(|_| required).map(|r| r.broken());
        let stop =
            super::recorded::revoked_or_broken(cluster.revoked(decide), broken, in_force.version);
        pump(spawned, send, recv, stop, recording).await
    }
    .await;
    commands.unregister(id);
    if result.is_err() {
        control.kill();
    }
    audit_end(who, &grant.argv, pty, &result);
    result.map(|_| ())
}

/// The audit line of a command that ran: how it ended.
fn audit_end(who: audit::Who, argv: &[String], pty: bool, result: &anyhow::Result<Ended>) {
    match result {
        Ok(Ended::Exited(code)) => {
            audit::command(who, argv, pty, audit::Decision::Exited(*code));
        }
        Ok(Ended::Revoked(revoked)) => {
            let who = audit::Who {
                config_version: revoked.version,
                ..who
            };
            let why = revoked.to_string();
            audit::command(who, argv, pty, audit::Decision::Revoked(&why));
        }
        Err(e) => {
            let why = format!("{e:#}");
            audit::command(who, argv, pty, audit::Decision::Abandoned(&why));
        }
    }
}

/// Starts what `grant` allows for `req` of `peer` (which `asked` for it)
/// under config `version`.
async fn start(
    cluster: &Cluster,
    version: u64,
    (peer, asked, grant): (&Id52, &[String], &acl::Grant),
    req: &ExecRequest,
) -> anyhow::Result<Process> {
    launch::start(Launch {
        cluster: cluster.alias(),
        config_version: version,
        peer,
        asked,
        grant,
        username: None,
        env: req.env.clone(),
        pty: req.pty,
        stdio: spawn::StdioMode::Piped,
        local_uid: None,
    })
    .await
}

/// What runs instead of the request's argv.
enum Instead {
    /// `malai cp`: this host's own copy helper, decided by `acl::copy`.
    Copy(Vec<String>),
    /// `-s sftp`: the machine's `sftp_server`, decided as that command.
    Subsystem(Vec<String>),
}

/// What `req` runs instead of its argv, if anything; the reason it cannot
/// run otherwise. `config` is the config in force for the peer (for the
/// machine's `sftp_server`).
fn instead_of_argv(
    req: &ExecRequest,
    config: Option<&crate::config::ClusterConfig>,
    me: &Id52,
) -> Result<Option<Instead>, String> {
    if let Some(op) = &req.copy {
        let argv = crate::copy::helper_argv(op)
            .map_err(|e| format!("cannot find this malai to copy with: {e}"))?;
        return Ok(Some(Instead::Copy(argv)));
    }
    match req.ssh.subsystem.as_deref() {
        None => Ok(None),
        Some("sftp") => {
            let machine = config.and_then(|c| c.machine_by_id52(me)).map(|(_, m)| m);
            let program = machine.map_or(crate::config::DEFAULT_SFTP_SERVER, |m| m.sftp_server());
            Ok(Some(Instead::Subsystem(vec![program.to_owned()])))
        }
        Some(other) => Err(format!("unknown subsystem {other:?}: malai runs sftp")),
    }
}

/// `grant`, when the client asked for no user (`-l`) or for the one it
/// runs as; a denial naming both otherwise.
fn as_user(grant: acl::Grant, asked: Option<&str>) -> Decision {
    let Some(asked) = asked else {
        return Decision::Allow(grant);
    };
    match launch::runs_as(&grant) {
        Ok(user) if user == asked => Decision::Allow(grant),
        Ok(user) => Decision::Deny(format!(
            "asked to run as {asked} (-l or {asked}@), but the ACL runs this here as {user}: \
             malai never switches to a user the ACL did not choose (drop -l, or set username)"
        )),
        Err(e) => Decision::Deny(format!("cannot tell which user this runs as: {e:#}")),
    }
}

/// How a running command ended, for the audit line.
enum Ended {
    /// It exited with this code (128+N for signal N).
    Exited(u8),
    /// A config put in force took away the right to run it: it was killed
    /// and the client told.
    Revoked(Revoked),
}

/// Answers a request that will not run, and ends the stream.
async fn answer(mut send: SendStream, msg: HostMsg) -> anyhow::Result<()> {
    frame::write_msg(&mut send, &msg).await?;
    send.finish()?;
    let _ = send.stopped().await;
    Ok(())
}

/// Moves bytes between the command and the stream until the command exits
/// (its exit code) or `revoked` resolves (the command killed, the client
/// told why); an error when the client went away first.
async fn pump(
    mut s: Process,
    send: SendStream,
    recv: RecvStream,
    revoked: impl std::future::Future<Output = Revoked>,
    recording: Option<Recording>,
) -> anyhow::Result<Ended> {
    let (tx, rx) = mpsc::channel::<(Kind, Bytes)>(QUEUE);
    let mut readers = Vec::new();
    let mut stdin_sink: Option<StdinSink> = None;
    let master = s.pty_master.take();
    let on_pty = master.is_some();

    if let Some(master) = &master {
        let (reader, sink) = pty_io(master, tx.clone())?;
        readers.push(reader);
        stdin_sink = Some(sink);
    } else {
        if let Some(out) = s.stdout.take() {
            readers.push(tokio::spawn(read_into(out, Kind::Stdout, tx.clone())));
        }
        if let Some(err) = s.stderr.take() {
            readers.push(tokio::spawn(read_into(err, Kind::Stderr, tx.clone())));
        }
    }
    // What the recording gets from the client's side: keystrokes only
    // with record_input, and a PTY's new sizes.
    let mut typed = recording.as_ref().filter(|r| r.input).map(|r| r.tap("i"));
    let mut resized = recording.as_ref().map(|r| r.tap("r"));
    let writer = tokio::spawn(write_out(rx, send, recording));

    let mut child_stdin = s.stdin.take();
    let control = s.control.clone();
    let input = async move {
        let mut recv = tokio::io::BufReader::with_capacity(frame::READ_BUFFER, recv);
        let mut buf = Vec::new();
        loop {
            match frame::read(&mut recv, &mut buf).await {
                Ok(Some(Kind::Stdin)) => {
                    if let Some(tap) = typed.as_mut() {
                        tap.write(&buf).await;
                    }
                    if let Some(sink) = stdin_sink.as_ref() {
                        let _ = sink.write_all(&buf).await;
                    } else if let Some(stdin) = child_stdin.as_mut()
                        && stdin.write_all(&buf).await.is_err()
                    {
                        child_stdin = None;
                    }
                }
                Ok(Some(Kind::Control)) => match serde_json::from_slice::<ClientMsg>(&buf) {
                    Ok(ClientMsg::Eof) => child_stdin = None,
                    Ok(ClientMsg::Signal { signal }) if FORWARDED_SIGNALS.contains(&signal) => {
                        if let Ok(sig) = Signal::try_from(signal) {
                            control.signal(sig);
                        }
                    }
                    Ok(ClientMsg::Resize(size)) => {
                        if let Some(m) = &master {
                            let _ = spawn::resize(m, size);
                            if let Some(tap) = resized.as_mut() {
                                tap.resize(size).await;
                            }
                        }
                    }
                    _ => {}
                },
                Ok(Some(_)) => {}
                Ok(None) => {
                    return anyhow::anyhow!("client closed its side before the command ended");
                }
                Err(e) => return anyhow::anyhow!("{e}"),
            }
        }
    };

    let code = tokio::select! {
        code = s.wait() => code?,
        gone = input => {
            s.control.kill();
            let _ = s.wait().await;
            writer.abort();
            return Err(gone);
        }
        revoked = revoked => {
            s.control.kill();
            let _ = s.wait().await;
            for r in readers {
                r.abort();
            }
            let msg = HostMsg::Revoked { reason: revoked.to_string() };
            end_with(&tx, writer, &msg).await?;
            return Ok(Ended::Revoked(revoked));
        }
    };
    for mut r in readers {
        if on_pty {
            // What the shell wrote before exiting is in the PTY already; a
            // background job that keeps the PTY open must not hold the exit
            // back (ssh returns at once too), nor the reader stay behind.
            let _ = tokio::time::timeout(PTY_DRAIN, &mut r).await;
            r.abort();
        } else {
            let _ = r.await;
        }
    }
    end_with(&tx, writer, &HostMsg::Exit { code }).await?;
    Ok(Ended::Exited(code))
}

/// The writer of a command's stream: it ends after the exit status, even
/// if a background job still holds the PTY open (and its reader's sender
/// alive). It gives the recording each chunk before the client, and its
/// end before the exit.
async fn write_out(
    mut rx: mpsc::Receiver<(Kind, Bytes)>,
    mut send: SendStream,
    mut recording: Option<Recording>,
) -> anyhow::Result<SendStream> {
    let mut taps = recording.as_ref().map(|r| (r.tap("o"), r.tap("e")));
    while let Some((kind, bytes)) = rx.recv().await {
        match (kind, taps.as_mut()) {
            (Kind::Stdout, Some((out, _))) => _ = out.write(&bytes).await,
            (Kind::Stderr, Some((_, err))) => _ = err.write(&bytes).await,
            _ => {}
        }
        if kind == Kind::Control
            && let Some(r) = recording.take()
        {
            let exit = match serde_json::from_slice::<HostMsg>(&bytes) {
                Ok(HostMsg::Exit { code }) => Some(code),
                _ => None,
            };
            let id = r.id.clone();
            if let Err(why) = r.end(exit).await {
                tracing::warn!(malai_recording = %id, "recording {id} may be incomplete: {why}");
            }
        }
        let control = kind == Kind::Control;
        frame::write_chunk(&mut send, kind, bytes).await?;
        if control {
            break;
        }
    }
    Ok(send)
}

/// Queues `last` after the output, lets the writer send it all, and ends
/// the stream.
async fn end_with(
    tx: &mpsc::Sender<(Kind, Bytes)>,
    writer: tokio::task::JoinHandle<anyhow::Result<SendStream>>,
    last: &HostMsg,
) -> anyhow::Result<()> {
    tx.send((Kind::Control, serde_json::to_vec(last)?.into()))
        .await
        .map_err(|_| anyhow::anyhow!("output writer ended early"))?;
    let mut send = writer.await??;
    send.finish()?;
    let _ = send.stopped().await;
    Ok(())
}

/// A command on a PTY: the master side, non-blocking, read by a task that
/// sends its output to `tx` (no thread waits on it, so a background job that
/// keeps the PTY open after the shell exited holds nothing of the daemon's
/// once that task is aborted), and the sink its stdin goes to.
#[allow(unsafe_code)]
fn pty_io(
    master: &std::os::fd::OwnedFd,
    tx: mpsc::Sender<(Kind, Bytes)>,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, StdinSink)> {
    let fd = master.try_clone()?;
    let flags = rustix::fs::fcntl_getfl(&fd)?;
    rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    // SAFETY: the AsyncFd owns `fd` (an OwnedFd: open until the AsyncFd is
    // dropped, its raw descriptor never changes).
    let pty = Arc::new(
        unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let reading = pty.clone();
    let read = tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let Ok(mut ready) = reading.readable().await else {
                break;
            };
            match ready.try_io(|fd| rustix::io::read(fd.get_ref(), &mut buf).map_err(Into::into)) {
                // EIO once every process has closed the PTY's other side.
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(n)) => {
                    if tx
                        .send((Kind::Stdout, Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Err(_would_block) => {}
            }
        }
    });
    Ok((read, StdinSink(pty)))
}

/// Where stdin goes when the command runs on a PTY: the master side.
struct StdinSink(Arc<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>);

impl StdinSink {
    async fn write_all(&self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let mut ready = self.0.writable().await?;
            match ready.try_io(|fd| rustix::io::write(fd.get_ref(), bytes).map_err(Into::into)) {
                Ok(Ok(n)) => bytes = &bytes[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }
}

async fn read_into<R: AsyncRead + Unpin>(r: R, kind: Kind, tx: mpsc::Sender<(Kind, Bytes)>) {
    let mut chunks = frame::ChunkReader::new(r, CHUNK);
    while let Some(bytes) = chunks.next().await {
        if tx.send((kind, bytes)).await.is_err() {
            break;
        }
    }
}
