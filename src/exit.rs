//! Exit codes (DESIGN.md) and the one error type that carries one. The binary
//! maps any error to its code in one place: `code_of`.

use crate::config::Diagnostics;
use crate::exec::ExecError;
use crate::home::InvalidClusterName;

pub const OK: u8 = 0;
pub const FAILURE: u8 = 1;
pub const USAGE: u8 = 2;
pub const UNAVAILABLE: u8 = 69;
pub const DENIED: u8 = 77;
pub const CONFIG: u8 = 78;
/// Exec only: malai itself could not run the command (as ssh does).
pub const EXEC_FAILED: u8 = 255;

/// An error with the exit code it should end the process with.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Failure::new(USAGE, message)
    }
}

/// The exit code for an error: the first `Failure` in its chain decides, a
/// config error is 78, a bad cluster name 2, an exec that malai could not carry out 255 (as ssh
/// does; a failure of this end's own stdio is 1), anything else 1.
pub fn code_of(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return f.code;
        }
        if let Some(e) = cause.downcast_ref::<ExecError>() {
            return match e {
                ExecError::Denied { .. }
                | ExecError::NotRun { .. }
                | ExecError::Unreachable(_)
                | ExecError::Lost(_)
                | ExecError::Revoked { .. } => EXEC_FAILED,
                ExecError::Local(_) => FAILURE,
            };
        }
        if cause.downcast_ref::<Diagnostics>().is_some() {
            return CONFIG;
        }
        if cause.downcast_ref::<InvalidClusterName>().is_some() {
            return USAGE;
        }
    }
    FAILURE
}
