//! Config editing for a CLI on the bus: on the CM the daemon applies an
//! upload itself (under its apply lock, then pushes at once); on a machine
//! it asks the CM over its pooled connection, as this device. Refusals
//! become named D-Bus errors.

use std::sync::Arc;

use super::Error;
use crate::daemon::cluster::Shared;
use crate::home::Role;
use crate::p2p::CONFIG_ALPN;
use crate::sync::edit::{self, Caller};
use crate::sync::proto::{ConfigAnswer, ConfigRequest};

/// The CM's answer to `req` from local user `uid`.
pub async fn request(shared: &Arc<Shared>, uid: u32, req: ConfigRequest) -> ConfigAnswer {
    if shared.role() == Role::ClusterManager {
        let caller = Caller::Local { uid };
        return match req {
            ConfigRequest::Download => edit::download(shared, caller).await,
            ConfigRequest::Upload {
                text,
                base_hash,
                force,
            } => edit::upload(shared, caller, text, base_hash, force).await,
            other => ConfigAnswer::Rejected {
                reason: format!("{other:?} is not an editing request"),
            },
        };
    }
    let cm = shared.cm_id52;
    let addrs = shared.cm_addrs.read().expect("cm addrs").clone();
    tracing::info!(malai_cluster = %shared.alias, "uid {uid} asks the cluster manager for {}", kind(&req));
    let conn = match shared
        .pool
        .get(&shared.endpoint, &cm, &addrs, CONFIG_ALPN)
        .await
    {
        Ok(conn) => conn,
        Err(e) => {
            return ConfigAnswer::Rejected {
                reason: format!(
                    "cannot reach the cluster manager of {:?}: {e:#}",
                    shared.alias
                ),
            };
        }
    };
    match edit::ask_cm(&conn, &req).await {
        Ok(answer) => answer,
        Err(e) => {
            shared.pool.forget(&cm, CONFIG_ALPN).await;
            ConfigAnswer::Rejected {
                reason: format!("the cluster manager of {:?}: {e:#}", shared.alias),
            }
        }
    }
}

fn kind(req: &ConfigRequest) -> &'static str {
    match req {
        ConfigRequest::Download => "a download",
        ConfigRequest::Upload { force: true, .. } => "a forced upload",
        ConfigRequest::Upload { .. } => "an upload",
        _ => "another request",
    }
}

/// A refusal as its named error.
pub fn refusal(answer: ConfigAnswer) -> Error {
    match answer {
        ConfigAnswer::Denied { reason } => Error::Denied(reason),
        ConfigAnswer::Invalid { errors } => Error::Invalid(errors),
        ConfigAnswer::Stale {
            current_hash,
            version,
        } => Error::Stale(format!(
            "cluster.toml changed since that base; it is now version {version} (hash {current_hash})"
        )),
        ConfigAnswer::Rejected { reason } => Error::Failed(reason),
        other => Error::Failed(format!("unexpected answer: {other:?}")),
    }
}
