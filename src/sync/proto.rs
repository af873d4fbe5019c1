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
}
