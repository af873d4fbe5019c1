//! The machine side of config distribution: answer the CM's pushes with
//! `Cluster::accept`, ask the CM for the latest config on start, and, when
//! the config sets `max_config_age`, ask again often enough that it stays
//! fresh while the CM answers (`Cluster::heard_from_cm`).

use std::sync::Arc;
use std::time::Duration;

use super::envelope::Envelope;
use super::proto::{ConfigRequest, FetchAnswer, PROTOCOL, PushAnswer};
use crate::cluster::{AcceptError, Cluster, InForce};
use crate::p2p::{CONFIG_ALPN, frame};

/// Applies a config the CM sent (`Cluster::accept`), as the answer to send.
pub async fn apply(cluster: &Cluster, envelope: Envelope) -> PushAnswer {
    let accepted = cluster.accept(envelope).await;
    if accepted.is_ok() {
        cluster.heard_from_cm();
    }
    match accepted {
        Ok(version) => PushAnswer::Ack {
            version,
            protocol: Some(PROTOCOL),
        },
        Err(refusal) => PushAnswer::Rejected {
            holds: match refusal {
                AcceptError::NotNewer { current, .. } => Some(current),
                AcceptError::Unverified(_) | AcceptError::Invalid(_) | AcceptError::Failed(_) => {
                    None
                }
            },
            reason: refusal.to_string(),
        },
    }
}

/// How often a machine whose config sets `max_config_age` asks its CM,
/// as a fraction of that age: three tries before it expires.
const REFRESHES_PER_AGE: u32 = 4;

/// On start, ask the CM for the latest config, retrying with backoff until
/// it answers; pushes do the rest. With `max_config_age`, keep asking every
/// quarter of it (and retry at least that often), so that the config
/// expires only when the CM has been out of reach for that long. Runs for
/// the life of the cluster, beside `Cluster::watch_config_age`.
pub async fn follow_cm(cluster: Arc<Cluster>) {
    let mut in_force = cluster.subscribe();
    let me = cluster.id52();
    // The CM said farewell: it refuses this key now (a config that lists
    // it again arrives by push).
    let removed = |f: &InForce| {
        f.config
            .as_ref()
            .is_some_and(|c| c.received_version.is_some() && c.machine_by_id52(&me).is_none())
    };
    let max_age = |f: &InForce| f.config.as_ref().and_then(|c| c.max_config_age);
    let mut delay = Duration::from_millis(500);
    loop {
        if in_force.wait_for(|f| !removed(f)).await.is_err() {
            return;
        }
        let answered = match fetch_once(&cluster).await {
            Ok(()) => true,
            Err(e) => {
                tracing::info!(malai_cluster = %cluster.alias(), "cannot fetch config from the cluster manager: {e:#}");
                false
            }
        };
        let age = max_age(&in_force.borrow_and_update());
        let refresh = age.map(|age| age / REFRESHES_PER_AGE);
        if answered {
            delay = Duration::from_millis(500);
        }
        let wait = match (answered, refresh) {
            (true, None) => None,
            (true, Some(refresh)) => Some(refresh),
            (false, refresh) => Some(refresh.map_or(delay, |r| r.min(delay))),
        };
        if !answered {
            delay = (delay * 2).min(Duration::from_secs(60));
        }
        // A config that sets, changes or drops the age, or says farewell,
        // is looked at again at once; any other came by push and needs no
        // fetch.
        let looked_again = in_force.wait_for(|f| max_age(f) != age || removed(f));
        let gone = match wait {
            Some(wait) => tokio::select! {
                () = tokio::time::sleep(wait) => false,
                r = looked_again => r.is_err(),
            },
            None => looked_again.await.is_err(),
        };
        if gone {
            return;
        }
    }
}

async fn fetch_once(cluster: &Cluster) -> anyhow::Result<()> {
    let addrs = cluster.cm_addrs();
    let conn = cluster
        .pool()
        .get(cluster.endpoint(), &cluster.cm_id52(), &addrs, CONFIG_ALPN)
        .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let fetch = ConfigRequest::Fetch {
        protocol: Some(PROTOCOL),
    };
    frame::write_msg(&mut send, &fetch).await?;
    send.finish()?;
    match frame::read_msg::<_, FetchAnswer>(&mut recv).await? {
        FetchAnswer::Config { envelope } => match cluster.accept(envelope).await {
            // Nothing newer than what this machine holds: up to date.
            Ok(_) => {
                cluster.heard_from_cm();
                Ok(())
            }
            // The CM is behind what this machine holds (its state.json was
            // lost or restored): its next push is refused with the version
            // held here, and it moves past it.
            Err(AcceptError::NotNewer { offered, current }) => {
                cluster.heard_from_cm();
                if offered < current {
                    tracing::warn!(
                        malai_cluster = %cluster.alias(), malai_peer = %cluster.cm_id52(),
                        "the cluster manager offers config version {offered}, but this machine holds {current}: its state was lost or restored; waiting for it to move past"
                    );
                }
                Ok(())
            }
            Err(e) => anyhow::bail!("could not apply the fetched config: {e}"),
        },
        FetchAnswer::Denied { reason } | FetchAnswer::Rejected { reason } => {
            // Not listed (yet): the CM pushes when the admin adds us.
            tracing::info!(malai_cluster = %cluster.alias(), "cluster manager has no config for us: {reason}");
            Ok(())
        }
    }
}
