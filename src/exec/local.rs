//! A command for this device itself (`malai cm.company uptime` on the CM):
//! iroh cannot dial its own key, so the CLI (or the daemon, for a CLI on
//! D-Bus) decides with the same ACL, the device's own id52 as the peer, and
//! runs the grant here with the caller's terminal or descriptors.

use crate::acl::{self, Decision, Request};
use crate::cluster::Revoked;
use crate::config::ClusterConfig;

use tokio::sync::mpsc;

use super::ExecError;
use super::launch::{self, Launch};
use super::proto::{ClientMsg, FORWARDED_SIGNALS};
use crate::command::spawn::StdioMode;

/// Who asked.
pub struct Caller<'a> {
    /// For the audit lines and the ACL: the same fields as a peer's command
    /// on the exec host, with the device's own id52 as the peer and the
    /// local user's uid.
    pub who: crate::audit::Who<'a>,
    /// A local user who asked through the daemon and is neither root nor
    /// the daemon's own user: what no command rule grants runs as that
    /// user, never as the daemon's (README, "Who may do what on the
    /// device"). `None`: the caller runs as itself already (the CLI), or is
    /// root.
    pub unprivileged_uid: Option<u32>,
}

/// Decides and runs `argv` here with `stdio`; `controls` delivers the
/// user's signals to the command's process group (a command with the
/// caller's own terminal gets them from the terminal instead). When
/// `revoked` resolves (the daemon: a config put in force took the right
/// away) the command is killed.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    config: &ClusterConfig,
    caller: &Caller<'_>,
    argv: Vec<String>,
    what: &str,
    stdio: StdioMode,
    env: Vec<(String, String)>,
    mut controls: mpsc::Receiver<ClientMsg>,
    revoked: impl std::future::Future<Output = Revoked>,
) -> Result<u8, ExecError> {
    let asked = argv.clone();
    let request = if argv.is_empty() {
        Request::Shell
    } else {
        Request::Exec(&argv)
    };
    let (who, me) = (caller.who, caller.who.peer);
    let grant = match acl::decide(config, me, me, request) {
        Decision::Deny(reason) => {
            crate::audit::command(who, &argv, false, crate::audit::Decision::Denied(&reason));
            return Err(ExecError::Denied {
                target: what.to_owned(),
                reason,
            });
        }
        Decision::Allow(grant) => grant,
    };
    let not_run = |reason: String| ExecError::NotRun {
        target: what.to_owned(),
        reason,
    };
    let username = match (caller.unprivileged_uid, &grant.rule) {
        (Some(uid), None) => {
            Some(crate::local_users::user_name(uid).map_err(|e| not_run(format!("{e:#}")))?)
        }
        (Some(_), Some(_)) | (None, _) => grant.username.clone(),
    };
    let reason = format!(
        "{} (runs as {})",
        grant.reason,
        username.as_deref().unwrap_or("the daemon's user")
    );
    crate::audit::command(
        who,
        &grant.argv,
        false,
        crate::audit::Decision::Allowed(&reason),
    );
    let argv = grant.argv.clone();
    let mut spawned = launch::start(Launch {
        cluster: who.cluster,
        config_version: who.config_version,
        peer: me,
        asked: &asked,
        grant: &grant,
        username,
        env,
        pty: None,
        stdio,
        local_uid: caller.unprivileged_uid,
    })
    .await
    .map_err(|e| not_run(format!("{e:#}")))?;
    let mut listening = true;
    tokio::pin!(revoked);
    let code = loop {
        tokio::select! {
            code = spawned.wait() => break code?,
            revoked = &mut revoked => {
                spawned.control.kill();
                let _ = spawned.wait().await;
                let why = revoked.to_string();
                let who = crate::audit::Who {
                    config_version: revoked.version,
                    ..who
                };
                crate::audit::command(who, &argv, false, crate::audit::Decision::Revoked(&why));
                return Err(ExecError::Revoked {
                    target: what.to_owned(),
                    reason: why,
                });
            }
            msg = controls.recv(), if listening => match msg {
                Some(ClientMsg::Signal { signal }) if FORWARDED_SIGNALS.contains(&signal) => {
                    if let Ok(sig) = nix::sys::signal::Signal::try_from(signal) {
                        spawned.control.signal(sig);
                    }
                }
                Some(_) => {}
                None => listening = false,
            },
        }
    };
    crate::audit::command(who, &argv, false, crate::audit::Decision::Exited(code));
    Ok(code)
}
