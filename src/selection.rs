//! Fan-out targets: `web01,web02.company`, `@all.company`,
//! `@GROUP.company`, and which machines one names, from this device's
//! config: a list as written; `@all`, every machine where this device may
//! run the command; `@GROUP`, the group's machines, likewise. On the cluster
//! manager the rules decide (cluster.toml has them all); on a machine the
//! CM's projection of them (`[rights]`, `[machine_groups]`), and its own
//! rules for itself. The machines decide again, each for itself.

use crate::acl::{self, Request};
use crate::config::{ClusterConfig, Principal};
use crate::identity::Id52;

/// Several machines of one cluster: `web01,web02.company`, `@all.company`
/// (every machine where this device may run the command) or
/// `@GROUP.company` (the machines of a group, likewise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub cluster: String,
    pub pick: Pick,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// These machines, in this order, each once.
    Named(Vec<String>),
    All,
    Group(String),
}

impl Selection {
    /// `None` when `text` is not a fan-out target (no ',', no leading '@').
    pub fn parse(text: &str) -> Option<Result<Selection, String>> {
        if !text.contains(',') && !text.starts_with('@') {
            return None;
        }
        Some(Selection::parse_fan_out(text))
    }

    fn parse_fan_out(text: &str) -> Result<Selection, String> {
        let Some((machines, cluster)) = text.rsplit_once('.') else {
            return Err(format!(
                "{text:?}: expected MACHINE,MACHINE.CLUSTER, @all.CLUSTER or @GROUP.CLUSTER"
            ));
        };
        let bad = |what: &str, name: &str, why: &str| format!("bad {what} name {name:?}: {why}");
        if let Some(why) = crate::config::names::name_error(cluster) {
            return Err(bad("cluster", cluster, why));
        }
        let pick = if let Some(group) = machines.strip_prefix('@') {
            if let Some(why) = crate::config::names::name_error(group) {
                return Err(bad("group", group, why));
            }
            if group == "all" {
                Pick::All
            } else {
                Pick::Group(group.to_owned())
            }
        } else {
            let mut named: Vec<String> = Vec::new();
            for m in machines.split(',') {
                if let Some(why) = crate::config::names::name_error(m) {
                    return Err(bad("machine", m, why));
                }
                if !named.iter().any(|n| n == m) {
                    named.push(m.to_owned());
                }
            }
            Pick::Named(named)
        };
        Ok(Selection {
            cluster: cluster.to_owned(),
            pick,
        })
    }
}

impl std::fmt::Display for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.pick {
            Pick::Named(m) => write!(f, "{}.{}", m.join(","), self.cluster),
            Pick::All => write!(f, "@all.{}", self.cluster),
            Pick::Group(g) => write!(f, "@{g}.{}", self.cluster),
        }
    }
}

impl Selection {
    /// The machines this names for running `argv` as `me`, in order. A
    /// name the config does not know stays in the list: running there fails
    /// with its reason, and the others run.
    pub fn machines(
        &self,
        config: &ClusterConfig,
        me: &Id52,
        argv: &[String],
    ) -> Result<Vec<String>, String> {
        let selection = self;
        let candidates: Vec<String> = match &selection.pick {
        Pick::Named(names) => return Ok(names.clone()),
        Pick::All => config.machines.keys().cloned().collect(),
        Pick::Group(group) => group_machines(config, group).ok_or_else(|| {
            let mut known: Vec<&str> = if is_cm_file(config) {
                config.groups.keys().map(String::as_str).collect()
            } else {
                config.machine_groups.keys().map(String::as_str).collect()
            };
            known.sort_unstable();
            format!(
                "no group {group:?} with machines this device may use in cluster {:?} (groups: {})",
                selection.cluster,
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )
        })?,
    };
        let picked: Vec<String> = candidates
            .into_iter()
            .filter(|m| may_run(config, me, m, argv))
            .collect();
        if picked.is_empty() {
            return Err(format!(
                "{selection}: no machine lets this device run {:?}, as far as its config says",
                argv.join(" ")
            ));
        }
        Ok(picked)
    }
}

/// cluster.toml (the CM's file, with every machine's rules) rather than a
/// machine.toml.
fn is_cm_file(config: &ClusterConfig) -> bool {
    config.received_version.is_none()
}

/// The machines of `group`: from the rules on the CM, from the projection
/// elsewhere. `None` when this config knows no such group.
fn group_machines(config: &ClusterConfig, group: &str) -> Option<Vec<String>> {
    if !is_cm_file(config) {
        return config.machine_groups.get(group).cloned();
    }
    config.groups.get(group)?;
    let ids = acl::expand(config, &[Principal::Group(group.to_owned())]);
    Some(
        config
            .machines
            .iter()
            .filter(|(_, m)| ids.contains(&m.id52))
            .map(|(a, _)| a.clone())
            .collect(),
    )
}

/// Whether `me` may run `argv` on machine `alias`, as far as this config
/// knows: the rules where it has them, the CM's projection elsewhere (a
/// rule name this device may not run there is not in it: that machine
/// refuses).
pub fn may_run(config: &ClusterConfig, me: &Id52, alias: &str, argv: &[String]) -> bool {
    let Some(m) = config.machines.get(alias) else {
        return false;
    };
    if m.id52 == *me || is_cm_file(config) {
        return acl::decide(config, &m.id52, me, Request::Exec(argv)).is_allowed();
    }
    config
        .rights
        .get(alias)
        .is_some_and(|r| match argv.first() {
            _ if r.matches.iter().any(|m| m == argv) => true,
            Some(first) if r.commands.contains(first) => true,
            Some(_) => r.any_command,
            None => false,
        })
}
