//! A command that runs for a peer, wherever it was started: a child of this
//! process (a user's daemon, the CLI, a root daemon without the helper), or
//! a transient unit the privileged helper started for an unprivileged
//! daemon. The exec host streams its pipes or PTY the same way either way,
//! and signals or kills it through `Control`.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use super::clone;
use super::spawn::{self, Spec};

pub type Reader = Box<dyn AsyncRead + Unpin + Send>;
pub type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// A running command.
pub struct Process {
    pub stdin: Option<Writer>,
    pub stdout: Option<Reader>,
    pub stderr: Option<Reader>,
    /// The PTY's master side, when the command runs on one.
    pub pty_master: Option<OwnedFd>,
    pub control: Control,
    exit: Exit,
}

enum Exit {
    /// The helper's answer: the exit code, or why it is unknown.
    Helper(oneshot::Receiver<Result<u8, String>>),
    /// A child of this process (`clone::spawn`): its pidfd, until reaped.
    Pidfd(Option<tokio::io::unix::AsyncFd<OwnedFd>>),
}

/// Signals a running command and everything it started.
#[derive(Debug, Clone)]
pub enum Control {
    /// A child of this process: its session id, and whether it was reaped
    /// (its pid may then be another process's).
    Session(i32, Arc<AtomicBool>),
    /// A command of the privileged helper: what goes to it.
    Helper(mpsc::UnboundedSender<Signal>),
}

impl Control {
    /// Delivers a signal the user sent (Ctrl-C...): to the command's process
    /// group here, to every process of its unit through the helper.
    pub fn signal(&self, signal: Signal) {
        match self {
            Control::Session(pgid, reaped) if !reaped.load(Ordering::SeqCst) => {
                spawn::kill_group(*pgid, signal);
            }
            // Reaped: its pid (the session and group id) may be a new
            // process's now; what it left running is no longer ours here
            // (the helper's control group takes it).
            Control::Session(..) => {}
            Control::Helper(tx) => {
                let _ = tx.send(signal);
            }
        }
    }

    /// Kills the command and everything it started (its session here, its
    /// whole control group through the helper).
    pub fn kill(&self) {
        match self {
            Control::Session(sid, reaped) if !reaped.load(Ordering::SeqCst) => {
                spawn::kill_session(*sid, Signal::SIGKILL);
            }
            Control::Session(..) => {}
            Control::Helper(tx) => {
                let _ = tx.send(Signal::SIGKILL);
            }
        }
    }
}

impl Process {
    /// Starts `spec` as a child of this process (in the control group
    /// whose directory `cgroup` is open, when given).
    pub fn spawn(spec: Spec, cgroup: Option<&OwnedFd>) -> anyhow::Result<Process> {
        Ok(Process::from_clone(clone::spawn(spec, cgroup)?)?)
    }

    /// A child of this process.
    #[allow(unsafe_code)]
    pub(super) fn from_clone(c: clone::Cloned) -> std::io::Result<Process> {
        // SAFETY: the AsyncFd owns the pidfd (an OwnedFd: open until it is
        // dropped, its raw descriptor never changes).
        let pidfd = unsafe { tokio::io::unix::AsyncFd::register(c.pidfd) }
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let [stdin, stdout, stderr] = c.pipes;
        Ok(Process {
            stdin: writer(stdin)?,
            stdout: reader(stdout)?,
            stderr: reader(stderr)?,
            pty_master: c.pty_master,
            control: Control::Session(c.pid, Arc::default()),
            exit: Exit::Pidfd(Some(pidfd)),
        })
    }

    /// A command the helper runs; `exit` delivers its exit code.
    pub fn from_helper(
        pipes: [Option<OwnedFd>; 3],
        pty_master: Option<OwnedFd>,
        control: mpsc::UnboundedSender<Signal>,
        exit: oneshot::Receiver<Result<u8, String>>,
    ) -> std::io::Result<Process> {
        let [stdin, stdout, stderr] = pipes;
        Ok(Process {
            stdin: writer(stdin)?,
            stdout: reader(stdout)?,
            stderr: reader(stderr)?,
            pty_master,
            control: Control::Helper(control),
            exit: Exit::Helper(exit),
        })
    }

