//! The daemon's side of the helper: one connection per command. The
//! daemon makes the command's pipes (keeping its ends) or asks for a PTY,
//! sends what the peer asked, and gets a `Process` whose signals and kill
//! go to the helper and whose exit code comes from it.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::sys::signal::Signal;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use super::proto::{self, Answer, Control, Receiver, Request};
use crate::command::process::Process;

/// Why the helper did not start a command.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// The helper's own check refused it (logged there).
    #[error("{0}")]
    Refused(String),
    /// It could not be started, or the helper could not be asked.
    #[error("{0}")]
    Failed(String),
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(Into::into)
}

/// What the command's stdin, stdout and stderr are.
pub enum Stdio {
    /// Pipes the daemon streams (a peer's command).
    Pipes,
    /// A D-Bus caller's own descriptors.
    Fds([OwnedFd; 3]),
    /// A PTY the helper makes; its master side comes back.
    Pty,
}

/// Asks the helper at `socket` to run `req`.
pub async fn start(socket: &Path, req: &Request, stdio: Stdio) -> Result<Process, HelperError> {
    let failed = |what: &str, e: std::io::Error| {
        HelperError::Failed(format!(
            "{what} the privileged helper at {}: {e}",
            socket.display()
        ))
    };
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| failed("cannot reach", e))?;
    let (send_fds, ours): (Vec<OwnedFd>, [Option<OwnedFd>; 3]) = match stdio {
        Stdio::Pty => (Vec::new(), [None, None, None]),
        Stdio::Fds(fds) => (fds.into(), [None, None, None]),
        Stdio::Pipes => {
            let pipes = (|| Ok::<_, std::io::Error>((pipe()?, pipe()?, pipe()?)))()
                .map_err(|e| failed("no pipes for", e))?;
            let ((in_r, in_w), (out_r, out_w), (err_r, err_w)) = pipes;
            (
                vec![in_r, out_w, err_w],
                [Some(in_w), Some(out_r), Some(err_r)],
            )
        }
    };
    let borrowed: Vec<_> = send_fds.iter().map(AsFd::as_fd).collect();
    proto::send(&stream, req, &borrowed)
        .await
        .map_err(|e| failed("cannot ask", e))?;
    // The command holds them now; ours would keep its pipes open.
    drop(borrowed);
    drop(send_fds);
    let mut rx = Receiver::default();
    let (answer, mut fds) = rx
        .recv::<Answer>(&stream)
        .await
        .map_err(|e| failed("no answer from", e))?
        .ok_or_else(|| {
            HelperError::Failed(
                "the privileged helper closed the connection without an answer (see its journal: journalctl -u malai-helper)".into(),
            )
        })?;
    match answer {
        Answer::Started { .. } => {}
        Answer::Refused { reason } => return Err(HelperError::Refused(reason)),
        Answer::Failed { reason } => return Err(HelperError::Failed(reason)),
        Answer::Exited { .. } => {
            return Err(HelperError::Failed(
                "the privileged helper answered out of order".into(),
            ));
        }
    }
    let pty_master =
        if req.pty.is_some() {
            Some(fds.pop().ok_or_else(|| {
                HelperError::Failed("the privileged helper sent no terminal".into())
            })?)
        } else {
            None
        };
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (exit_tx, exit_rx) = oneshot::channel();
    tokio::spawn(watch(stream, rx, control_rx, exit_tx));
    Process::from_helper(ours, pty_master, control_tx, exit_rx)
        .map_err(|e| failed("cannot stream the pipes of", e))
}

/// Passes signals on until the helper reports the exit; a SIGKILL (the
/// daemon killing the command) closes the connection, which makes the
/// helper kill the whole command.
async fn watch(
    stream: UnixStream,
    mut rx: Receiver,
    mut control: mpsc::UnboundedReceiver<Signal>,
    exit: oneshot::Sender<Result<u8, String>>,
) {
    let mut listening = true;
    let result = loop {
        tokio::select! {
            answer = rx.recv::<Answer>(&stream) => break match answer {
                Ok(Some((Answer::Exited { code }, _))) => Ok(code),
                Ok(Some((Answer::Failed { reason }, _))) => Err(reason),
                Ok(Some(_)) => Err("the privileged helper answered out of order".into()),
                Ok(None) => Err("the privileged helper closed the connection".into()),
                Err(e) => Err(format!("the privileged helper's connection failed: {e}")),
            },
            signal = control.recv(), if listening => match signal {
                Some(Signal::SIGKILL) => break Err("killed".into()),
                Some(sig) => {
                    let msg = Control::Signal { signal: sig as i32 };
                    if proto::send(&stream, &msg, &[]).await.is_err() {
                        break Err("the privileged helper's connection failed".into());
                    }
                }
                None => listening = false,
            },
        }
    };
    drop(stream);
    let _ = exit.send(result);
}
