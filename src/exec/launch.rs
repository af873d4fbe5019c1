//! Where a granted command starts: through the privileged helper when the
//! daemon has one (`MALAI_HELPER`: the system service, which runs
//! unprivileged), else as a child of this process (a user's daemon, the
//! CLI, a daemon run as root by hand).

use crate::acl::Grant;
use crate::helper::{self, client, proto::Request};
use crate::identity::Id52;

use super::proto::WindowSize;
use crate::command::process::Process;
use crate::command::spawn::{Spec, StdioMode};

/// A command the ACL allowed, and what the helper needs to decide it again.
pub struct Launch<'a> {
    pub cluster: &'a str,
    pub config_version: u64,
    pub peer: &'a Id52,
    /// The argv the peer asked for (the helper decides on it, not on the
    /// grant's expansion).
    pub asked: &'a [String],
    pub grant: &'a Grant,
    /// The user it runs as, when not the grant's (a local caller's own).
    pub username: Option<String>,
    pub env: Vec<(String, String)>,
    pub pty: Option<WindowSize>,
    pub stdio: StdioMode,
    /// A local user who asked the daemon over D-Bus.
    pub local_uid: Option<u32>,
}

/// Starts the command.
pub async fn start(l: Launch<'_>) -> anyhow::Result<Process> {
    let via_helper = !matches!(l.stdio, StdioMode::Inherit);
    if let (Some(socket), true) = (helper::socket(), via_helper) {
        let req = Request {
            cluster: l.cluster.to_owned(),
            config_version: l.config_version,
            peer: l.peer.to_string(),
            argv: l.asked.to_vec(),
            pty: l.pty,
            env: l.env,
            local_uid: l.local_uid,
        };
        let stdio = match (l.pty, l.stdio) {
            (Some(_), _) => client::Stdio::Pty,
            (None, StdioMode::Fds(fds)) => client::Stdio::Fds(fds),
            (None, _) => client::Stdio::Pipes,
        };
        return Ok(client::start(&socket, &req, stdio).await?);
    }
    Process::spawn(
        Spec {
            argv: l.grant.argv.clone(),
            username: l.username.or_else(|| l.grant.username.clone()),
            env: l.env,
            pty: l.pty,
            stdio: l.stdio,
            rule: l.grant.rule.is_some(),
        },
        None,
    )
}

/// The user `grant` runs as here: its own, or, for none, the helper's
/// (root) when the daemon has one, else this process's.
pub fn runs_as(grant: &Grant) -> anyhow::Result<String> {
    match &grant.username {
        Some(user) => Ok(user.clone()),
        None if helper::socket().is_some() => Ok("root".into()),
        None => crate::local_users::user_name(nix::unistd::geteuid().as_raw()),
    }
}
