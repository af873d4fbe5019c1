//! `MALAI_HOME`: where it is, what it holds, and loading one cluster
//! directory (identity, role, config) with every problem reported as a
//! diagnostic.
//!
//! ```text
//! $MALAI_HOME/malai.toml, malai.lock
//! $MALAI_HOME/clusters/<alias>/identity.key, cluster.toml | machine.toml,
//!                              cluster-info.toml, state.json
//! ```

use std::fs;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{self, ClusterConfig, Diagnostic, Diagnostics, FileKind, LocalConfig};
use crate::fsutil;
use crate::identity::{Id52, Identity};

/// The system service's home (`StateDirectory=malai`), root's default.
pub const SYSTEM_HOME: &str = "/var/lib/malai";
pub const IDENTITY_FILE: &str = "identity.key";
pub const CLUSTER_FILE: &str = "cluster.toml";
pub const MACHINE_FILE: &str = "machine.toml";
/// The envelope machine.toml came in (CM signature included), kept for the
/// privileged helper, which trusts no file the daemon could have written.
pub const ENVELOPE_FILE: &str = "machine.envelope";
pub const INFO_FILE: &str = "cluster-info.toml";
pub const STATE_FILE: &str = "state.json";

#[derive(Debug, Clone)]
pub struct Home {
    pub root: PathBuf,
}

/// The role of a device in one cluster, decided by which files exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ClusterManager,
    Machine,
    /// Registered with `machine init`, waiting for the CM's first config.
    Waiting,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ClusterManager => "cluster-manager",
            Role::Machine => "machine",
            Role::Waiting => "waiting",
        }
    }
}

/// `cluster-info.toml`: what `machine init` learned about the CM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterInfo {
    #[serde(rename = "cluster-manager")]
    pub cluster_manager: InfoCm,
    /// The relay to reach the CM through before it has sent a config
    /// (`machine init --relay URL [--relay-ca FILE]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<InfoNetwork>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfoNetwork {
    pub relay: String,
    /// PEM text of the relay's CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_ca: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfoCm {
    pub id52: String,
    #[serde(default)]
    pub addrs: Vec<SocketAddr>,
}

/// One cluster directory, loaded and checked.
#[derive(Clone)]
pub struct ClusterDir {
    pub alias: String,
    pub dir: PathBuf,
    pub identity: Identity,
    pub role: Role,
    /// cluster.toml on a CM, machine.toml on a machine, `None` while waiting.
    pub config: Option<ClusterConfig>,
    /// The exact bytes `config` was parsed from (hashed for versions).
    pub config_bytes: Vec<u8>,
    /// The CM's id52 and address hints (a CM's own id52 on the CM).
    pub cm_id52: Id52,
    pub cm_addrs: Vec<SocketAddr>,
    /// The cluster's relay: the config's when it names one, else the one
    /// given at `machine init`.
    pub relay: Option<config::OwnRelay>,
}

impl Home {
    /// `MALAI_HOME`; else systemd's `STATE_DIRECTORY` (the system service's
    /// `/var/lib/malai`); else, for root, the system service's home
    /// `/var/lib/malai` (so `malai cluster init` then `systemctl reload
    /// malai` works); else `$XDG_DATA_HOME/malai` or `~/.local/share/malai`.
    pub fn resolve() -> anyhow::Result<Home> {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let root = if let Some(h) = env("MALAI_HOME") {
            h
        } else if let Some(s) = env("STATE_DIRECTORY") {
            // systemd may pass several, separated by ':'; ours is the first.
            PathBuf::from(s.to_string_lossy().split(':').next().unwrap_or_default())
        } else if nix::unistd::geteuid().is_root() {
            PathBuf::from(SYSTEM_HOME)
        } else if let Some(x) = env("XDG_DATA_HOME") {
            x.join("malai")
        } else if let Some(h) = env("HOME") {
            h.join(".local/share/malai")
        } else {
            anyhow::bail!("cannot find a home for malai: set MALAI_HOME");
        };
        // Root in the unprivileged system service's home: what it creates
        // there goes to the service's user.
        crate::fsutil::hand_over_under(&root);
        Ok(Home { root })
    }

