//! `malai helper serve`: the helper's loop. Each connection is one command
//! of the daemon: the peer's credentials are checked first (the daemon's
//! user or root, from `SO_PEERCRED`; anyone else is refused unread), then
//! the request is decided again (`check`), started (`unit`), and watched:
//! signals from the daemon are passed on, the exit code goes back, and a
//! connection that closes first kills the command.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::net::{UnixListener, UnixStream};

use super::check::{self, Refusal};
use super::proto::{self, Answer, Control, Receiver, Request};
use super::unit::{Label, Launcher, Started};
use crate::home::Home;

/// How long the daemon has to send its request after connecting.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Commands at once, over all clusters (the daemon allows 16 per peer).
const MAX_COMMANDS: usize = 1024;

pub struct Helper {
    /// The system service's home (read only: the helper writes nothing in it).
    pub home: Home,
    /// Where the pins are (`pin::dir()`).
    pub pins: PathBuf,
    /// The daemon's uid: the only one, besides root, that may ask.
    pub daemon_uid: u32,
    pub launcher: Launcher,
}

/// Serves connections until the listener fails.
pub async fn serve(helper: Helper, listener: UnixListener) -> anyhow::Result<()> {
    let helper = Arc::new(helper);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_COMMANDS));
    tracing::info!(
        "malai helper: serving uid {} on its socket; commands run as {}",
        helper.daemon_uid,
        helper.launcher.name()
    );
    loop {
        let (stream, _) = listener.accept().await?;
        let uid = match stream.peer_cred() {
            Ok(cred) => cred.uid(),
            Err(e) => {
                tracing::warn!("malai helper: no credentials for a connection: {e}");
                continue;
            }
        };
        if uid != helper.daemon_uid && uid != 0 {
            tracing::warn!(
                malai_uid = uid,
                "malai helper: refused a connection from uid {uid}: only the daemon's user (uid {}) may ask",
                helper.daemon_uid
            );
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!("malai helper: {MAX_COMMANDS} commands are running; refused another");
            continue;
        };
        let helper = helper.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = one(&helper, stream).await {
                tracing::info!("malai helper: a command's connection ended: {e:#}");
            }
        });
    }
}

/// One command, from request to exit.
async fn one(helper: &Helper, stream: UnixStream) -> anyhow::Result<()> {
    let mut rx = Receiver::default();
    let Some((req, fds)): Option<(Request, Vec<OwnedFd>)> =
        tokio::time::timeout(REQUEST_TIMEOUT, rx.recv(&stream)).await??
    else {
        return Ok(());
    };
    let received = std::time::Instant::now();
    let pipes: Option<[OwnedFd; 3]> = match (req.pty.is_some(), <[OwnedFd; 3]>::try_from(fds)) {
        (true, Ok(_)) => anyhow::bail!("a PTY request came with pipes"),
        (true, Err(fds)) if fds.is_empty() => None,
        (false, Ok(fds)) => Some(fds),
        _ => anyhow::bail!("a request needs its stdin, stdout and stderr, or a PTY"),
    };
    let checked = match check::check(&helper.home, &helper.pins, &req) {
        Ok(c) => c,
        Err(refusal) => {
            let kind = match &refusal {
                Refusal::Denied(_) => "the signed config does not allow it",
                Refusal::NoConfig(_) => "no config it can trust",
            };
            tracing::warn!(
                malai_cluster = %req.cluster, malai_peer = %req.peer,
                malai_argv = %shell_words::join(&req.argv), malai_config_version = req.config_version,
                "malai helper: refused a request of the daemon ({kind}): {refusal}"
            );
            let reason = format!("the privileged helper refused: {refusal}");
            return proto::send(&stream, &Answer::Refused { reason }, &[])
                .await
                .map_err(Into::into);
        }
    };
    let (version, reason) = (checked.version, checked.reason.clone());
    let check_us = received.elapsed().as_micros();
    let label = Label {
        cluster: &req.cluster,
        peer: &req.peer,
        argv: &req.argv,
    };
    let Started {
        unit,
        pty_master,
        mut running,
    } = match helper.launcher.start(checked, pipes, &label).await {
        Ok(s) => s,
        Err(e) => {
            let reason = format!("{e:#}");
            tracing::warn!(malai_cluster = %req.cluster, malai_peer = %req.peer, "malai helper: could not start a command: {reason}");
            return proto::send(&stream, &Answer::Failed { reason }, &[])
                .await
                .map_err(Into::into);
        }
    };
    tracing::info!(
        malai_cluster = %req.cluster, malai_peer = %req.peer,
        malai_argv = %shell_words::join(&req.argv), malai_config_version = version,
        malai_unit = %unit,
        "malai helper: started {unit} ({reason}, config version {version}; checked in {check_us} µs, started in {} µs)",
        received.elapsed().as_micros() - check_us
    );
    let master_fd = pty_master.as_ref().map(|m| m.as_fd());
    let attach: Vec<_> = master_fd.into_iter().collect();
    let started = proto::send(&stream, &Answer::Started { unit: unit.clone() }, &attach).await;
    drop(pty_master);
    let signaller = running.signaller();
    if let Err(e) = started {
        signaller.send(Signal::SIGKILL).await;
        let _ = running.wait().await;
        return Err(e.into());
    }
    let code = loop {
        tokio::select! {
            code = running.wait() => break code,
            msg = rx.recv::<Control>(&stream) => match msg {
                Ok(Some((Control::Signal { signal }, _))) => {
                    if let Ok(sig) = Signal::try_from(signal) {
                        signaller.send(sig).await;
                    }
                }
                // The daemon closed: its peer went away, or it stopped.
                Ok(None) | Err(_) => {
                    signaller.send(Signal::SIGKILL).await;
                    let _ = running.wait().await;
                    tracing::info!(malai_cluster = %req.cluster, malai_peer = %req.peer, malai_unit = %unit,
                        "malai helper: killed {unit}: the daemon closed its connection");
                    return Ok(());
                }
            },
        }
    };
    let answer = match code {
        Ok(code) => Answer::Exited { code },
        Err(e) => Answer::Failed {
            reason: format!("{e:#}"),
        },
    };
    proto::send(&stream, &answer, &[]).await?;
    Ok(())
}
