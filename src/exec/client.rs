//! The client side of `malai/exec/1`: send the request, then stream stdin
//! up and stdout/stderr down, forward Ctrl-C (or, on a PTY, the raw bytes
//! and window size), and return the remote exit code.

use std::os::fd::AsFd;

use bytes::Bytes;
use iroh::endpoint::Connection;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::ExecError;
use super::proto::{
    ClientMsg, CopyOp, ExecRequest, HostMsg, OnBehalf, SshAsk, WindowSize, env_allowed,
};
use crate::p2p::frame::{self, Kind};
use crate::p2p::gate;

/// Where a command's streams come from and go to, and the controls (signals,
/// window sizes) the user sends while it runs: the CLI's own stdio and
/// signals, or the descriptors a CLI passed to the daemon over D-Bus.
pub struct Io {
    pub stdin: Box<dyn AsyncRead + Unpin + Send>,
    pub stdout: Box<dyn AsyncWrite + Unpin + Send>,
    pub stderr: Box<dyn AsyncWrite + Unpin + Send>,
    /// TERM, LANG, LC_*: the host filters them again.
    pub env: Vec<(String, String)>,
    /// Run on a PTY of this size (an interactive shell).
    pub pty: Option<WindowSize>,
    pub controls: mpsc::Receiver<ClientMsg>,
    /// The local user this device runs the command for (sent as a claim).
    pub on_behalf: Option<OnBehalf>,
    /// A copy (`malai cp`) instead of the argv.
    pub copy: Option<CopyOp>,
    /// `-l USER`, `-s sftp`.
    pub ssh: SshAsk,
}

impl Io {
    /// This process's stdio, environment and signals (SIGINT, SIGTERM, and
    /// SIGWINCH on a PTY). Needs a running tokio runtime.
    pub fn of_process(argv: &[String], tty: u8) -> Io {
        let pty = process_pty(argv, tty);
        let (tx, controls) = mpsc::channel(8);
        tokio::spawn(async move {
            let on_pty = pty.is_some();
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut winch = signal(SignalKind::window_change()).expect("SIGWINCH handler");
            loop {
                let msg = tokio::select! {
                    _ = int.recv() => ClientMsg::Signal { signal: 2 },
                    _ = term.recv() => ClientMsg::Signal { signal: 15 },
                    _ = winch.recv() => match (on_pty, window_size()) {
                        (true, Some(size)) => ClientMsg::Resize(size),
                        _ => continue,
                    },
                };
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
        });
        Io {
            stdin: Box::new(tokio::io::stdin()),
            stdout: Box::new(tokio::io::stdout()),
            stderr: Box::new(tokio::io::stderr()),
            env: process_env(),
            pty,
            controls,
            on_behalf: Some(OnBehalf::uid(nix::unistd::getuid().as_raw())),
            copy: None,
            ssh: Default::default(),
        }
    }
}

/// This process's Ctrl-C and SIGTERM, as the signal numbers a remote
/// command is sent (for a fan-out and a copy, which have no terminal).
pub struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupts {
    /// `None` when the handlers cannot be installed.
    pub fn new() -> Option<Interrupts> {
        Some(Interrupts {
            int: signal(SignalKind::interrupt()).ok()?,
            term: signal(SignalKind::terminate()).ok()?,
        })
    }

    /// The next one: 2 for SIGINT, 15 for SIGTERM.
    pub async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => 2,
            _ = self.term.recv() => 15,
        }
    }
}

/// The PTY an invocation of this process asks for: a shell (no argv), or
/// a command with `-t` (`tty` > 0), from a terminal gets one of the
/// terminal's size; `-tt` asks for one even without a terminal (ssh's
/// habits).
pub fn process_pty(argv: &[String], tty: u8) -> Option<WindowSize> {
    let terminal = rustix::termios::isatty(std::io::stdin());
    let wanted = (argv.is_empty() || tty > 0) && terminal || tty > 1;
    wanted.then(|| window_size().unwrap_or(WindowSize { rows: 24, cols: 80 }))
}

/// The variables of this process that may pass to a remote command.
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars().filter(|(k, _)| env_allowed(k)).collect()
}

