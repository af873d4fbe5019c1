//! `state.json` on a cluster manager: the config version (a counter that only
//! goes up, bumped whenever cluster.toml's bytes change) and what each
//! machine has acknowledged.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::fsutil;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmState {
    /// Version of the config whose hash is `hash`.
    pub version: u64,
    /// blake3 (hex) of the cluster.toml bytes that `version` names.
    pub hash: String,
    /// Per machine alias: its sync state.
    #[serde(default)]
    pub machines: BTreeMap<String, MachineSync>,
    /// The last time the version had to jump past what a machine held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_past: Option<MovedPast>,
    /// Machines removed from the cluster, by id52: each is sent a signed
    /// farewell (a config that names no machine, so it grants nothing)
    /// until it acknowledges one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub departed: BTreeMap<String, Departed>,
}

/// A machine the cluster no longer lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Departed {
    /// Its alias when it was removed.
    pub alias: String,
    #[serde(default)]
    pub addrs: Vec<std::net::SocketAddr>,
    /// The config version that removed it.
    pub removed_in: u64,
    /// The farewell version it acknowledged (0: none yet).
    #[serde(default)]
    pub acked_version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl CmState {
    /// Notes the machines of `before` that `after` no longer lists (the CM
    /// `me` aside) as departed at `version`, and forgets the departure of
    /// any listed again. Returns whether anything changed.
    pub fn note_departures(
        &mut self,
        before: Option<&crate::config::ClusterConfig>,
        after: &crate::config::ClusterConfig,
        version: u64,
        me: &crate::identity::Id52,
    ) -> bool {
        let listed: std::collections::BTreeSet<String> = after
            .machines
            .values()
            .map(|m| m.id52.to_string())
            .collect();
        let before_len = self.departed.len();
        self.departed.retain(|id, _| !listed.contains(id));
        let mut changed = self.departed.len() != before_len;
        for (alias, m) in before.iter().flat_map(|b| &b.machines) {
            let id = m.id52.to_string();
            if m.id52 == *me || listed.contains(&id) || self.departed.contains_key(&id) {
                continue;
            }
            self.departed.insert(
                id,
                Departed {
                    alias: alias.clone(),
                    addrs: m.addrs.clone(),
                    removed_in: version,
                    acked_version: 0,
                    last_error: None,
                },
            );
            changed = true;
        }
        changed
    }
}

/// The version jumped from `from` to `to` because machine `machine` held a
/// version this state.json did not know: it was lost, or restored from an
/// old copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedPast {
    pub from: u64,
    pub to: u64,
    pub machine: String,
    /// Unix seconds.
    pub at: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineSync {
    pub id52: String,
    /// The highest version the machine has acknowledged (0: none yet).
    pub acked_version: u64,
    /// Unix seconds of the last successful exchange with the machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_contact: Option<u64>,
    /// Unix seconds since which pushes have failed, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable_since: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The protocol the machine said it understands (none: a first-release
    /// machine, or not heard from yet: 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
    /// The protocol of the text it acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_protocol: Option<u32>,
    /// What its config left out because the machine does not understand
    /// it (it needs an upgrade for these to take effect).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withheld: Vec<String>,
    /// The cluster manager key it last acknowledged a config from (none:
    /// recorded before the CM's key could rotate, so its first key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cm: Option<String>,
}

impl MachineSync {
    /// Whether the machine holds `version`, written for the protocol it
    /// understands.
    pub fn holds(&self, version: u64) -> bool {
        self.acked_version >= version && self.acked_protocol.unwrap_or(1) >= self.protocol()
    }

    /// The protocol to write this machine's config for.
    pub fn protocol(&self) -> u32 {
        self.protocol.unwrap_or(1).min(crate::personalize::PROTOCOL)
    }
}

impl CmState {
    pub fn load(path: &Path) -> anyhow::Result<CmState> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not a valid malai state file", path.display())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(CmState::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("state serializes");
        bytes.push(b'\n');
        fsutil::write_atomic(path, &bytes, 0o644)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Makes `version` name the config with `hash`: bumps it when the bytes
    /// changed. Returns whether it did.
    pub fn reconcile(&mut self, hash: &str) -> bool {
        if self.hash == hash {
            return false;
        }
        self.version += 1;
        self.hash = hash.to_owned();
        true
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
