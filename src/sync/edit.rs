//! Remote editing of cluster.toml on the CM: download for `config_editors`,
//! and upload with compare-and-swap on the hash it was based on. An
//! accepted upload is validated first, written atomically, gets the next
//! version and is pushed to every machine; a refused one changes nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{Flock, FlockArg};

use super::proto::ConfigAnswer;
use crate::acl::{self, Decision};
use crate::config::{ClusterConfig, FileKind, cluster};
use crate::daemon::cluster::{Event, Shared};
use crate::fsutil;
use crate::home::{CLUSTER_FILE, hash_hex};
use crate::identity::Id52;

/// Whether `peer` is a config editor; logs a refusal.
// The refusal is the answer itself, sent as is; boxing it buys nothing.
#[allow(clippy::result_large_err)]
fn editor_check(shared: &Shared, peer: &Id52, what: &str) -> Result<(), ConfigAnswer> {
    let reason = match shared.host.config() {
        Some(config) => match acl::may_edit_config(&config, peer) {
            Decision::Allow(_) => return Ok(()),
            Decision::Deny(reason) => reason,
        },
        None => "the cluster manager has no config".to_owned(),
    };
    tracing::warn!(malai_cluster = %shared.alias, malai_peer = %peer, "refused config {what} by {peer}: {reason}");
    Err(ConfigAnswer::Denied { reason })
}

fn cluster_path(shared: &Shared) -> PathBuf {
    shared.dir.join(CLUSTER_FILE)
}

/// Who asks for cluster.toml or sends one.
#[derive(Debug, Clone, Copy)]
pub enum Caller {
    /// A peer over `malai/config/1`: must be in `config_editors`.
    Peer(Id52),
    /// A local user on the CM's own D-Bus (root or group malai), who could
    /// edit the file in place anyway.
    Local { uid: u32 },
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Peer(id) => write!(f, "{id}"),
            Caller::Local { uid } => write!(f, "uid {uid} on this device"),
        }
    }
}

impl Caller {
    /// Whether this caller may edit; logs a refusal.
    #[allow(clippy::result_large_err)]
    fn check(&self, shared: &Shared, what: &str) -> Result<(), ConfigAnswer> {
        match self {
            Caller::Peer(id) => editor_check(shared, id, what),
            Caller::Local { .. } => Ok(()),
        }
    }

    fn peer_field(&self) -> String {
        match self {
            Caller::Peer(id) => id.to_string(),
            Caller::Local { .. } => String::new(),
        }
    }
}

pub async fn download(shared: &Arc<Shared>, caller: Caller) -> ConfigAnswer {
    if let Err(refused) = caller.check(shared, "download") {
        return refused;
    }
    let _guard = shared.apply.lock().await;
    match std::fs::read_to_string(cluster_path(shared)) {
        Ok(text) => {
            let version = shared.cm_state.lock().await.version;
            tracing::info!(malai_cluster = %shared.alias, malai_peer = %caller.peer_field(), malai_config_version = version, "{caller} downloaded cluster.toml");
            ConfigAnswer::File {
                hash: hash_hex(text.as_bytes()),
                text,
                version,
            }
        }
        Err(e) => ConfigAnswer::Rejected {
            reason: format!("cannot read cluster.toml: {e}"),
        },
    }
}

/// Validates an uploaded cluster.toml as the CM's own.
pub fn validate_upload(text: &str, cm: &Id52) -> Result<ClusterConfig, String> {
    let path = PathBuf::from("cluster.toml");
    let config = cluster::parse(&path, text, FileKind::Cluster).map_err(|d| d.to_string())?;
    if config.cluster_manager != *cm {
        return Err(format!(
            "cluster.toml:[cluster-manager] id52 is {}, but this cluster's manager is {cm}",
            config.cluster_manager
        ));
    }
    Ok(config)
}

/// What a compare-and-swap write of cluster.toml did.
pub struct Swapped {
    pub config: ClusterConfig,
    pub old_hash: String,
    pub new_hash: String,
}

