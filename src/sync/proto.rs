//! The messages of `malai/config/1`: one request and one answer per stream.

use serde::{Deserialize, Serialize};

use super::envelope::Envelope;

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
