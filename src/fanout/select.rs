//! Which machines a fan-out target names, from this device's config: a
//! list as written; `@all`, every machine where this device may run the
//! command; `@GROUP`, the group's machines, likewise. On the cluster
//! manager the rules decide (cluster.toml has them all); on a machine the
//! CM's projection of them (`[rights]`, `[machine_groups]`), and its own
//! rules for itself. The machines decide again, each for itself.

use crate::acl::{self, Request};
use crate::config::{ClusterConfig, Principal};
use crate::identity::Id52;
use crate::target::{Pick, Selection};

use super::direct::Plan;
use super::{Ended, Outcome};

/// The machines `selection` names for running `argv` as `me`, in order. A
/// name the config does not know stays in the list: running there fails
/// with its reason, and the others run.
pub fn machines(
    config: &ClusterConfig,
    me: &Id52,
    selection: &Selection,
    argv: &[String],
) -> Result<Vec<String>, String> {
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

/// `machines`, with each known machine's id52 and addresses; a name the
/// config does not know is already an outcome.
pub fn plan(
    config: &ClusterConfig,
    me: &Id52,
    selection: &Selection,
    argv: &[String],
) -> Result<(Vec<Plan>, Vec<Outcome>), String> {
    let mut plan = Vec::new();
    let mut unknown = Vec::new();
    for name in machines(config, me, selection, argv)? {
        match config.machines.get(&name) {
            Some(m) => plan.push(Plan {
                machine: name,
                id: m.id52,
                addrs: m.addrs.clone(),
            }),
            None => {
                let why = format!("no machine {name:?} in cluster {:?}", selection.cluster);
                unknown.push(Outcome::without_output(name, Ended::Failed(why)));
            }
        }
    }
    Ok((plan, unknown))
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
            Some(first) if r.commands.contains(first) => true,
            Some(_) => r.any_command,
            None => false,
        })
}