/// Runs `argv` (empty: a shell) on the peer of `conn` with the user's
/// terminal and signals, on a PTY as `process_pty` says for `tty`; returns
/// the exit code to end with. `what` names the target in messages. Its
/// stdin is `stdin` when given (a pipe this process fed), this process's
/// otherwise.
pub async fn run(
    conn: &Connection,
    argv: Vec<String>,
    what: &str,
    tty: u8,
    ssh: SshAsk,
    stdin: Option<std::os::fd::OwnedFd>,
) -> anyhow::Result<u8> {
    let (stdout, out) = LazyDrain::new(std::io::stdout().as_fd().try_clone_to_owned()?);
    let (stderr, err) = LazyDrain::new(std::io::stderr().as_fd().try_clone_to_owned()?);
    let mut io = Io {
        ssh,
        stdout: Box::new(stdout),
        stderr: Box::new(stderr),
        ..Io::of_process(&argv, tty)
    };
    if let Some(fed) = stdin {
        io.stdin = Box::new(tokio::net::unix::pipe::Receiver::from_owned_fd(fed)?);
    }
    let _raw = RawMode::for_pty(io.pty)?;
    // The pipes close with `io`; each thread then writes what is left.
    let code = run_with(conn, argv, what, io).await;
    join_drains([out, err]).await;
    Ok(code?)
}

/// Waits until the threads of `drains` that were started have written all
/// they were given; none started (a command that wrote nothing) costs no
/// thread here either.
pub async fn join_drains(drains: [DrainThread; 2]) {
    let threads = drains.map(|t| t.lock().expect("drain thread").take());
    if threads.iter().any(Option::is_some) {
        let _ = tokio::task::spawn_blocking(move || threads.map(|t| t.map(|t| t.join()))).await;
    }
}

/// A pipe (read end, write end), close-on-exec, 1 MiB wide where the
/// kernel allows it (64 KiB otherwise): fewer, larger reads and writes for
/// the threads that copy this process's stdio through one.
pub fn wide_pipe() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let _ = nix::fcntl::fcntl(&write_end, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
    Ok((read_end, write_end))
}

/// Where a drain's thread goes once it is started, to be joined.
pub type DrainThread = std::sync::Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>;

/// `drain_to` started on the first write: a command that writes nothing
/// to it (most short ones) costs no pipe and no thread. The CLI's own
/// stdout and stderr go through one, as a caller's do in the daemon.
pub struct LazyDrain {
    fd: Option<std::os::fd::OwnedFd>,
    pipe: Option<tokio::net::unix::pipe::Sender>,
    thread: DrainThread,
}

impl LazyDrain {
    /// A writer draining into `fd`, and where its thread will be.
    pub fn new(fd: std::os::fd::OwnedFd) -> (LazyDrain, DrainThread) {
        let thread = DrainThread::default();
        let drain = LazyDrain {
            fd: Some(fd),
            pipe: None,
            thread: thread.clone(),
        };
        (drain, thread)
    }
}

impl AsyncWrite for LazyDrain {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.pipe.is_none() {
            let Some(fd) = self.fd.take() else {
                return std::task::Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
            };
            let (pipe, thread) = drain_to(fd)?;
            *self.thread.lock().expect("drain thread") = Some(thread);
            self.pipe = Some(pipe);
        }
        let pipe = self.pipe.as_mut().expect("started above");
        std::pin::Pin::new(pipe).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.pipe.as_mut() {
            Some(pipe) => std::pin::Pin::new(pipe).poll_flush(cx),
            None => std::task::Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.pipe.as_mut() {
            Some(pipe) => std::pin::Pin::new(pipe).poll_shutdown(cx),
            None => std::task::Poll::Ready(Ok(())),
        }
    }
}

/// A pipe whose bytes a thread of its own copies to `fd` (a copy of this
/// process's stdout or stderr, or a caller's), unbuffered, with splice(2) where `fd` allows it: the
/// async side writes the pipe through epoll, where tokio's stdout took a
/// trip through the blocking pool and a flush for each frame. The thread
/// ends once the pipe's write side is closed and drained: join it before
/// exiting (the daemon, which drains into a caller's descriptors the same
/// way through `LazyDrain`, joins it before it answers).
fn drain_to(
    fd: std::os::fd::OwnedFd,
) -> std::io::Result<(tokio::net::unix::pipe::Sender, std::thread::JoinHandle<()>)> {
    let mut out = std::fs::File::from(fd);
    let (read_end, write_end) = wide_pipe()?;
    let mut from = std::fs::File::from(read_end);
    let thread = std::thread::Builder::new()
        .name("output".into())
        .spawn(move || {
            let _ = std::io::copy(&mut from, &mut out);
        })?;
    Ok((
        tokio::net::unix::pipe::Sender::from_owned_fd(write_end)?,
        thread,
    ))
}

