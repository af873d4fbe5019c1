//! Running a command on this device: spawning it (argv, a clean
//! environment, its own session, pipes or a PTY, another user when root)
//! and the running `Process`, whether this process or the privileged
//! helper started it. Below both the exec host and the helper.

pub mod clone;
pub mod process;
pub mod spawn;

use serde::{Deserialize, Serialize};

/// A terminal's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

/// Whether an environment variable may pass from client to command.
pub fn env_allowed(name: &str) -> bool {
    name == "TERM" || name == "LANG" || name == "COLORTERM" || name.starts_with("LC_")
}
