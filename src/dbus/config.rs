//! Config editing for a CLI on the bus: on the CM the daemon commits an
//! upload itself (`Cluster::commit`, then pushes at once); on a machine it
//! asks the CM over its pooled connection, as this device.

use super::Error;
use crate::cluster::{Cluster, EditError};
use crate::home::Role;
use crate::p2p::CONFIG_ALPN;
use crate::sync::edit::{self, Caller};
use crate::sync::proto::{ConfigRequest, Edited};

/// The CM's answer to the editing request `req` from local user `uid`.
pub async fn request(cluster: &Cluster, uid: u32, req: ConfigRequest) -> Result<Edited, EditError> {
    if cluster.role() == Role::ClusterManager {
        let caller = Caller::Local { uid };
        return match req {
            ConfigRequest::Download => {
                edit::download(cluster, caller)
                    .await
                    .map(|(text, hash, version)| Edited::File {
                        text,
                        hash,
                        version,
                    })
            }
            ConfigRequest::Upload {
                text,
                base_hash,
                force,
            } => edit::upload(cluster, caller, text, base_hash, force)
                .await
                .map(|c| Edited::Accepted {
                    version: c.version,
                    hash: c.hash,
                }),
            ConfigRequest::Push { .. } | ConfigRequest::Fetch => Err(EditError::Failed(format!(
                "{} is not an editing request",
                kind(&req)
            ))),
        };
    }
    let cm = cluster.cm_id52();
    tracing::info!(malai_cluster = %cluster.alias(), "uid {uid} asks the cluster manager for {}", kind(&req));
    let conn = cluster
        .pool()
        .get(cluster.endpoint(), &cm, &cluster.cm_addrs(), CONFIG_ALPN)
        .await
        .map_err(|e| {
            EditError::Failed(format!(
                "cannot reach the cluster manager of {:?}: {e:#}",
                cluster.alias()
            ))
        })?;
    match edit::ask_cm(&conn, &req).await {
        Ok(answer) => answer.into_edit(),
        Err(e) => {
            cluster.pool().forget(&cm, CONFIG_ALPN).await;
            Err(EditError::Failed(format!(
                "the cluster manager of {:?}: {e:#}",
                cluster.alias()
            )))
        }
    }
}

fn kind(req: &ConfigRequest) -> &'static str {
    match req {
        ConfigRequest::Download => "a download",
        ConfigRequest::Upload { force: true, .. } => "a forced upload",
        ConfigRequest::Upload { .. } => "an upload",
        ConfigRequest::Push { .. } => "a push",
        ConfigRequest::Fetch => "a fetch",
    }
}

/// A refusal as its named error: the one place a config-edit error
/// becomes a D-Bus error.
impl From<EditError> for Error {
    fn from(e: EditError) -> Error {
        match e {
            EditError::Denied(reason) => Error::Denied(reason),
            EditError::Invalid(errors) => Error::Invalid(errors),
            stale @ EditError::Stale { .. } => Error::Stale(stale.to_string()),
            EditError::Failed(reason) => Error::Failed(reason),
        }
    }
}
