//! A command for this device itself (`malai cm.company uptime` on the CM):
//! iroh cannot dial its own key, so the CLI decides with the same ACL, the
//! device's own id52 as the peer, and runs the grant here with the caller's
//! terminal.

use crate::acl::{self, Decision, Request};
use crate::config::ClusterConfig;
use crate::exit::{EXEC_FAILED, Failure};
use crate::identity::Id52;

use super::proto::env_allowed;
use super::spawn::{self, Spec};

pub async fn run(
    config: &ClusterConfig,
    me: &Id52,
    argv: Vec<String>,
    what: &str,
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
        env: std::env::vars().filter(|(k, _)| env_allowed(k)).collect(),
        pty: None,
        inherit_stdio: true,
    })
    .map_err(|e| {
        Failure::new(
            EXEC_FAILED,
            format!("{what} could not run the command: {e:#}"),
        )
    })?;
    let status = spawned.child.wait().await?;
    Ok(spawn::exit_code(status))
}
