//! The one way a cluster manager puts a config in force, for start-up,
//! rescan, upload, and the CLI when no daemon runs: under the cluster
//! directory's lock, read cluster.toml as it is now (a rescan never puts
//! bytes it read earlier in force), compare-and-swap and write an upload,
//! validate, then give the bytes their version in state.json (the file
//! first: after a crash in between, the next commit sees a hash the ledger
//! does not know and bumps it). `Cluster::commit` then swaps the config in
//! force, announces it and wakes the pusher.

use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::Cluster;
use crate::config::{ClusterConfig, FileKind};
use crate::fsutil;
use crate::home::{CLUSTER_FILE, hash_hex};
use crate::identity::Id52;
use crate::state::CmState;

/// The copy of cluster.toml as last put in force, beside it.
pub const IN_FORCE_FILE: &str = "committed.toml";

/// What to commit.
#[derive(Debug, Clone)]
pub enum Change {
    /// cluster.toml as it is on disk (start-up, rescan).
    Disk,
    /// New bytes for cluster.toml, if its hash is still `base_hash` (or
    /// `force`); validated before anything is written.
    Upload {
        text: String,
        base_hash: String,
        force: bool,
    },
    /// cluster.toml as it is on disk, at a version above `holds`: a
    /// machine holds that version already, so state.json was lost or
    /// restored from an old copy; every machine would refuse anything
    /// lower as "not newer", forever.
    PastMachine { machine: String, holds: u64 },
    /// cluster.toml as it is on disk with `text` appended (a machine that
    /// joined by invite); validated before anything is written.
    Append { text: String },
    /// cluster.toml as it is on disk with every `old` id52 written as
    /// `new` (a machine that rotated its key); validated first.
    Rename { old: Id52, new: Id52 },
}

/// What a commit put in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub version: u64,
    pub hash: String,
    /// The hash of cluster.toml before the commit.
    pub previous_hash: String,
}

/// Why a config edit did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// The caller may not edit (not in `config_editors`).
    #[error("{0}")]
    Denied(String),
    /// The new text does not validate; nothing was written.
    #[error("{0}")]
    Invalid(String),
    /// cluster.toml changed since the caller's download.
    #[error(
        "cluster.toml changed since that base; it is now version {version} (hash {current_hash})"
    )]
    Stale { current_hash: String, version: u64 },
    /// Reading, writing or reaching the cluster manager failed.
    #[error("{0}")]
    Failed(String),
}

impl Cluster {
    /// Commits `change` (CM only) and puts the result in force.
    pub async fn commit(&self, change: Change) -> Result<Committed, EditError> {
        self.applying(|| self.commit_locked(change)).await
    }

    /// `commit`, applying (`Cluster::applying`).
    fn commit_locked(&self, change: Change) -> Result<Committed, EditError> {
        let before = self.config();
        // A rotated key is replaced, not removed: no farewell to the old one.
        let rotation = matches!(change, Change::Rename { .. });
        let (config, committed) = {
            let _writing = self.saver.writing.lock().expect("state writing lock");
            let mut ledger = self.ledger.lock().expect("ledger lock");
            let (config, committed) = commit_files(&self.dir, &self.id52(), &mut ledger, change)?;
            // A machine the new config drops gets a farewell (`sync::cm`).
            if !rotation
                && ledger.note_departures(
                    before.as_deref(),
                    &config,
                    committed.version,
                    &self.id52(),
                )
                && let Err(e) = ledger.save(&self.state_path())
            {
                tracing::error!(malai_cluster = %self.alias, "cannot record the removed machines: {e:#}");
            }
            (config, committed)
        };
        if committed.hash != committed.previous_hash || self.version() != committed.version {
            tracing::info!(
                malai_cluster = %self.alias, malai_config_version = committed.version,
                "cluster.toml {} -> {}: config version {}",
                committed.previous_hash, committed.hash, committed.version
            );
        }
        self.put_in_force(Some(config), committed.version, committed.hash.clone());
        self.wake.notify_one();
        Ok(committed)
    }
}

