//! The messages of `malai/config/1`: one request and one answer per stream.

use serde::{Deserialize, Serialize};

use crate::cluster::EditError;
use crate::cluster::envelope::Envelope;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ConfigRequest {
    /// CM -> machine: here is your config.
    Push { envelope: Envelope },
    /// Machine -> CM: send me my latest config.
    Fetch,
    /// Editor -> CM: send me cluster.toml.
    Download,
    /// Editor -> CM: replace cluster.toml with `text`, if its hash is still
    /// `base_hash` (unless `force`) and `text` validates.
    Upload {
        text: String,
        base_hash: String,
        force: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ConfigAnswer {
    /// The machine holds this version now.
    Ack {
        version: u64,
    },
    /// The request was understood and refused; nothing changed.
    Rejected {
        reason: String,
    },
    /// The peer may not make this request.
    Denied {
        reason: String,
    },
    Config {
        envelope: Envelope,
    },
    /// cluster.toml as it is on the CM, its hash, and the version in force.
    File {
        text: String,
        hash: String,
        version: u64,
    },
    /// The upload is in force as `version`.
    Accepted {
        version: u64,
        hash: String,
    },
    /// The upload was based on an older file; nothing changed.
    Stale {
        current_hash: String,
        version: u64,
    },
    /// The upload does not validate; nothing changed.
    Invalid {
        errors: String,
    },
}

/// What an accepted editing request gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edited {
    /// A download: cluster.toml, its hash, and the version in force.
    File {
        text: String,
        hash: String,
        version: u64,
    },
    /// An upload, in force as `version`.
    Accepted { version: u64, hash: String },
}

impl From<EditError> for ConfigAnswer {
    fn from(e: EditError) -> ConfigAnswer {
        match e {
            EditError::Denied(reason) => ConfigAnswer::Denied { reason },
            EditError::Invalid(errors) => ConfigAnswer::Invalid { errors },
            EditError::Stale {
                current_hash,
                version,
            } => ConfigAnswer::Stale {
                current_hash,
                version,
            },
            EditError::Failed(reason) => ConfigAnswer::Rejected { reason },
        }
    }
}

impl From<Edited> for ConfigAnswer {
    fn from(e: Edited) -> ConfigAnswer {
        match e {
            Edited::File {
                text,
                hash,
                version,
            } => ConfigAnswer::File {
                text,
                hash,
                version,
            },
            Edited::Accepted { version, hash } => ConfigAnswer::Accepted { version, hash },
        }
    }
}

impl ConfigAnswer {
    /// The CM's answer to an editing request, as its typed outcome.
    pub fn into_edit(self) -> Result<Edited, EditError> {
        match self {
            ConfigAnswer::File {
                text,
                hash,
                version,
            } => Ok(Edited::File {
                text,
                hash,
                version,
            }),
            ConfigAnswer::Accepted { version, hash } => Ok(Edited::Accepted { version, hash }),
            ConfigAnswer::Denied { reason } => Err(EditError::Denied(reason)),
            ConfigAnswer::Invalid { errors } => Err(EditError::Invalid(errors)),
            ConfigAnswer::Stale {
                current_hash,
                version,
            } => Err(EditError::Stale {
                current_hash,
                version,
            }),
            ConfigAnswer::Rejected { reason } => Err(EditError::Failed(reason)),
            ConfigAnswer::Ack { .. } | ConfigAnswer::Config { .. } => Err(EditError::Failed(
                "the cluster manager sent an answer that is not about editing".into(),
            )),
        }
    }
}
