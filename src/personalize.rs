//! Personalization: from the CM's cluster.toml, the machine.toml one machine
//! receives. It holds the cluster-manager section (without its editors), the
//! directory of machines (alias, id52, address hints), that machine's own
//! rules with its command rules, and the groups those rules name, resolved to
//! id52s. Rules of other machines are not sent.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::acl;
use crate::config::{ClusterConfig, Principal};

#[derive(Serialize)]
struct Out {
    received: OutReceived,
    #[serde(rename = "cluster-manager")]
    cluster_manager: OutCm,
    machine: BTreeMap<String, OutMachine>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    group: BTreeMap<String, OutGroup>,
}

#[derive(Serialize)]
struct OutReceived {
    version: u64,
}

#[derive(Serialize)]
struct OutCm {
    id52: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    addrs: Vec<String>,
}

#[derive(Serialize, Default)]
struct OutMachine {
    id52: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    addrs: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allow_from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allow_shell: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    command: BTreeMap<String, OutCommand>,
}

#[derive(Serialize)]
struct OutCommand {
    command: String,
    allow_from: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    allow_args: bool,
}

#[derive(Serialize)]
struct OutGroup {
    members: String,
}

fn list(principals: &[Principal]) -> String {
    principals
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The machine.toml text for machine `alias` at config `version`, or `None`
/// when the cluster has no such machine.
pub fn machine_toml(config: &ClusterConfig, alias: &str, version: u64) -> Option<String> {
    let me = config.machines.get(alias)?;
    let mut machines: BTreeMap<String, OutMachine> = config
        .machines
        .iter()
        .map(|(a, m)| {
            let entry = OutMachine {
                id52: m.id52.to_string(),
                addrs: m.addrs.iter().map(ToString::to_string).collect(),
                ..OutMachine::default()
            };
            (a.clone(), entry)
        })
        .collect();

    let referenced: BTreeSet<&str> = me
        .allow_from
        .iter()
        .chain(me.allow_shell.iter().flatten())
        .chain(me.commands.values().flat_map(|r| &r.allow_from))
        .filter_map(|p| match p {
            Principal::Group(g) => Some(g.as_str()),
            _ => None,
        })
        .collect();

    let own = machines.get_mut(alias).expect("alias is a machine");
    own.allow_from = Some(list(&me.allow_from));
    own.allow_shell = me.allow_shell.as_deref().map(list);
    own.username = me.username.clone();
    own.command = me
        .commands
        .iter()
        .map(|(name, rule)| {
            let out = OutCommand {
                command: rule.command.clone(),
                allow_from: list(&rule.allow_from),
                username: rule.username.clone(),
                allow_args: rule.allow_args,
            };
            (name.clone(), out)
        })
        .collect();

    let group = referenced
        .into_iter()
        .map(|g| {
            let ids = acl::expand(config, &[Principal::Group(g.to_owned())]);
            let members = ids
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",");
            (g.to_owned(), OutGroup { members })
        })
        .collect();

    let out = Out {
        received: OutReceived { version },
        cluster_manager: OutCm {
            id52: config.cluster_manager.to_string(),
            addrs: config.cm_addrs.iter().map(ToString::to_string).collect(),
        },
        machine: machines,
        group,
    };
    let body = toml::to_string(&out).expect("personalized config serializes");
    Some(format!(
        "# Sent by the cluster manager; malai replaces this file on every change.\n# Edit cluster.toml on the cluster manager instead.\n\n{body}"
    ))
}
