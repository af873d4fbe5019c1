//! Joining a cluster by invite. The CM's admin runs `malai cluster invite`
//! and passes the ticket (`ticket`) to the new device, which runs `malai
//! machine join TICKET`: it makes its identity for the cluster, dials the
//! CM on `malai/join/1` (the one protocol a CM serves to keys it does not
//! know, see `p2p::gate`) and proves the ticket's secret. The CM checks
//! the invite (`invites`), adds `[machine.NAME]` to cluster.toml through
//! the one commit path, and pushes the new config as for any change.
//!
//! A join asks once per stream; a pending one asks again until approved.
//! Asks are rate-limited per cluster (`JOINS_PER_SECOND`), bodies capped,
//! and nothing else is reachable through a join connection.

pub mod client;
pub mod invites;
pub mod server;
pub mod ticket;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// One ask of a joining device. Its key is the one the connection
/// authenticated, never a field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub invite: String,
    pub secret: String,
    /// The machine name it suggests (its host name); the invite's `--name`
    /// wins.
    pub name: String,
    /// Where the CM may reach it (its fixed UDP port, if it has one).
    #[serde(default)]
    pub addrs: Vec<SocketAddr>,
}

/// The CM's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum JoinAnswer {
    /// In cluster.toml as `machine`, at config `version`.
    Joined { machine: String, version: u64 },
    /// Waiting for `malai cluster invite CLUSTER --approve APPROVAL`.
    Pending { approval: String },
    /// The invite does not admit it; why.
    Refused { reason: String },
    /// Too many asks right now; ask again later.
    Busy { reason: String },
}