    pub fn at(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    pub fn local_config_path(&self) -> PathBuf {
        self.root.join("malai.toml")
    }

    pub fn lock_path(&self) -> PathBuf {
        self.root.join("malai.lock")
    }

    pub fn clusters_dir(&self) -> PathBuf {
        self.root.join("clusters")
    }

    pub fn cluster_dir(&self, alias: &str) -> PathBuf {
        self.clusters_dir().join(alias)
    }

    /// malai.toml, or the defaults when it does not exist. Forwards must
    /// name clusters that have a directory here.
    pub fn local_config(&self) -> Result<LocalConfig, Diagnostics> {
        let path = self.local_config_path();
        match fs::read_to_string(&path) {
            Ok(text) => {
                let local = config::local::parse(&path, &text)?;
                let unknown =
                    local.unknown_clusters(&path, &self.cluster_aliases().unwrap_or_default());
                if unknown.is_empty() {
                    Ok(local)
                } else {
                    Err(unknown)
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(LocalConfig::default()),
            Err(e) => Err(Diagnostics(vec![Diagnostic::whole(
                &path,
                e.to_string(),
                "",
            )])),
        }
    }

    /// The aliases of every cluster directory, sorted.
    pub fn cluster_aliases(&self) -> std::io::Result<Vec<String>> {
        let mut out = Vec::new();
        match fs::read_dir(self.clusters_dir()) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if entry.file_type()?.is_dir() && !name.starts_with('.') {
                        out.push(name);
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        out.sort();
        Ok(out)
    }

    /// Loads and checks one cluster directory.
    pub fn load_cluster(&self, alias: &str) -> Result<ClusterDir, Diagnostics> {
        let dir = self.cluster_dir(alias);
        let whole = |path: &Path, msg: String, help: &str| {
            Diagnostics(vec![Diagnostic::whole(path, msg, help)])
        };
        if !dir.is_dir() {
            return Err(whole(
                &dir,
                format!("no cluster {alias:?} in this MALAI_HOME"),
                "run `malai status` to list the clusters, or `malai cluster init` / `malai machine init` to add one",
            ));
        }
        if let Some(why) = config::names::name_error(alias) {
            return Err(whole(
                &dir,
                format!("invalid cluster alias {alias:?}: {why}"),
                "rename the directory",
            ));
        }
        let key_path = dir.join(IDENTITY_FILE);
        let identity = Identity::load(&key_path)
            .map_err(|e| whole(&key_path, strip_path(&e.to_string(), &key_path), ""))?;

        let cluster_path = dir.join(CLUSTER_FILE);
        let machine_path = dir.join(MACHINE_FILE);
        let info_path = dir.join(INFO_FILE);
        let (has_cluster, has_machine) = (cluster_path.exists(), machine_path.exists());
        if has_cluster && has_machine {
            return Err(whole(
                &dir,
                "holds both cluster.toml and machine.toml: a device is either the cluster manager or a machine of a cluster".into(),
                "on the cluster manager remove machine.toml; on a machine remove cluster.toml",
            ));
        }
        if has_cluster {
            let (config, bytes) = read_config(&cluster_path, FileKind::Cluster)?;
            if config.cluster_manager != identity.id52() {
                return Err(whole(
                    &cluster_path,
                    format!(
                        "[cluster-manager] id52 is {}, but this device's identity for {alias:?} is {}",
                        config.cluster_manager,
                        identity.id52()
                    ),
                    "cluster.toml lives only on the cluster manager; restore the right identity.key or fix the id52",
                ));
            }
            return Ok(ClusterDir {
                alias: alias.to_owned(),
                cm_id52: identity.id52(),
                cm_addrs: config.cm_addrs.clone(),
                relay: config.relay.clone(),
                identity,
                role: Role::ClusterManager,
                config: Some(config),
                config_bytes: bytes,
                dir,
            });
        }
        let info = read_info(&info_path)?;
        let cm_id52: Id52 = info.cluster_manager.id52.parse().map_err(|e| {
            whole(
                &info_path,
                format!("malformed cluster manager id52: {e}"),
                "run `malai machine init` again in a fresh directory",
            )
        })?;
        let mut cm_addrs = info.cluster_manager.addrs.clone();
        let info_relay = info_relay(&info, &info_path)?;
        let (role, config, bytes) = if has_machine {
            let (config, bytes) = read_config(&machine_path, FileKind::Machine)?;
            check_sender(&dir, &machine_path, &config, &cm_id52)?;
            for a in &config.cm_addrs {
                if !cm_addrs.contains(a) {
                    cm_addrs.push(*a);
                }
            }
            (Role::Machine, Some(config), bytes)
        } else {
            (Role::Waiting, None, Vec::new())
        };
        Ok(ClusterDir {
            alias: alias.to_owned(),
            dir,
            identity,
            role,
            config_bytes: bytes,
            relay: config.as_ref().and_then(|c| c.relay.clone()).or(info_relay),
            config,
            cm_id52,
            cm_addrs,
        })
    }
}

impl ClusterDir {
    pub fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The blake3 hash (hex) of the config bytes, as versions and the
    /// compare-and-swap of uploads use it.
    pub fn config_hash(&self) -> String {
        hash_hex(&self.config_bytes)
    }
}

/// machine.toml at `path` in `dir` must come from the cluster manager
/// `cm`, or from an earlier key of it that handed over to `cm`: that
/// config stays in force until the new key sends one.
fn check_sender(
    dir: &Path,
    path: &Path,
    config: &ClusterConfig,
    cm: &Id52,
) -> Result<(), Diagnostics> {
    let sender = config.cluster_manager;
    if sender == *cm
        || crate::handover::read(dir)
            .is_ok_and(|chain| crate::handover::leads_to(&chain, &sender, cm))
    {
        return Ok(());
    }
    Err(Diagnostics(vec![Diagnostic::whole(
        path,
        format!("sent for cluster manager {sender}, but this cluster's manager is {cm}"),
        "delete machine.toml; the cluster manager sends it again",
    )]))
}

/// The relay `machine init --relay` wrote in cluster-info.toml, checked.
fn info_relay(info: &ClusterInfo, path: &Path) -> Result<Option<config::OwnRelay>, Diagnostics> {
    let Some(net) = &info.network else {
        return Ok(None);
    };
    let checked = config::relay::check_url(&net.relay).and_then(|()| {
        net.relay_ca
            .as_deref()
            .map_or(Ok(()), |pem| config::relay::certificates(pem).map(|_| ()))
    });
    if let Err(e) = checked {
        return Err(Diagnostics(vec![Diagnostic::whole(
            path,
            format!("[network]: {e}"),
            "run `malai machine init` again with a correct --relay and --relay-ca",
        )]));
    }
    Ok(Some(config::OwnRelay {
        url: net.relay.clone(),
        ca_pem: net.relay_ca.clone(),
    }))
}

pub fn hash_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

fn strip_path(msg: &str, path: &Path) -> String {
    let prefix = format!("{}: ", path.display());
    msg.strip_prefix(&prefix).unwrap_or(msg).to_owned()
}

fn read_config(path: &Path, kind: FileKind) -> Result<(ClusterConfig, Vec<u8>), Diagnostics> {
    let bytes = fs::read(path)
        .map_err(|e| Diagnostics(vec![Diagnostic::whole(path, e.to_string(), "")]))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        Diagnostics(vec![Diagnostic::whole(
            path,
            "not UTF-8 text",
            "save the file as UTF-8",
        )])
    })?;
    let config = crate::policy::parse(path, text, kind)?;
    Ok((config, bytes))
}

/// cluster-info.toml at `path`.
pub fn read_info(path: &Path) -> Result<ClusterInfo, Diagnostics> {
    let text = fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![Diagnostic::whole(
            path,
            format!("{e}: the directory has neither cluster.toml nor a readable cluster-info.toml"),
            "run `malai cluster init` or `malai machine init` to create a cluster directory",
        )])
    })?;
    config::diag::Source::new(path, &text)
        .parse()
        .map_err(|d| Diagnostics(vec![d]))
}

