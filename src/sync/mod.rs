//! Config distribution over `malai/config/1`: the CM pushes each machine its
//! personalized config in a signed envelope and retries with backoff; a
//! machine accepts only from its CM, only a higher version, only after
//! verifying, writes atomically and acknowledges.
//!
//! Who may send what is decided in one exhaustive match in `ConfigHandler`.

pub mod cm;
pub mod edit;
pub mod handover;
pub mod machine;
pub mod proto;
pub mod rotate;

pub use crate::cluster::envelope;

use std::sync::Arc;

use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler};

use crate::cluster::Cluster;
use crate::home::Role;
use crate::identity::Id52;
use crate::p2p::frame;
use proto::{
    Answer, ConfigRequest, DownloadAnswer, FetchAnswer, HandoverAnswer, PushAnswer, RotateAnswer,
    Unreadable, UploadAnswer,
};

#[derive(Debug, Clone)]
pub struct ConfigHandler {
    pub cluster: Arc<Cluster>,
}

impl ProtocolHandler for ConfigHandler {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let peer = Id52::from_public_key(conn.remote_id());
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let Some(permit) = self.cluster.gate().admit_stream(peer, &mut send) else {
                continue;
            };
            let cluster = self.cluster.clone();
            tokio::spawn(async move {
                let _permit = permit;
                // An upload carries a whole cluster.toml: the full frame cap.
                let request = frame::read_request::<_, ConfigRequest>(&mut recv, frame::MAX_FRAME);
                let answer = match request.await {
                    Ok(req) => answer(&cluster, peer, req).await,
                    Err(e) => Answer::Unreadable(Unreadable::Rejected {
                        reason: format!("bad request: {e}"),
                    }),
                };
                if frame::write_msg(&mut send, &answer).await.is_ok() {
                    let _ = send.finish();
                    let _ = send.stopped().await;
                }
                // Handed over: the daemon restarts this cluster on the new
                // key, now that the old one has its answer.
                if matches!(answer, Answer::Handover(HandoverAnswer::Accepted { .. })) {
                    cluster.ask_daemon_to_look();
                }
            });
        }
        Ok(())
    }
}

/// Every request type with the rule that authorizes it; no catch-all arm.
async fn answer(cluster: &Cluster, peer: Id52, req: ConfigRequest) -> Answer {
    let role = cluster.role();
    let not_cm = "this device is not the cluster manager";
    match req {
        // Only this cluster's manager may push, and only to a machine.
        ConfigRequest::Push { envelope } => Answer::Push(match role {
            Role::Machine | Role::Waiting if peer == cluster.cm_id52() => {
                machine::apply(cluster, envelope).await
            }
            Role::Machine | Role::Waiting => {
                tracing::warn!(
                    malai_cluster = %cluster.alias(), malai_peer = %peer,
                    "refused a config push from {peer}: not the cluster manager {}", cluster.cm_id52()
                );
                PushAnswer::Denied {
                    reason: "only the cluster manager may push config".into(),
                }
            }
            Role::ClusterManager => {
                tracing::warn!(malai_cluster = %cluster.alias(), malai_peer = %peer, "refused a config push to the cluster manager");
                PushAnswer::Denied {
                    reason: "this device is the cluster manager; it takes no pushed config".into(),
                }
            }
        }),
        // Only config_editors may download or upload, and only on the CM.
        ConfigRequest::Download => Answer::Download(match role {
            Role::ClusterManager => edit::download(cluster, edit::Caller::Peer(peer))
                .await
                .into(),
            Role::Machine | Role::Waiting => DownloadAnswer::Denied {
                reason: not_cm.into(),
            },
        }),
        ConfigRequest::Upload {
            text,
            base_hash,
            force,
        } => Answer::Upload(match role {
            Role::ClusterManager => {
                let caller = edit::Caller::Peer(peer);
                edit::upload(cluster, caller, text, base_hash, force)
                    .await
                    .into()
            }
            Role::Machine | Role::Waiting => UploadAnswer::Denied {
                reason: not_cm.into(),
            },
        }),
        // Only a machine listed in cluster.toml may rotate its own key, on
        // the CM, proving the new key.
        ConfigRequest::Rotate { new_id52, proof } => Answer::Rotate(match role {
            Role::ClusterManager => rotate::rotate(cluster, peer, &new_id52, &proof).await,
            Role::Machine | Role::Waiting => RotateAnswer::Denied {
                reason: not_cm.into(),
            },
        }),
        // Only the CM key this machine knows may hand the cluster over to
        // another key, along links each signed by the key it leaves.
        ConfigRequest::Handover { chain } => Answer::Handover(match role {
            Role::Machine | Role::Waiting if peer == cluster.cm_id52() => {
                match cluster.take_handover(&chain).await {
                    Ok(cm) => HandoverAnswer::Accepted { cm: cm.to_string() },
                    Err(reason) => {
                        tracing::warn!(
                            malai_cluster = %cluster.alias(), malai_peer = %peer,
                            "refused a handover of the cluster manager's key: {reason}"
                        );
                        HandoverAnswer::Rejected { reason }
                    }
                }
            }
            Role::Machine | Role::Waiting => {
                tracing::warn!(
                    malai_cluster = %cluster.alias(), malai_peer = %peer,
                    "refused a handover from {peer}: not the cluster manager {}", cluster.cm_id52()
                );
                HandoverAnswer::Denied {
                    reason: "only the cluster manager may hand the cluster over".into(),
                }
            }
            Role::ClusterManager => HandoverAnswer::Denied {
                reason: "this device is the cluster manager".into(),
            },
        }),
        // Only a machine listed in cluster.toml may fetch, and only its own.
        ConfigRequest::Fetch { protocol } => Answer::Fetch(match role {
            Role::ClusterManager => cm::serve_fetch(cluster, peer, protocol.unwrap_or(1)).await,
            Role::Machine | Role::Waiting => FetchAnswer::Denied {
                reason: not_cm.into(),
            },
        }),
    }
}