/// The file side of a commit on the cluster directory `dir` of the CM `cm`,
/// with `ledger` its state.json (loaded by the caller, who is its only
/// writer: the daemon, or the CLI when no daemon runs).
pub fn commit_files(
    dir: &Path,
    cm: &Id52,
    ledger: &mut CmState,
    change: Change,
) -> Result<(ClusterConfig, Committed), EditError> {
    let path = dir.join(CLUSTER_FILE);
    // The daemon and a CLI with no daemon on the bus both commit here: a
    // lock on the directory makes each read-compare-write whole.
    let _lock = lock_dir(dir)
        .map_err(|e| EditError::Failed(format!("cannot lock {}: {e}", dir.display())))?;
    let current = std::fs::read(&path)
        .map_err(|e| EditError::Failed(format!("cannot read {}: {e}", path.display())))?;
    let previous_hash = hash_hex(&current);
    let (config, hash) = match change {
        Change::Disk => {
            let text = String::from_utf8_lossy(&current);
            (validate(&path, &text, cm)?, previous_hash.clone())
        }
        Change::PastMachine { machine, holds } => {
            let text = String::from_utf8_lossy(&current);
            let config = validate(&path, &text, cm)?;
            if holds >= ledger.version {
                let from = ledger.version;
                ledger.version = holds + 1;
                ledger.hash = previous_hash.clone();
                ledger.moved_past = Some(crate::state::MovedPast {
                    from,
                    to: ledger.version,
                    machine,
                    at: crate::state::unix_now(),
                });
                ledger
                    .save(&dir.join(crate::home::STATE_FILE))
                    .map_err(|e| {
                        EditError::Failed(format!("cannot record the new version: {e:#}"))
                    })?;
            }
            (config, previous_hash.clone())
        }
        Change::Append { text } => {
            let mut whole = String::from_utf8_lossy(&current).into_owned();
            if !whole.is_empty() && !whole.ends_with('\n') {
                whole.push('\n');
            }
            whole.push('\n');
            whole.push_str(&text);
            write_validated(&path, cm, &whole)?
        }
        Change::Rename { old, new } => {
            let whole =
                String::from_utf8_lossy(&current).replace(&old.to_string(), &new.to_string());
            write_validated(&path, cm, &whole)?
        }
        Change::Upload {
            text,
            base_hash,
            force,
        } => {
            let config = validate(&PathBuf::from(CLUSTER_FILE), &text, cm)?;
            if !force && base_hash != previous_hash {
                return Err(EditError::Stale {
                    current_hash: previous_hash,
                    version: ledger.version,
                });
            }
            fsutil::write_atomic(&path, text.as_bytes(), 0o644)
                .map_err(|e| EditError::Failed(format!("cannot write {}: {e}", path.display())))?;
            (config, hash_hex(text.as_bytes()))
        }
    };
    let fresh = ledger.reconcile(&hash);
    if fresh {
        ledger
            .save(&dir.join(crate::home::STATE_FILE))
            .map_err(|e| EditError::Failed(format!("cannot record the new version: {e:#}")))?;
    }
    // The bytes in force, for `rescan --plan` (cluster.toml may be edited
    // meanwhile). Every branch left them in cluster.toml, under the lock.
    let in_force = dir.join(IN_FORCE_FILE);
    if fresh || !in_force.exists() {
        let bytes = std::fs::read(&path)
            .map_err(|e| EditError::Failed(format!("cannot read {}: {e}", path.display())))?;
        fsutil::write_atomic(&in_force, &bytes, 0o600)
            .map_err(|e| EditError::Failed(format!("cannot write {}: {e}", in_force.display())))?;
    }
    Ok((
        config,
        Committed {
            version: ledger.version,
            hash,
            previous_hash,
        },
    ))
}

/// Validates `text` and writes it as cluster.toml at `path`; the config
/// and the hash of the text.
fn write_validated(
    path: &Path,
    cm: &Id52,
    text: &str,
) -> Result<(ClusterConfig, String), EditError> {
    let config = validate(path, text, cm)?;
    fsutil::write_atomic(path, text.as_bytes(), 0o644)
        .map_err(|e| EditError::Failed(format!("cannot write {}: {e}", path.display())))?;
    Ok((config, hash_hex(text.as_bytes())))
}