/// The role `identity list` shows for a directory that holds only an
/// imported key: no cluster yet, and no daemon loads it.
pub const KEY_ONLY: &str = "key only";

/// Whether `dir` holds a key and nothing of a cluster (an `identity
/// import` waiting for `machine init`).
pub fn is_key_only(dir: &Path) -> bool {
    dir.join(IDENTITY_FILE).exists()
        && [CLUSTER_FILE, MACHINE_FILE, INFO_FILE]
            .iter()
            .all(|f| !dir.join(f).exists())
}

/// Creates the directory of cluster `alias` for a key to be imported into.
pub fn create_key_only_dir(home: &Home, alias: &str) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    if let Some(why) = config::names::name_error(alias) {
        return Err(InvalidClusterName(format!("invalid cluster name {alias:?}: {why}")).into());
    }
    if !home.clusters_dir().exists() {
        fsutil::create_dir_durable(&home.clusters_dir(), 0o755)
            .with_context(|| format!("creating {}", home.clusters_dir().display()))?;
    }
    let dir = home.cluster_dir(alias);
    fsutil::create_dir_durable(&dir, 0o700)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A cluster name that is not one (a usage error for the CLI).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidClusterName(pub String);

/// Creates a new cluster directory with a fresh identity, or takes the key
/// `identity import` left in one (`is_key_only`); refuses to touch any
/// other that exists.
pub fn create_cluster_dir(home: &Home, alias: &str) -> anyhow::Result<(PathBuf, Identity)> {
    use anyhow::Context;
    if let Some(why) = config::names::name_error(alias) {
        return Err(InvalidClusterName(format!("invalid cluster name {alias:?}: {why}")).into());
    }
    let dir = home.cluster_dir(alias);
    if is_key_only(&dir) {
        let identity = Identity::load(&dir.join(IDENTITY_FILE))?;
        return Ok((dir, identity));
    }
    if dir.exists() {
        anyhow::bail!(
            "{} already exists; malai never overwrites a cluster directory (remove it yourself if you mean to start over)",
            dir.display()
        );
    }
    if !home.clusters_dir().exists() {
        fsutil::create_dir_durable(&home.clusters_dir(), 0o755)
            .with_context(|| format!("creating {}", home.clusters_dir().display()))?;
    }
    fsutil::create_dir_durable(&dir, 0o700)
        .with_context(|| format!("creating {}", dir.display()))?;
    let identity = Identity::generate();
    identity.store(&dir.join(IDENTITY_FILE))?;
    Ok((dir, identity))
}

