//! Recording an exec session (`record` on the machine or rule): asked of
//! the recorder before the command starts; `required` refuses the session
//! when the recorder cannot take it, and ends it when the recording
//! breaks, as a revocation would. Copies and subsystems are file
//! transfers: logged, never recorded.

use crate::acl::Grant;
use crate::cluster::{Cluster, Revoked};
use crate::config::Record;
use crate::identity::Id52;
use crate::record::Session;
use crate::record::send::{self, Recording};

use super::proto::WindowSize;

/// The recording of a session `grant` allows, when its policy asks for
/// one; the reason to refuse the session when it is required and the
/// recorder cannot take it.
///
/// `(recordable, peer, config_version, pty)`: whether the request is a
/// session at all (a copy or a subsystem is not), who asked, under which
/// config, on which terminal.
pub async fn start(
    cluster: &Cluster,
    grant: &Grant,
    (recordable, peer, config_version, pty): (bool, Id52, u64, Option<WindowSize>),
) -> Result<Option<Recording>, String> {
    let policy = grant.recording;
    if !recordable || policy.record() == Record::Off {
        return Ok(None);
    }
    let machine = cluster
        .config()
        .and_then(|c| {
            c.machine_by_id52(&cluster.id52())
                .map(|(a, _)| a.to_owned())
        })
        .unwrap_or_default();
    let session = Session {
        cluster: cluster.alias().to_owned(),
        machine,
        peer: peer.to_string(),
        config_version,
        argv: grant.argv.clone(),
        pty: pty.is_some(),
        input: policy.input(),
    };
    match send::open(cluster, session, pty).await {
        Ok(recording) => Ok(Some(recording)),
        Err(why) if policy.record() == Record::Required => Err(format!(
            "this session must be recorded (record = \"required\"), and {why}"
        )),
        Err(why) => {
            tracing::warn!(malai_cluster = %cluster.alias(), malai_peer = %peer, "not recorded (record = \"on\"): {why}");
            Ok(None)
        }
    }
}

/// `revoked`, or, when the recording is required, its breaking, as the
/// revocation of the session at `version`.
pub async fn revoked_or_broken(
    revoked: impl std::future::Future<Output = Revoked>,
    broken: Option<impl std::future::Future<Output = String>>,
    version: u64,
) -> Revoked {
    let Some(broken) = broken else {
        return revoked.await;
    };
    tokio::select! {
        r = revoked => r,
        why = broken => Revoked {
            version,
            reason: format!("the recording this session requires broke: {why}"),
        },
    }
}
