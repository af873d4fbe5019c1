//! Revocation that bites: a command, shell or forwarded connection is
//! allowed when it starts, and decided again each time a config is put in
//! force (or the one in force expires). `Cluster::revoked` resolves when
//! the new decision is a denial; whoever runs the thing ends it, tells the
//! client, and logs `malai_decision=revoked`.

use super::{Cluster, InForce};
use crate::acl::Decision;

/// Why something that was running is no longer allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// The config version that took it away.
    pub version: u64,
    /// The denial's reason.
    pub reason: String,
}

impl std::fmt::Display for Revoked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "revoked by config v{}: {}", self.version, self.reason)
    }
}

impl Cluster {
    /// Resolves when a config put in force from now on no longer allows
    /// what `decide` decides; never resolves while every new config does.
    pub async fn revoked(&self, decide: impl Fn(&InForce) -> Decision) -> Revoked {
        let mut in_force = self.subscribe();
        in_force.borrow_and_update();
        loop {
            if in_force.changed().await.is_err() {
                // The cluster is going away: its router ends the streams.
                return std::future::pending().await;
            }
            let now = in_force.borrow_and_update().clone();
            if let Decision::Deny(reason) = decide(&now) {
                return Revoked {
                    version: now.version,
                    reason,
                };
            }
        }
    }
}
