//! A command for this device itself (`malai cm.company uptime` on the CM):
//! iroh cannot dial its own key, so the CLI (or the daemon, for a CLI on
//! D-Bus) decides with the same ACL, the device's own id52 as the peer, and
//! runs the grant here with the caller's terminal or descriptors.

use crate::acl::{self, Decision, Request};
use crate::config::ClusterConfig;
use crate::exit::{EXEC_FAILED, Failure};
use crate::identity::Id52;

use tokio::sync::mpsc;

use super::proto::{ClientMsg, FORWARDED_SIGNALS};
use super::spawn::{self, Spec, StdioMode};

/// Decides and runs `argv` here with `stdio`; `controls` delivers the
/// user's signals to the command's process group (a command with the
/// caller's own terminal gets them from the terminal instead).
pub async fn run(
    config: &ClusterConfig,
    me: &Id52,
    argv: Vec<String>,
    what: &str,
    stdio: StdioMode,
    env: Vec<(String, String)>,
    mut controls: mpsc::Receiver<ClientMsg>,
) -> anyhow::Result<u8> {
    let request = if argv.is_empty() {
        Request::Shell
    } else {
        Request::Exec(&argv)
    };
    let grant = match acl::decide(config, me, me, request) {
        Decision::Deny(reason) => {
            return Err(
                Failure::new(EXEC_FAILED, format!("{what} denied the command: {reason}")).into(),
            );
        }
        Decision::Allow(grant) => grant,
    };
    tracing::info!("running {:?} on this device: {}", grant.argv, grant.reason);
    let mut spawned = spawn::spawn(Spec {
        argv: grant.argv,
        username: grant.username,
        env,
        pty: None,
        stdio,
    })
    .map_err(|e| {
        Failure::new(
            EXEC_FAILED,
            format!("{what} could not run the command: {e:#}"),
        )
    })?;
    let mut listening = true;
    let status = loop {
        tokio::select! {
            status = spawned.child.wait() => break status?,
            msg = controls.recv(), if listening => match msg {
                Some(ClientMsg::Signal { signal }) if FORWARDED_SIGNALS.contains(&signal) => {
                    if let Ok(sig) = nix::sys::signal::Signal::try_from(signal) {
                        spawn::kill_group(spawned.pgid, sig);
                    }
                }
                Some(_) => {}
                None => listening = false,
            },
        }
    };
    Ok(spawn::exit_code(status))
}
