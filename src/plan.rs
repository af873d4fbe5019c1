//! The access difference between two configs: for every peer either one
//! names and every machine, what it gains and loses (any command, a shell,
//! each command rule and match rule, each service there), and who gains or
//! loses editing the config. As the ACL engine decides (`acl::rights`,
//! `acl::may_edit_config`): what `rescan --plan` and `config upload
//! --plan` print before anything is applied.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::acl;
use crate::config::ClusterConfig;
use crate::identity::Id52;

/// One right gained or lost.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Change {
    /// The peer: its machine alias, else its id52.
    pub peer: String,
    /// The machine, or `None` for editing the config.
    pub machine: Option<String>,
    /// `any command`, `shell`, `command NAME`, `match "ARGV"`, `service
    /// NAME`, `edit`.
    pub right: String,
    pub gained: bool,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.gained { '+' } else { '-' };
        match &self.machine {
            Some(m) => write!(f, "{sign} {} on {m}: {}", self.peer, self.right),
            None => write!(f, "{sign} {}: {}", self.peer, self.right),
        }
    }
}

/// What each peer may do, as a set of (machine, right) for one config.
fn rights(config: &ClusterConfig, peer: &Id52) -> BTreeSet<(Option<String>, String)> {
    let mut out = BTreeSet::new();
    if acl::may_edit_config(config, peer).is_allowed() {
        out.insert((None, "edit".to_owned()));
    }
    for alias in config.machines.keys() {
        let r = acl::rights(config, alias, peer);
        let on = |right: String| (Some(alias.clone()), right);
        if r.any_command {
            out.insert(on("any command".into()));
        }
        if r.shell {
            out.insert(on("shell".into()));
        }
        out.extend(r.commands.iter().map(|c| on(format!("command {c}"))));
        out.extend(
            r.matches
                .iter()
                .map(|argv| on(format!("match {:?}", shell_words::join(argv)))),
        );
        out.extend(r.services.iter().map(|s| on(format!("service {s}"))));
    }
    out
}

/// Every right that differs between `before` and `after`, by peer.
pub fn diff(before: &ClusterConfig, after: &ClusterConfig) -> Vec<Change> {
    let peers: BTreeSet<Id52> = before
        .known_peers()
        .into_iter()
        .chain(after.known_peers())
        .collect();
    let name = |id: &Id52| {
        after
            .machine_by_id52(id)
            .or_else(|| before.machine_by_id52(id))
            .map_or_else(|| id.to_string(), |(alias, _)| alias.to_owned())
    };
    let mut out = Vec::new();
    for peer in &peers {
        let (old, new) = (rights(before, peer), rights(after, peer));
        for ((machine, right), gained) in new
            .difference(&old)
            .map(|r| (r, true))
            .chain(old.difference(&new).map(|r| (r, false)))
        {
            out.push(Change {
                peer: name(peer),
                machine: machine.clone(),
                right: right.clone(),
                gained,
            });
        }
    }
    out.sort();
    out
}

/// Prints the plan: one line per change on stdout (or one JSON object
/// with `changes`), a summary on stderr.
pub fn print(changes: &[Change], json: bool) {
    if json {
        let value = serde_json::json!({ "changes": changes });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).expect("JSON serializes")
        );
    } else {
        for c in changes {
            println!("{c}");
        }
    }
    let gained = changes.iter().filter(|c| c.gained).count();
    eprintln!(
        "plan: {gained} rights gained, {} lost; nothing applied",
        changes.len() - gained
    );
}

/// Validates `text` (a new cluster.toml at `path`), prints its plan
/// against `before` (`None`: nothing in force yet, every right is new),
/// then fails with its `[[test]]` failures, if any: a plan is shown even
/// when the file's own tests refuse it.
pub fn show(
    before: Option<&ClusterConfig>,
    path: &std::path::Path,
    text: &str,
    json: bool,
) -> Result<(), crate::config::Diagnostics> {
    use crate::config::cluster::{self, FileKind};
    let after = cluster::parse(path, text, FileKind::Cluster)?;
    let empty;
    let before = match before {
        Some(before) => before,
        None => {
            empty = ClusterConfig {
                config_editors: Vec::new(),
                machines: Default::default(),
                groups: Default::default(),
                services: Default::default(),
                ..after.clone()
            };
            &empty
        }
    };
    print(&diff(before, &after), json);
    let failed = crate::policy::check(path, &after);
    if failed.is_empty() {
        Ok(())
    } else {
        Err(crate::config::Diagnostics(failed))
    }
}
