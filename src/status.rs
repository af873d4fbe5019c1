//! The state of this device's clusters as `malai status` shows it, read from
//! the files of a MALAI_HOME (the daemon serves the same shape).

use serde::{Deserialize, Serialize};

use crate::home::{ClusterDir, Home, Role};
use crate::state::CmState;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Where the view comes from: "files" or "daemon".
    pub source: String,
    pub home: String,
    pub clusters: Vec<ClusterStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub alias: String,
    /// "cluster-manager", "machine", "waiting", or "invalid".
    pub role: String,
    pub id52: Option<String>,
    pub cluster_manager: Option<String>,
    pub config_version: Option<u64>,
    pub config_hash: Option<String>,
    /// CM only: cluster.toml changed on disk since the last rescan.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending_rescan: bool,
    /// CM only: the last time the version had to jump past what a machine
    /// held (state.json lost or restored from an old copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_past: Option<crate::state::MovedPast>,
    /// CM only: every machine and what it has acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machines: Option<Vec<MachineStatus>>,
    /// Why the cluster could not be loaded, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The relay this identity uses (daemon only): a URL, "disabled" or
    /// "iroh's public relays".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// Daemon only: every peer this identity talked to, and how.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<PeerStatus>>,
    /// Daemon, machine only: why the config in force allows nothing now
    /// (`max_config_age` passed without word from the CM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired: Option<String>,
    /// CM only: machines the config no longer lists, and whether each
    /// acknowledged its farewell.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<RemovedMachine>,
}

/// A machine removed from the cluster (CM).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemovedMachine {
    pub alias: String,
    pub id52: String,
    /// The config version that removed it.
    pub removed_in: u64,
    /// The farewell version it acknowledged; 0: not delivered yet.
    pub farewell_acked: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A peer a cluster identity talked to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The machine alias the config gives it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    pub id52: String,
    /// "direct", "relay", or "closed" (no connection open now).
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// When a connection to it was last seen open (Unix seconds).
    pub last_contact: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineStatus {
    pub alias: String,
    pub id52: String,
    pub acked_version: u64,
    /// "in-sync", "pending" or "unreachable".
    pub sync: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_contact: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable_since: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What its config leaves out because the machine runs an older malai
    /// that does not understand it: upgrade it for these to take effect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs_upgrade: Vec<String>,
}

/// Status of one loaded cluster; `state` is the CM's state.json.
pub fn cluster_status(c: &ClusterDir, state: Option<&CmState>) -> ClusterStatus {
    let mut s = ClusterStatus {
        alias: c.alias.clone(),
        role: c.role.as_str().to_owned(),
        id52: Some(c.identity.id52().to_string()),
        cluster_manager: Some(c.cm_id52.to_string()),
        config_version: None,
        config_hash: None,
        pending_rescan: false,
        moved_past: None,
        machines: None,
        error: None,
        relay: None,
        peers: None,
        expired: None,
        removed: Vec::new(),
    };
    match c.role {
        Role::Waiting => {}
        Role::Machine => {
            s.config_version = c.config.as_ref().and_then(|c| c.received_version);
            s.config_hash = Some(c.config_hash());
        }
        Role::ClusterManager => {
            let state = state.cloned().unwrap_or_default();
            s.config_version = Some(state.version);
            s.config_hash = Some(state.hash.clone());
            s.pending_rescan = state.hash != c.config_hash();
            s.moved_past.clone_from(&state.moved_past);
            s.removed = state
                .departed
                .iter()
                .map(|(id, d)| RemovedMachine {
                    alias: d.alias.clone(),
                    id52: id.clone(),
                    removed_in: d.removed_in,
                    farewell_acked: d.acked_version,
                    last_error: d.last_error.clone(),
                })
                .collect();
            let config = c.config.as_ref().expect("a CM has its cluster.toml");
            let machines = config
                .machines
                .iter()
                .filter(|(_, m)| m.id52 != c.identity.id52())
                .map(|(alias, m)| {
                    let sync = state
                        .machines
                        .get(alias)
                        .filter(|s| s.id52 == m.id52.to_string());
                    let acked = sync.map_or(0, |s| s.acked_version);
                    let word = if sync.is_some_and(|s| s.holds(state.version)) {
                        "in-sync"
                    } else if sync.is_some_and(|s| s.unreachable_since.is_some()) {
                        "unreachable"
                    } else {
                        "pending"
                    };
                    MachineStatus {
                        alias: alias.clone(),
                        id52: m.id52.to_string(),
                        acked_version: acked,
                        sync: word.to_owned(),
                        last_contact: sync.and_then(|s| s.last_contact),
                        unreachable_since: sync.and_then(|s| s.unreachable_since),
                        last_error: sync.and_then(|s| s.last_error.clone()),
                        needs_upgrade: sync.map(|s| s.withheld.clone()).unwrap_or_default(),
                    }
                })
                .collect();
            s.machines = Some(machines);
        }
    }
    s
}

