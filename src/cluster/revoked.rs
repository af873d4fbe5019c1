//! Revocations a machine keeps: every key a config of its CM listed in
//! `[revoked] id52s`, until a later config lists it in `unrevoked`. A later
//! config that merely leaves a key out (an edit that lost the line, an old
//! file restored on the CM) does not admit it again. Kept in
//! `revoked.json` in the cluster's directory, written atomically.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::ClusterConfig;
use crate::fsutil;
use crate::identity::Id52;

/// The file's name in a cluster directory.
pub const REVOKED_FILE: &str = "revoked.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct Kept {
    id52s: BTreeSet<String>,
}

/// Folds the revocations kept in `dir` into `config` (those it unrevokes
/// dropped), and keeps the result for the next config.
pub fn keep(dir: &Path, config: &mut ClusterConfig) -> anyhow::Result<()> {
    let path = dir.join(REVOKED_FILE);
    let kept: Kept = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{} is damaged: {e}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Kept::default(),
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    };
    let mut was = BTreeSet::new();
    for text in &kept.id52s {
        let id: Id52 = text
            .parse()
            .map_err(|e| anyhow::anyhow!("{} is damaged: {text:?}: {e}", path.display()))?;
        was.insert(id);
    }
    let merged: BTreeSet<Id52> = was
        .union(&config.revoked)
        .filter(|id| !config.unrevoked.contains(id) && **id != config.cluster_manager)
        .copied()
        .collect();
    if merged != was {
        let json = serde_json::to_vec_pretty(&Kept {
            id52s: merged.iter().map(ToString::to_string).collect(),
        })?;
        fsutil::write_atomic(&path, &json, 0o644)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    config.revoked = merged;
    Ok(())
}
