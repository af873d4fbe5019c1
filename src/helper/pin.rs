//! Pins: per cluster, the CM key the helper trusts, this device's own key,
//! and the highest config version the helper has seen, in a directory only
//! root may write (`/var/lib/malai-helper`, or `MALAI_HELPER_PINS`). Root
//! writes a pin (`malai cluster init` / `machine init` as root, `malai
//! helper pin`, the package on upgrade); the daemon's user cannot, so a
//! compromised daemon cannot swap in a CM key of its own, nor replay an
//! older signed config to the helper.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::home::{Home, Role};

/// The pins of the system service.
pub const PINS_DIR: &str = "/var/lib/malai-helper";

/// `MALAI_HELPER_PINS`, else `PINS_DIR`.
pub fn dir() -> PathBuf {
    std::env::var_os("MALAI_HELPER_PINS")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(PINS_DIR), PathBuf::from)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// The cluster manager's id52 (this device's own on the CM).
    pub cm: String,
    /// This device's id52 in the cluster.
    pub me: String,
    /// The highest config version the helper has accepted.
    #[serde(default)]
    pub version: u64,
}

fn path(dir: &Path, cluster: &str) -> anyhow::Result<PathBuf> {
    if let Some(why) = crate::config::names::name_error(cluster) {
        anyhow::bail!("invalid cluster name {cluster:?}: {why}");
    }
    Ok(dir.join(format!("{cluster}.toml")))
}

/// The pin of `cluster`; an error names the command that writes it.
pub fn read(dir: &Path, cluster: &str) -> anyhow::Result<Pin> {
    let path = path(dir, cluster)?;
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cluster {cluster} is not pinned for the privileged helper ({}); run `malai helper pin {cluster}` as root",
            path.display()
        )
    })?;
    toml::from_str(&text).with_context(|| format!("{} is not a pin", path.display()))
}

/// Writes the pin of `cluster` (root only: the directory is root's).
pub fn write(dir: &Path, cluster: &str, pin: &Pin) -> anyhow::Result<()> {
    if !dir.exists() {
        crate::fsutil::create_dir_durable(dir, 0o700)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let path = path(dir, cluster)?;
    let text = toml::to_string(pin).expect("a pin serializes");
    crate::fsutil::write_atomic(&path, text.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))
}

/// Pins `cluster` of `home` as it is on disk now: its CM, this device's
/// key, the version it holds. A pin of the same keys keeps its version.
pub fn pin_cluster(home: &Home, dir: &Path, cluster: &str) -> anyhow::Result<Pin> {
    let loaded = home
        .load_cluster(cluster)
        .map_err(|d| anyhow::anyhow!("{d}"))?;
    let me = loaded.identity.id52().to_string();
    let cm = match loaded.role {
        Role::ClusterManager => me.clone(),
        _ => loaded.cm_id52.to_string(),
    };
    let held = loaded
        .config
        .as_ref()
        .and_then(|c| c.received_version)
        .unwrap_or(0);
    let version = match read(dir, cluster) {
        Ok(old) if old.cm == cm && old.me == me => old.version.max(held),
        _ => held,
    };
    let pin = Pin { cm, me, version };
    write(dir, cluster, &pin)?;
    Ok(pin)
}

/// After `cluster init` or `machine init` as root: pins the new cluster
/// when this device has a helper's pin directory (the package makes it).
/// Anyone else has nothing to pin.
pub fn pin_new_cluster(home: &Home, cluster: &str) -> anyhow::Result<Option<Pin>> {
    let dir = dir();
    if !nix::unistd::geteuid().is_root() || !dir.is_dir() {
        return Ok(None);
    }
    pin_cluster(home, &dir, cluster).map(Some)
}
