//! The cluster manager's side of `malai/join/1`: read one ask per stream
//! (capped, with a deadline), take a token from the cluster's rate limit,
//! decide with the invite, and for an admitted device append its
//! `[machine.NAME]` to cluster.toml through `Cluster::commit`. Refusals are
//! logged through the gate's rate-limited refusal log, with the invite's id.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler};

use super::invites::{self, Redeem, Redeemed};
use super::{JoinAnswer, JoinRequest};
use crate::cluster::{Change, Cluster};
use crate::config::names;
use crate::fsutil;
use crate::home::Role;
use crate::identity::Id52;
use crate::p2p::frame;

/// Asks all strangers together may make per second (a burst of twice that).
pub const JOINS_PER_SECOND: u32 = 20;
/// The largest ask: an invite id, a secret, a name and a few addresses.
const MAX_ASK: usize = 8 * 1024;
/// How long a join connection may take to ask, and to ask again.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);
/// Asks on one connection (a pending join asks once a second).
const ASKS_PER_CONNECTION: usize = 300;

/// `malai/join/1` for one cluster (a CM).
#[derive(Debug, Clone)]
pub struct JoinHandler {
    cluster: Arc<Cluster>,
    /// A std `Mutex`: held to take a token, never across an `.await`.
    bucket: Arc<Mutex<Bucket>>,
}

impl JoinHandler {
    pub fn new(cluster: Arc<Cluster>) -> JoinHandler {
        JoinHandler {
            cluster,
            bucket: Arc::new(Mutex::new(Bucket::new(JOINS_PER_SECOND))),
        }
    }
}

impl ProtocolHandler for JoinHandler {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let peer = Id52::from_public_key(conn.remote_id());
        for _ in 0..ASKS_PER_CONNECTION {
            let Ok(Ok((mut send, mut recv))) =
                tokio::time::timeout(ASK_TIMEOUT, conn.accept_bi()).await
            else {
                break;
            };
            let ask = frame::read_request::<_, JoinRequest>(&mut recv, MAX_ASK);
            let Ok(Ok(ask)) = tokio::time::timeout(ASK_TIMEOUT, ask).await else {
                self.cluster
                    .gate()
                    .refused(peer, "a join ask that was not one");
                break;
            };
            let answer = self.answer(peer, ask).await;
            if frame::write_msg(&mut send, &answer).await.is_err() {
                break;
            }
            let _ = send.finish();
            let _ = tokio::time::timeout(ASK_TIMEOUT, send.stopped()).await;
        }
        conn.close(0u32.into(), b"done");
        Ok(())
    }
}

impl JoinHandler {
    async fn answer(&self, peer: Id52, ask: JoinRequest) -> JoinAnswer {
        let cluster = &self.cluster;
        if cluster.role() != Role::ClusterManager {
            return JoinAnswer::Refused {
                reason: "this device is not the cluster manager".into(),
            };
        }
        if !self
            .bucket
            .lock()
            .expect("bucket lock")
            .take(Instant::now())
        {
            return JoinAnswer::Busy {
                reason: "too many joins right now; ask again in a moment".into(),
            };
        }
        let config = cluster.config();
        if let Some((alias, _)) = config.as_deref().and_then(|c| c.machine_by_id52(&peer)) {
            // Its answer was lost: it joined already.
            return JoinAnswer::Joined {
                machine: alias.to_owned(),
                version: cluster.version(),
            };
        }
        let asked_name =
            if names::name_error(&ask.name).is_none() && !names::looks_like_id52(&ask.name) {
                ask.name.as_str()
            } else {
                "machine"
            };
        let id52 = peer.to_string();
        let redeem = Redeem {
            invite: &ask.invite,
            secret: &ask.secret,
            id52: &id52,
            name: asked_name,
            addrs: &ask.addrs,
        };
        let dir = cluster.cluster_path();
        let dir = dir.parent().expect("cluster.toml is in its directory");
        let outcome = match fsutil::blocking(|| {
            invites::redeem(dir, &redeem, crate::state::unix_now())
        }) {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(malai_cluster = %cluster.alias(), "cannot read the invites: {e:#}");
                return JoinAnswer::Busy {
                    reason: "the cluster manager cannot read its invites".into(),
                };
            }
        };
        let name = match outcome {
            Err(reason) => {
                cluster
                    .gate()
                    .refused(peer, &format!("join refused: {reason}"));
                return JoinAnswer::Refused { reason };
            }
            Ok(Redeemed::Pending { approval, fresh }) => {
                if fresh {
                    tracing::warn!(
                        malai_cluster = %cluster.alias(), malai_peer = %peer,
                        "{peer} asks to join as {asked_name:?} with invite {}: approve with `malai cluster invite {} --approve {approval}`",
                        ask.invite, cluster.alias()
                    );
                }
                return JoinAnswer::Pending { approval };
            }
            Ok(Redeemed::Admit { name }) => name,
        };
        let name = free_name(config.as_deref(), &name);
        let mut text = format!(
            "# Joined with invite {}.\n[machine.{name}]\nid52 = \"{peer}\"\n",
            ask.invite
        );
        if !ask.addrs.is_empty() {
            let addrs: Vec<String> = ask.addrs.iter().map(|a| format!("\"{a}\"")).collect();
            text.push_str(&format!("addrs = [{}]\n", addrs.join(", ")));
        }
        match cluster.commit(Change::Append { text }).await {
            Ok(committed) => {
                tracing::warn!(
                    malai_cluster = %cluster.alias(), malai_peer = %peer, malai_config_version = committed.version,
                    "machine {name} ({peer}) joined with invite {}: config version {}", ask.invite, committed.version
                );
                JoinAnswer::Joined {
                    machine: name,
                    version: committed.version,
                }
            }
            Err(e) => {
                let _ = fsutil::blocking(|| invites::give_back(dir, &ask.invite, &id52));
                tracing::error!(malai_cluster = %cluster.alias(), malai_peer = %peer, "could not add machine {name}: {e}");
                JoinAnswer::Refused {
                    reason: format!("the cluster manager could not add the machine: {e}"),
                }
            }
        }
    }
}

/// `name`, or `name-2`, `name-3`... when a machine has it already.
fn free_name(config: Option<&crate::config::ClusterConfig>, name: &str) -> String {
    let taken =
        |n: &str| config.is_some_and(|c| c.machines.contains_key(n) || c.groups.contains_key(n));
    if !taken(name) {
        return name.to_owned();
    }
    (2..)
        .map(|i| format!("{name}-{i}"))
        .find(|n| !taken(n))
        .expect("some suffix is free")
}

/// A token bucket: `rate` tokens a second, up to twice that held.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl Bucket {
    fn new(rate: u32) -> Bucket {
        Bucket {
            rate: f64::from(rate),
            tokens: f64::from(rate) * 2.0,
            at: None,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        if let Some(at) = self.at {
            let refill = now.duration_since(at).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.rate * 2.0);
        }
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let mut b = Bucket::new(10);
        let t0 = Instant::now();
        assert_eq!((0..25).filter(|_| b.take(t0)).count(), 20);
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(100)));
    }
}