/// Validates `text` as the cluster.toml of the CM `cm`.
fn validate(path: &Path, text: &str, cm: &Id52) -> Result<ClusterConfig, EditError> {
    let config = crate::policy::parse(path, text, FileKind::Cluster)
        .map_err(|d| EditError::Invalid(d.to_string()))?;
    if config.cluster_manager != *cm {
        return Err(EditError::Invalid(format!(
            "{}:[cluster-manager] id52 is {}, but this cluster's manager is {cm}",
            path.display(),
            config.cluster_manager
        )));
    }
    Ok(config)
}

/// An exclusive lock on the directory `dir`, until dropped.
pub fn lock_dir(dir: &Path) -> std::io::Result<Flock<std::fs::File>> {
    Flock::lock(std::fs::File::open(dir)?, FlockArg::LockExclusive)
        .map_err(|(_, errno)| std::io::Error::from(errno))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn cluster_text(cm: &Id52, extra: &str) -> String {
        format!("[cluster-manager]\nid52 = \"{cm}\"\n{extra}")
    }

    #[test]
    fn a_commit_waits_for_the_cluster_directory_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CLUSTER_FILE);
        std::fs::write(&path, "old").unwrap();
        let held = lock_dir(dir.path()).unwrap();
        let (tx, rx) = mpsc::channel();
        let d = dir.path().to_owned();
        let cm = crate::identity::Identity::generate().id52();
        std::thread::spawn(move || {
            let change = Change::Upload {
                text: "not toml [".into(),
                base_hash: hash_hex(b"old"),
                force: false,
            };
            let answer = commit_files(&d, &cm, &mut CmState::default(), change);
            tx.send(answer.err()).unwrap();
        });
        // Held by another writer: the commit must not read, compare or write.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        drop(held);
        let answer = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(matches!(answer, Some(EditError::Invalid(_))), "{answer:?}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }

    #[test]
    fn versions_follow_the_bytes_and_a_stale_base_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cm = crate::identity::Identity::generate().id52();
        let one = cluster_text(&cm, "");
        std::fs::write(dir.path().join(CLUSTER_FILE), &one).unwrap();
        let mut ledger = CmState::default();
        let (_, c) = commit_files(dir.path(), &cm, &mut ledger, Change::Disk).unwrap();
        assert_eq!(c.version, 1);
        // The same bytes again: the same version.
        let (_, c) = commit_files(dir.path(), &cm, &mut ledger, Change::Disk).unwrap();
        assert_eq!(c.version, 1);
        let two = cluster_text(&cm, "config_editors = \"\"\n");
        let upload = |base: &str, force| Change::Upload {
            text: two.clone(),
            base_hash: base.to_owned(),
            force,
        };
        let stale = commit_files(dir.path(), &cm, &mut ledger, upload("0000", false));
        assert_eq!(
            stale.unwrap_err(),
            EditError::Stale {
                current_hash: hash_hex(one.as_bytes()),
                version: 1
            }
        );
        let (_, c) = commit_files(
            dir.path(),
            &cm,
            &mut ledger,
            upload(&hash_hex(one.as_bytes()), false),
        )
        .unwrap();
        assert_eq!((c.version, c.hash), (2, hash_hex(two.as_bytes())));
        let saved = CmState::load(&dir.path().join(crate::home::STATE_FILE)).unwrap();
        assert_eq!(saved.version, 2);
        // Another CM's file is invalid, even forced.
        let other = crate::identity::Identity::generate().id52();
        let foreign = Change::Upload {
            text: cluster_text(&other, ""),
            base_hash: String::new(),
            force: true,
        };
        let invalid = commit_files(dir.path(), &cm, &mut ledger, foreign);
        assert!(matches!(invalid, Err(EditError::Invalid(_))), "{invalid:?}");
    }
}