/// Runs `argv` on the peer of `conn` with the streams and controls of `io`.
pub async fn run_with(
    conn: &Connection,
    argv: Vec<String>,
    what: &str,
    io: Io,
) -> Result<u8, ExecError> {
    let Io {
        stdin: input,
        mut stdout,
        mut stderr,
        env,
        pty,
        mut controls,
        on_behalf,
        copy,
        ssh,
    } = io;
    // A host refuses a stranger right after the handshake: say so, rather
    // than that the connection was lost.
    let failed = |e: String| match gate::refusal(conn) {
        Some(reason) => ExecError::Unreachable(format!(
            "{what} refused the connection: {reason} (is this device's id52 in the cluster's config?)"
        )),
        None => ExecError::Lost(format!("{what}: {e}")),
    };
    let (mut send, recv) = conn.open_bi().await.map_err(|e| failed(e.to_string()))?;
    let mut recv = tokio::io::BufReader::with_capacity(frame::READ_BUFFER, recv);
    let request = ExecRequest {
        argv,
        env,
        pty,
        on_behalf,
        copy,
        ssh,
    };
    frame::write_msg(&mut send, &request)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let answer: HostMsg = frame::read_msg(&mut recv)
        .await
        .map_err(|e| failed(format!("no answer: {e}")))?;
    started(answer, what)?;

    // Everything the client sends goes through one writer task.
    let (tx, mut rx) = mpsc::channel::<(Kind, Bytes)>(8);
    let writer = tokio::spawn(async move {
        while let Some((kind, bytes)) = rx.recv().await {
            if frame::write_chunk(&mut send, kind, bytes).await.is_err() {
                break;
            }
        }
        let _ = send.finish();
    });

    let stdin_task = tokio::spawn(send_stdin(input, tx.clone()));

    let control_tx = tx.clone();
    let control_task = tokio::spawn(async move {
        while let Some(msg) = controls.recv().await {
            let bytes = serde_json::to_vec(&msg).expect("json");
            if control_tx
                .send((Kind::Control, bytes.into()))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    drop(tx);

    let mut buf = Vec::new();
    let outcome = loop {
        match frame::read(&mut recv, &mut buf).await {
            Ok(Some(Kind::Stdout)) => {
                stdout.write_all(&buf).await?;
                stdout.flush().await?;
            }
            Ok(Some(Kind::Stderr)) => {
                stderr.write_all(&buf).await?;
                stderr.flush().await?;
            }
            Ok(Some(Kind::Control)) => match serde_json::from_slice::<HostMsg>(&buf) {
                Ok(HostMsg::Exit { code }) => break Ok(code),
                Ok(HostMsg::Revoked { reason }) => {
                    break Err(ExecError::Revoked {
                        target: what.to_owned(),
                        reason,
                    });
                }
                _ => continue,
            },
            Ok(Some(Kind::Stdin)) => continue,
            Ok(None) => {
                break Err(ExecError::Lost(format!(
                    "{what}: connection ended before the command did"
                )));
            }
            Err(e) => break Err(ExecError::Lost(format!("{what}: connection lost: {e}"))),
        }
    };
    stdin_task.abort();
    control_task.abort();
    let _ = writer.await;
    outcome
}

/// The host's first answer: the command started, or why it did not.
fn started(answer: HostMsg, what: &str) -> Result<(), ExecError> {
    match answer {
        HostMsg::Started => Ok(()),
        HostMsg::Denied { reason } => Err(ExecError::Denied {
            target: what.to_owned(),
            reason,
        }),
        HostMsg::Failed { reason } => Err(ExecError::NotRun {
            target: what.to_owned(),
            reason,
        }),
        HostMsg::Exit { .. } | HostMsg::Revoked { .. } => Err(ExecError::Lost(format!(
            "{what}: protocol error: an end before the start"
        ))),
    }
}

/// Sends what `input` yields as stdin frames, then the EOF.
async fn send_stdin<R: AsyncRead + Unpin>(input: R, tx: mpsc::Sender<(Kind, Bytes)>) {
    let mut chunks = frame::ChunkReader::new(input, 64 * 1024);
    while let Some(bytes) = chunks.next().await {
        if tx.send((Kind::Stdin, bytes)).await.is_err() {
            return;
        }
    }
    let eof = serde_json::to_vec(&ClientMsg::Eof).expect("json");
    let _ = tx.send((Kind::Control, eof.into())).await;
}

pub fn window_size() -> Option<WindowSize> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout().as_fd()).ok()?;
    (ws.ws_row > 0 && ws.ws_col > 0).then_some(WindowSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// The local terminal in raw mode for the life of a remote shell; restored
/// on drop, whatever happens.
pub struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    /// Raw mode when the command runs on a PTY and stdout is a terminal.
    pub fn for_pty(pty: Option<WindowSize>) -> anyhow::Result<Option<RawMode>> {
        match pty {
            Some(_) if rustix::termios::isatty(std::io::stdout()) => Ok(Some(RawMode::enter()?)),
            _ => Ok(None),
        }
    }

    fn enter() -> anyhow::Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}