/// Validates `text` and writes it over `path` if the file's hash is still
/// `base_hash` (or `force`); the refusal is the answer to send.
/// `version` is reported with a stale refusal.
#[allow(clippy::result_large_err)]
pub fn swap_file(
    path: &Path,
    cm: &Id52,
    text: &str,
    base_hash: &str,
    force: bool,
    version: u64,
) -> Result<Swapped, ConfigAnswer> {
    // The daemon (for a remote editor) and the CLI on the CM itself (for a
    // local one) both swap this file: a lock on the cluster directory makes
    // each read-compare-write whole, so neither overwrites the other unseen.
    let _lock = lock_dir(path).map_err(|e| ConfigAnswer::Rejected {
        reason: format!("cannot lock the cluster directory: {e}"),
    })?;
    let current = std::fs::read(path).map_err(|e| ConfigAnswer::Rejected {
        reason: format!("cannot read cluster.toml: {e}"),
    })?;
    let old_hash = hash_hex(&current);
    let config = validate_upload(text, cm).map_err(|errors| ConfigAnswer::Invalid { errors })?;
    if !force && base_hash != old_hash {
        return Err(ConfigAnswer::Stale {
            current_hash: old_hash,
            version,
        });
    }
    // The file first, then the version (by the caller): after a crash in
    // between, start-up sees a hash state.json does not know and bumps it.
    fsutil::write_atomic(path, text.as_bytes(), 0o644).map_err(|e| ConfigAnswer::Rejected {
        reason: format!("cannot write cluster.toml: {e}"),
    })?;
    Ok(Swapped {
        config,
        old_hash,
        new_hash: hash_hex(text.as_bytes()),
    })
}

/// An exclusive lock on the directory holding `file`, until dropped.
fn lock_dir(file: &Path) -> std::io::Result<Flock<std::fs::File>> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    Flock::lock(std::fs::File::open(dir)?, FlockArg::LockExclusive)
        .map_err(|(_, errno)| std::io::Error::from(errno))
}

pub async fn upload(
    shared: &Arc<Shared>,
    caller: Caller,
    text: String,
    base_hash: String,
    force: bool,
) -> ConfigAnswer {
    let peer = caller.peer_field();
    if let Err(refused) = caller.check(shared, "upload") {
        return refused;
    }
    let _guard = shared.apply.lock().await;
    let version = shared.cm_state.lock().await.version;
    let swapped = match swap_file(
        &cluster_path(shared),
        &shared.identity.id52(),
        &text,
        &base_hash,
        force,
        version,
    ) {
        Ok(s) => s,
        Err(refusal) => {
            tracing::warn!(malai_cluster = %shared.alias, malai_peer = %peer, "refused an upload of cluster.toml by {caller}: {refusal:?}");
            return refusal;
        }
    };
    let Swapped {
        config,
        old_hash: current_hash,
        new_hash,
    } = swapped;
    let mut state = shared.cm_state.lock().await;
    state.reconcile(&new_hash);
    if let Err(e) = state.save(&shared.state_path()) {
        tracing::error!(malai_cluster = %shared.alias, "cannot record the new version: {e:#}");
    }
    let version = state.version;
    drop(state);
    *shared.cluster_text.write().expect("text lock") = text;
    shared.host.set_config(Some(config), version);
    shared.announce(Event::ConfigApplied {
        version,
        hash: new_hash.clone(),
    });
    shared.wake.notify_one();
    shared.changed.notify_one();
    tracing::info!(
        malai_cluster = %shared.alias, malai_peer = %peer, malai_config_version = version,
        "{caller} uploaded cluster.toml{}: {current_hash} -> {new_hash}, version {version}",
        if force { " (forced)" } else { "" }
    );
    ConfigAnswer::Accepted {
        version,
        hash: new_hash,
    }
}

/// Sends one editing request to the CM over `conn` and reads its answer.
pub async fn ask_cm(
    conn: &iroh::endpoint::Connection,
    req: &super::proto::ConfigRequest,
) -> anyhow::Result<ConfigAnswer> {
    let (mut send, mut recv) = conn.open_bi().await?;
    crate::p2p::frame::write_msg(&mut send, req).await?;
    send.finish()?;
    Ok(crate::p2p::frame::read_msg(&mut recv).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_swap_waits_for_the_cluster_directory_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CLUSTER_FILE);
        std::fs::write(&path, "old").unwrap();
        let held = lock_dir(&path).unwrap();
        let (tx, rx) = mpsc::channel();
        let p = path.clone();
        let cm = crate::identity::Identity::generate().id52();
        std::thread::spawn(move || {
            let answer = swap_file(&p, &cm, "not toml [", &hash_hex(b"old"), false, 1);
            tx.send(answer.err()).unwrap();
        });
        // Held by another writer: the swap must not read, compare or write.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        drop(held);
        let answer = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(
            matches!(answer, Some(ConfigAnswer::Invalid { .. })),
            "{answer:?}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }
}