    /// Waits for the command to end: its exit code, or 128+N for signal N.
    pub async fn wait(&mut self) -> std::io::Result<u8> {
        match &mut self.exit {
            Exit::Pidfd(None) => Err(std::io::Error::other("the command was reaped already")),
            Exit::Pidfd(Some(pidfd)) => {
                let code = loop {
                    let mut ready = pidfd.readable().await?;
                    match ready.try_io(|fd| waitid_exited(fd.get_ref())) {
                        Ok(result) => break result?,
                        Err(_would_block) => {}
                    }
                };
                self.exit = Exit::Pidfd(None);
                if let Control::Session(_, reaped) = &self.control {
                    reaped.store(true, Ordering::SeqCst);
                }
                Ok(code)
            }
            Exit::Helper(rx) => match rx.await {
                Ok(Ok(code)) => Ok(code),
                Ok(Err(why)) => Err(std::io::Error::other(why)),
                Err(_) => Err(std::io::Error::other(
                    "the privileged helper went away before the command ended",
                )),
            },
        }
    }
}

impl Drop for Process {
    /// A child left running when its `Process` goes (the task that held it
    /// was dropped) is reaped when it ends, not left a zombie.
    fn drop(&mut self) {
        if let Exit::Pidfd(slot) = &mut self.exit
            && let Some(pidfd) = slot.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                while let Ok(mut ready) = pidfd.readable().await {
                    if ready.try_io(|fd| waitid_exited(fd.get_ref())).is_ok() {
                        return;
                    }
                }
            });
        }
    }
}

/// A stream of this side of a command's pipe.
fn reader(fd: Option<OwnedFd>) -> std::io::Result<Option<Reader>> {
    fd.map(|fd| tokio::net::unix::pipe::Receiver::from_owned_fd(fd).map(|r| Box::new(r) as Reader))
        .transpose()
}

fn writer(fd: Option<OwnedFd>) -> std::io::Result<Option<Writer>> {
    fd.map(|fd| tokio::net::unix::pipe::Sender::from_owned_fd(fd).map(|w| Box::new(w) as Writer))
        .transpose()
}

/// Reaps the exited child of `pidfd`: its exit code, or 128+N for signal
/// N; `WouldBlock` while it runs.
#[allow(unsafe_code)]
fn waitid_exited(pidfd: &OwnedFd) -> std::io::Result<u8> {
    use std::os::fd::AsRawFd;
    // SAFETY: waitid fills `info`, a plain C struct; the pidfd is open.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let id = libc::id_t::try_from(pidfd.as_raw_fd()).map_err(std::io::Error::other)?;
        if libc::waitid(libc::P_PIDFD, id, &mut info, libc::WEXITED | libc::WNOHANG) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if info.si_pid() == 0 {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let status = info.si_status();
        Ok(match info.si_code {
            libc::CLD_EXITED => status as u8,
            _ => (128 + status) as u8,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Once a command is reaped its pid may be reused: signals and kills
    /// through its `Control` go nowhere (a stand-in for the reused pid, a
    /// process of this test's own, survives them).
    #[tokio::test]
    async fn a_reaped_command_is_never_signalled_again() {
        let mut done = Process::spawn(Spec::piped(&["true"]), None).unwrap();
        assert_eq!(done.wait().await.unwrap(), 0);
        let mut victim = Process::spawn(Spec::piped(&["sleep", "1000"]), None).unwrap();
        let Control::Session(victim_pid, _) = victim.control.clone() else {
            unreachable!("a child")
        };
        let Control::Session(_, reaped) = done.control.clone() else {
            unreachable!("a child")
        };
        // The reaped command's Control, as if its pid were the victim's.
        let reused = Control::Session(victim_pid, reaped);
        reused.signal(Signal::SIGTERM);
        reused.kill();
        // Signals are sent at once; a victim hit by one would be gone well
        // within this bound.
        let still =
            tokio::time::timeout(std::time::Duration::from_millis(200), victim.wait()).await;
        assert!(
            still.is_err(),
            "the process behind a reused pid was signalled"
        );
        victim.control.kill();
        assert_eq!(victim.wait().await.unwrap(), 128 + 9);
    }
}