pub fn write_info(dir: &Path, info: &ClusterInfo) -> anyhow::Result<()> {
    let text = format!(
        "# Written by `malai machine init`: the cluster manager this machine belongs to.\n{}",
        toml::to_string(info)?
    );
    fsutil::write_atomic(&dir.join(INFO_FILE), text.as_bytes(), 0o644)?;
    Ok(())
}

/// Every cluster of `home` (or only `only`) and malai.toml, loaded; what
/// loaded and every diagnostic of what did not.
pub fn load_all(
    home: &Home,
    only: Option<&str>,
) -> (Option<LocalConfig>, Vec<ClusterDir>, Diagnostics) {
    let mut diags = Diagnostics::default();
    let local = home.local_config().map_err(|d| diags.extend(d)).ok();
    let aliases = match only {
        Some(a) => vec![a.to_owned()],
        None => match home.cluster_aliases() {
            Ok(a) => a,
            Err(e) => {
                diags
                    .0
                    .push(Diagnostic::whole(home.clusters_dir(), e.to_string(), ""));
                Vec::new()
            }
        },
    };
    let mut clusters = Vec::new();
    for alias in aliases {
        if only.is_none() && is_key_only(&home.cluster_dir(&alias)) {
            // An imported key, not a cluster yet (`identity list` shows it).
            continue;
        }
        match home.load_cluster(&alias) {
            Ok(c) => clusters.push(c),
            Err(d) => diags.extend(d),
        }
    }
    (local, clusters, diags)
}