/// Status of every cluster of `home`, from its files.
pub fn from_files(home: &Home) -> anyhow::Result<Status> {
    let mut clusters = Vec::new();
    for alias in home.cluster_aliases()? {
        match home.load_cluster(&alias) {
            Ok(c) => {
                let state = match c.role {
                    Role::ClusterManager => Some(CmState::load(&c.state_path())?),
                    _ => None,
                };
                clusters.push(cluster_status(&c, state.as_ref()));
            }
            Err(diags) => {
                // A CM keeps serving the version in force (state.json)
                // while its file is invalid: show that version.
                let state_path = home.cluster_dir(&alias).join(crate::home::STATE_FILE);
                let state = state_path
                    .exists()
                    .then(|| CmState::load(&state_path).ok())
                    .flatten();
                clusters.push(ClusterStatus {
                    alias,
                    role: "invalid".into(),
                    id52: None,
                    cluster_manager: None,
                    config_version: state.as_ref().map(|s| s.version),
                    config_hash: state.map(|s| s.hash),
                    pending_rescan: false,
                    moved_past: None,
                    machines: None,
                    error: Some(diags.to_string()),
                    relay: None,
                    peers: None,
                    expired: None,
                    removed: Vec::new(),
                });
            }
        }
    }
    Ok(Status {
        source: "files".into(),
        home: home.root.display().to_string(),
        clusters,
    })
}

/// The human form of a status, for stderr-free terminals.
pub fn render(status: &Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "home: {} (read from {})", status.home, status.source);
    if status.clusters.is_empty() {
        let _ = writeln!(
            out,
            "no clusters: create one with `malai cluster init NAME` or join one with `malai machine init CM-ID52 NAME`"
        );
    }
    for c in &status.clusters {
        let _ = write!(out, "\n{}: {}", c.alias, c.role);
        if let Some(v) = c.config_version {
            let hash = c.config_hash.as_deref().unwrap_or("");
            let _ = write!(
                out,
                ", config version {v} ({})",
                &hash[..hash.len().min(12)]
            );
        }
        if c.pending_rescan {
            let _ = write!(out, ", cluster.toml changed since: run `malai rescan`");
        }
        let _ = writeln!(out);
        if let Some(m) = &c.moved_past {
            let _ = writeln!(
                out,
                "  WARNING: the config version jumped from {} to {}: machine {} held a version this cluster manager's \
                 state.json did not know (lost, or restored from an old copy?)",
                m.from, m.to, m.machine
            );
        }
        if let Some(id) = &c.id52 {
            let _ = writeln!(out, "  id52: {id}");
        }
        if let Some(cm) = &c.cluster_manager
            && (c.role == "machine" || c.role == "waiting")
        {
            let _ = writeln!(out, "  cluster manager: {cm}");
        }
        if let Some(why) = &c.expired {
            let _ = writeln!(out, "  REFUSING EVERYONE BUT THE CLUSTER MANAGER: {why}");
        }
        if let Some(e) = &c.error {
            for line in e.lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        for m in c.machines.iter().flatten() {
            let _ = writeln!(
                out,
                "  {:<16} {}  acked {}  {}",
                m.alias, m.id52, m.acked_version, m.sync
            );
            if !m.needs_upgrade.is_empty() {
                let _ = writeln!(
                    out,
                    "  {:<16} runs an older malai: upgrade it for {}",
                    "",
                    m.needs_upgrade.join(", ")
                );
            }
        }
        for r in &c.removed {
            let farewell = match (r.farewell_acked, &r.last_error) {
                (0, Some(e)) => format!("farewell not delivered yet ({e})"),
                (0, None) => "farewell not delivered yet".to_owned(),
                (v, _) => format!("farewell acknowledged (v{v}): it grants nothing"),
            };
            let _ = writeln!(
                out,
                "  {:<16} {}  removed in v{}  {farewell}",
                r.alias, r.id52, r.removed_in
            );
        }
        if let Some(relay) = &c.relay {
            let _ = writeln!(out, "  relay: {relay}");
        }
        for p in c.peers.iter().flatten() {
            let name = p.alias.as_deref().unwrap_or(&p.id52);
            let rtt = p.rtt_ms.map(|r| format!("  {r:.1} ms")).unwrap_or_default();
            let _ = writeln!(out, "  peer {name:<16} {}{rtt}", p.path);
        }
    }
    out
}
