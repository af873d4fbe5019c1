//! Config editing for a CLI on the bus: on the CM the daemon commits an
//! upload itself (`Cluster::commit`, then pushes at once); on a machine it
//! asks the CM over its pooled connection, as this device.

use serde::de::DeserializeOwned;

use super::Error;
use crate::cluster::{Cluster, EditError};
use crate::home::Role;
use crate::p2p::CONFIG_ALPN;
use crate::sync::edit::{self, Caller};
use crate::sync::proto::{ConfigRequest, DownloadAnswer, Downloaded, UploadAnswer, Uploaded};

/// cluster.toml as the CM has it, for local user `uid`.
pub async fn download(cluster: &Cluster, uid: u32) -> Result<Downloaded, EditError> {
    if cluster.role() == Role::ClusterManager {
        return edit::download(cluster, Caller::Local { uid }).await;
    }
    tracing::info!(malai_cluster = %cluster.alias(), "uid {uid} asks the cluster manager for cluster.toml");
    ask_cm::<DownloadAnswer>(cluster, &ConfigRequest::Download)
        .await?
        .into()
}

/// Uploads `text` on `base_hash` (or `force`) for local user `uid`.
pub async fn upload(
    cluster: &Cluster,
    uid: u32,
    text: String,
    base_hash: String,
    force: bool,
) -> Result<Uploaded, EditError> {
    if cluster.role() == Role::ClusterManager {
        return edit::upload(cluster, Caller::Local { uid }, text, base_hash, force).await;
    }
    tracing::info!(malai_cluster = %cluster.alias(), "uid {uid} sends the cluster manager {}", if force { "a forced upload" } else { "an upload" });
    let req = ConfigRequest::Upload {
        text,
        base_hash,
        force,
    };
    ask_cm::<UploadAnswer>(cluster, &req).await?.into()
}

/// Asks the CM over the cluster's pooled connection, as this device; a
/// connection that failed is dropped from the pool.
async fn ask_cm<A: DeserializeOwned>(
    cluster: &Cluster,
    req: &ConfigRequest,
) -> Result<A, EditError> {
    let cm = cluster.cm_id52();
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
    match edit::ask_cm(&conn, req).await {
        Ok(answer) => Ok(answer),
        Err(e) => {
            cluster.pool().forget(&cm, CONFIG_ALPN).await;
            Err(EditError::Failed(format!(
                "the cluster manager of {:?}: {e:#}",
                cluster.alias()
            )))
        }
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
