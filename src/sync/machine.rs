//! The machine side of config distribution: answer the CM's pushes with
//! `Cluster::accept`, and ask the CM for the latest config on start.

use std::sync::Arc;
use std::time::Duration;

use super::envelope::Envelope;
use super::proto::{ConfigRequest, FetchAnswer, PROTOCOL, PushAnswer};
use crate::cluster::{AcceptError, Cluster};
use crate::p2p::{CONFIG_ALPN, frame};

/// Applies a config the CM sent (`Cluster::accept`), as the answer to send.
pub async fn apply(cluster: &Cluster, envelope: Envelope) -> PushAnswer {
    match cluster.accept(envelope).await {
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

/// On start, ask the CM for the latest config, retrying with backoff until
/// it answers once; pushes do the rest.
pub async fn fetch_on_start(cluster: Arc<Cluster>) {
    let mut delay = Duration::from_millis(500);
    loop {
        match fetch_once(&cluster).await {
            Ok(()) => return,
            Err(e) => {
                tracing::info!(malai_cluster = %cluster.alias(), "cannot fetch config from the cluster manager yet: {e:#}");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(60));
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
            Ok(_) => Ok(()),
            // The CM is behind what this machine holds (its state.json was
            // lost or restored): its next push is refused with the version
            // held here, and it moves past it.
            Err(AcceptError::NotNewer { offered, current }) => {
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
