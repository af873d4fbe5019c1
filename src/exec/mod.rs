//! Remote exec: the protocol, where a granted command starts (here, or
//! through the privileged helper), the host side that serves peers, and the
//! client side. Spawning itself is `command`.

pub mod client;
pub mod launch;
pub mod local;
pub mod proto;
pub mod recorded;
pub mod server;

/// Why a command did not run to its end. The CLI ends with 255 for each but
/// `Local` (as ssh does, malai's own failure), D-Bus names each
/// (`dbus::Error`); neither is decided here.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The ACL refused it.
    #[error("{target} denied the command: {reason}")]
    Denied { target: String, reason: String },
    /// Allowed, but it could not be started.
    #[error("{target} could not run the command: {reason}")]
    NotRun { target: String, reason: String },
    /// The machine could not be reached, or refused the connection.
    #[error("{0}")]
    Unreachable(String),
    /// The connection went away before the command ended.
    #[error("{0}")]
    Lost(String),
    /// It ran, until a config put in force took away the right to run it.
    #[error("{target} ended the command: {reason}")]
    Revoked { target: String, reason: String },
    /// This end's own input or output failed (a closed stdout...).
    #[error(transparent)]
    Local(#[from] std::io::Error),
}
