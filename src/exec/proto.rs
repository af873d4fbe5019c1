//! The messages of `malai/exec/1`. One bidirectional stream per command: the
//! client sends an `ExecRequest`, the host answers `Started`, `Denied` or
//! `Failed`; then stdin/stdout/stderr flow as data frames, with control
//! messages for EOF, signals, window size and the exit status.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The argv to run; empty for an interactive shell.
    pub argv: Vec<String>,
    /// The client's TERM, LANG and LC_*; the host filters them again.
    pub env: Vec<(String, String)>,
    /// Run on a PTY of this size (interactive shells).
    pub pty: Option<WindowSize>,
    /// The local user on the calling device who asked (through its daemon,
    /// or running the CLI): that device's claim, logged as such by the host,
    /// never an identity it decides on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf: Option<OnBehalf>,
    /// `malai cp`: instead of `argv`, the host runs its own copy helper
    /// (`copy::helper`) for this operation, decided as a command of a peer
    /// that may run any command there (`acl::copy`). A host that does not
    /// know the field runs `argv`, which the client sets to a program that
    /// does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<CopyOp>,
    /// What an ssh-style command line asked beyond the argv (protocol 7).
    #[serde(flatten)]
    pub ssh: SshAsk,
}

/// `malai -l USER` and `malai -s sftp`, as tools that run "an ssh" pass
/// them. A host before protocol 7 ignores both: it runs the argv as its
/// ACL says, which for a subsystem the client sets to a program that does
/// not exist.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshAsk {
    /// Refuse unless the ACL runs the command as this user: malai never
    /// switches to a user the ACL did not choose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Run this subsystem (only `sftp`: the machine's `sftp_server`) instead
    /// of the argv, decided as that program would be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsystem: Option<String>,
}

/// The argv sent with a subsystem, for a host that does not know the field.
pub const OLD_HOST_SUBSYSTEM_ARGV: &str = "malai-subsystem-needs-protocol-7";

pub use crate::audit::OnBehalf;
pub use crate::copy::CopyOp;

pub use crate::command::{WindowSize, env_allowed};

/// Control messages from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum HostMsg {
    Started,
    /// The ACL refused the request.
    Denied {
        reason: String,
    },
    /// Allowed, but the host could not run it.
    Failed {
        reason: String,
    },
    /// The command ended: its exit code, or 128+N for signal N.
    Exit {
        code: u8,
    },
    /// A config put in force took away the right to run it; it was
    /// killed. The reason names the config version.
    Revoked {
        reason: String,
    },
}

/// Control messages from the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ClientMsg {
    /// No more stdin.
    Eof,
    /// Deliver this signal to the command's process group.
    Signal {
        signal: i32,
    },
    Resize(WindowSize),
}

/// Signals a client may deliver; anything else is ignored.
pub const FORWARDED_SIGNALS: &[i32] = &[1, 2, 3, 15]; // HUP, INT, QUIT, TERM

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_allow_list() {
        assert!(env_allowed("TERM"));
        assert!(env_allowed("LC_ALL"));
        assert!(!env_allowed("LD_PRELOAD"));
        assert!(!env_allowed("PATH"));
        assert!(!env_allowed("BASH_ENV"));
    }

    /// The first release's request, as its hosts parse what this build
    /// sends: the claim is an optional field they ignore.
    #[derive(Debug, Deserialize)]
    struct FirstRequest {
        argv: Vec<String>,
    }

    #[test]
    fn a_first_release_host_reads_a_request_with_a_claim() {
        let request = ExecRequest {
            argv: vec!["id".into()],
            env: Vec::new(),
            pty: None,
            on_behalf: Some(OnBehalf {
                uid: 1000,
                user: Some("alice".into()),
            }),
            copy: None,
            ssh: SshAsk::default(),
        };
        let json = serde_json::to_value(&request).unwrap();
        let read: FirstRequest = serde_json::from_value(json).unwrap();
        assert_eq!(read.argv, ["id"]);
        let without = ExecRequest {
            on_behalf: None,
            ..request
        };
        let json = serde_json::to_value(&without).unwrap();
        assert!(json.get("on_behalf").is_none(), "{json}");
        assert!(json.get("user").is_none(), "{json}");
        let asking = ExecRequest {
            ssh: SshAsk {
                user: Some("git".into()),
                subsystem: Some("sftp".into()),
            },
            ..without
        };
        let json = serde_json::to_string(&asking).unwrap();
        let back: ExecRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(back.ssh, asking.ssh, "{json}");
        let read: FirstRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(read.argv, ["id"]);
    }
}
