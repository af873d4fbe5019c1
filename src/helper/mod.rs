//! The privileged helper: the only part of the system service that runs as
//! root. The network daemon runs as the user `malai`, sandboxed; to run a
//! command as another user it asks the helper over a Unix socket that only
//! its user may use (`SO_PEERCRED`). The helper decides again, from the
//! signed config on disk and the CM key pinned by root, so a compromised
//! daemon can run only what the config allows some peer; then it starts the
//! command in a control group of its own (the rule's limits, killed whole
//! on disconnect).
//!
//! `proto`: the messages and descriptors on the socket. `pin`: the CM key
//! and highest version per cluster, in a directory only root writes.
//! `check`: the helper's own decision. `cgroup`: a control group per
//! command in the helper's delegated subtree. `unit`: starting a command
//! there, or as a transient unit through systemd's D-Bus API where the
//! subtree cannot apply its limits (or as a plain child: no systemd). `serve`:
//! the helper's loop. `client`: the daemon's side.

pub mod cgroup;
pub mod check;
pub mod client;
pub mod pin;
pub mod proto;
pub mod serve;
pub mod unit;

/// The environment variable that names the helper's socket for the daemon
/// (set by malai.service); unset, the daemon starts commands itself.
pub const SOCKET_ENV: &str = "MALAI_HELPER";

/// The helper's socket, when the daemon is to use one.
pub fn socket() -> Option<std::path::PathBuf> {
    std::env::var_os(SOCKET_ENV)
        .filter(|v| !v.is_empty())
        .map(Into::into)
}
