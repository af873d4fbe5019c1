//! Personalization: from the CM's cluster.toml, the machine.toml one machine
//! receives. It holds the cluster-manager section (without its editors), the
//! directory of machines (alias, id52, address hints), that machine's own
//! rules with its command rules, and the groups those rules name, resolved to
//! id52s. Rules of other machines are not sent.
//!
//! Services: a machine receives those it hosts, with their `allow_from` (and
//! the groups it names, resolved), so it can decide; and those whose
//! `allow_from` admits it, so its forwards know which machine to dial. For
//! the latter, `allow_from` is written as the machine's own alias: it learns
//! that it may reach the service, not who else may.
//!
//! The cluster's relay (`[network]`), `[revoked]` and `max_config_age` go
//! to every machine as they are.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::acl;
use crate::config::{ClusterConfig, Principal};

/// The machine.toml keys this build understands. 1: the first release.
/// 2: `allow_pty` on command rules, the cluster's `[network]` relay, and
/// `[received] protocol`. 3: `memory_max`, `tasks_max`, `cpu_quota` on a
/// machine and its command rules. 4: `[revoked]` and `max_config_age`.
/// 5: no new key; the machine follows a handover of the CM's key (a
/// `handover` request), which `identity rotate` on the CM checks for.
/// 6: `[rights.MACHINE]` and `[machine_groups]`, this device's own rights
/// on the other machines (fan-out `@all` and `@GROUP`).
/// 7: `match` on command rules, `sftp_server` on a machine, and exec
/// requests that may carry `user` (`-l`) and `subsystem` (`-s sftp`).
/// 8: `record` and `record_input` on a machine and its rules, and the
/// top-level `recorder`.
/// A machine that does not say (a first-release one) is 1.
pub const PROTOCOL: u32 = 8;
/// The first protocol whose machines follow a handover of the CM's key.
pub const FOLLOWS_HANDOVERS: u32 = 5;

#[derive(Serialize)]
struct Out {
    /// A top-level key: before every table.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_config_age: Option<String>,
    /// A top-level key too (protocol 8).
    #[serde(skip_serializing_if = "Option::is_none")]
    recorder: Option<String>,
    received: OutReceived,
    #[serde(rename = "cluster-manager")]
    cluster_manager: OutCm,
    machine: BTreeMap<String, OutMachine>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    group: BTreeMap<String, OutGroup>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    service: BTreeMap<String, OutService>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<OutNetwork>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked: Option<OutRevoked>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    rights: BTreeMap<String, OutRights>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    machine_groups: BTreeMap<String, Vec<String>>,
}

/// This device's rights on another machine (protocol 6).
#[derive(Serialize)]
struct OutRights {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    any_command: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    shell: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    commands: Vec<String>,
    /// Protocol 7.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    matches: Vec<Vec<String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    services: Vec<String>,
}

#[derive(Serialize)]
struct OutRevoked {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    id52s: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unrevoked: Vec<String>,
}

/// The cluster's relay, which every member uses.
#[derive(Serialize)]
struct OutNetwork {
    relay: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    relay_ca: Option<String>,
}

#[derive(Serialize)]
struct OutService {
    machine: String,
    protocol: &'static str,
    port: u16,
    allow_from: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    inject_headers: Option<bool>,
}

#[derive(Serialize)]
struct OutReceived {
    version: u64,
    /// The protocol this text was written for (2 and later only: a
    /// first-release machine would refuse the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<u32>,
}

/// A machine.toml written for one machine and the protocol it understands,
/// with what was left out because it does not (each a phrase for status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    pub withheld: Vec<String>,
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
    #[serde(flatten)]
    limits: OutLimits,
    #[serde(skip_serializing_if = "Option::is_none")]
    sftp_server: Option<String>,
    #[serde(flatten)]
    recording: OutRecording,
}

/// `record` and `record_input` as written (protocol 8).
#[derive(Serialize, Default)]
struct OutRecording {
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    record_input: Option<bool>,
}

/// The recording settings for a machine that understands `protocol`;
/// below 8 they are left out and `what` is named in `withheld` (a machine
/// that cannot record does not: upgrade it before relying on `required`).
fn out_recording(
    r: &crate::config::RecordPolicy,
    protocol: u32,
    what: &str,
    withheld: &mut Vec<String>,
) -> OutRecording {
    if r.is_empty() {
        return OutRecording::default();
    }
    if protocol < 8 {
        withheld.push(format!("the recording settings of {what}"));
        return OutRecording::default();
    }
    OutRecording {
        record: r.record.map(crate::config::Record::as_str),
        record_input: r.record_input,
    }
}

/// `memory_max`, `tasks_max`, `cpu_quota` as written (protocol 3).
#[derive(Serialize, Default)]
struct OutLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_max: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tasks_max: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_quota: Option<String>,
}

/// The limits for a machine that understands `protocol`; below 3 they are
/// left out and `what` is named in `withheld`.
fn out_limits(
    limits: &crate::config::Limits,
    protocol: u32,
    what: &str,
    withheld: &mut Vec<String>,
) -> OutLimits {
    if limits.is_empty() {
        return OutLimits::default();
    }
    if protocol < 3 {
        withheld.push(format!("the limits of {what}"));
        return OutLimits::default();
    }
    let text = |l: &Option<crate::config::Limit>| l.as_ref().map(|l| l.text.clone());
    OutLimits {
        memory_max: text(&limits.memory_max),
        tasks_max: text(&limits.tasks_max),
        cpu_quota: text(&limits.cpu_quota),
    }
}

#[derive(Serialize)]
struct OutCommand {
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<String>,
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
    allow_from: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    allow_args: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    allow_pty: bool,
    #[serde(flatten)]
    limits: OutLimits,
    #[serde(flatten)]
    recording: OutRecording,
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

/// The machine.toml text for machine `alias` at config `version`, written
/// for a machine that understands `protocol` (`PROTOCOL`):
/// keys of a later protocol are left out and named in `withheld`. `None`
/// when the cluster has no such machine.
pub fn machine_toml(
    config: &ClusterConfig,
    alias: &str,
    version: u64,
    protocol: u32,
) -> Option<Rendered> {
    let me = config.machines.get(alias)?;
    let mut withheld = Vec::new();
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

    let hosted: Vec<(&String, &crate::config::Service)> = config
        .services
        .iter()
        .filter(|(_, s)| s.machine == alias)
        .collect();
    let reachable = config.services.iter().filter(|(_, s)| {
        s.machine != alias && acl::matching(config, &s.allow_from, &me.id52).is_some()
    });
    let mut service: BTreeMap<String, OutService> = BTreeMap::new();
    for (name, s) in &hosted {
        service.insert((*name).clone(), out_service(s, list(&s.allow_from)));
    }
    for (name, s) in reachable {
        service.insert(name.clone(), out_service(s, alias.to_owned()));
    }

    let referenced: BTreeSet<&str> = me
        .allow_from
        .iter()
        .chain(me.allow_shell.iter().flatten())
        .chain(me.commands.values().flat_map(|r| &r.allow_from))
        .chain(hosted.iter().flat_map(|(_, s)| &s.allow_from))
        .filter_map(|p| match p {
            Principal::Group(g) => Some(g.as_str()),
            _ => None,
        })
        .collect();

    let own = machines.get_mut(alias).expect("alias is a machine");
    *own = own_rules(me, protocol, &mut withheld);
    if config.recorder.is_some() && protocol < 8 {
        withheld.push("recorder".into());
    }

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

    if config.relay.is_some() && protocol < 2 {
        withheld.push("the cluster's relay ([network])".to_owned());
    }
    let (max_config_age, revoked) = trust(config, protocol, &mut withheld);
    let (rights, machine_groups) = projection_for(config, alias, protocol, &mut withheld);
    let out = Out {
        max_config_age,
        recorder: config.recorder.clone().filter(|_| protocol >= 8),
        revoked,
        rights,
        machine_groups,
        received: OutReceived {
            version,
            protocol: (protocol >= 2).then_some(protocol),
        },
        cluster_manager: OutCm {
            id52: config.cluster_manager.to_string(),
            addrs: config.cm_addrs.iter().map(ToString::to_string).collect(),
        },
        machine: machines,
        group,
        service,
        network: config
            .relay
            .as_ref()
            .filter(|_| protocol >= 2)
            .map(|r| OutNetwork {
                relay: r.url.clone(),
                relay_ca: r.ca_pem.clone(),
            }),
    };
    let body = toml::to_string(&out).expect("personalized config serializes");
    Some(Rendered {
        text: format!(
            "# Sent by the cluster manager; malai replaces this file on every change.\n# Edit cluster.toml on the cluster manager instead.\n\n{body}"
        ),
        withheld,
    })
}

/// `projection`, for a machine that understands `protocol`.
#[allow(clippy::type_complexity)]
fn projection_for(
    config: &ClusterConfig,
    alias: &str,
    protocol: u32,
    withheld: &mut Vec<String>,
) -> (BTreeMap<String, OutRights>, BTreeMap<String, Vec<String>>) {
    let mut projected = projection(config, alias);
    if protocol >= 7 {
        return projected;
    }
    if protocol == 6 {
        let mut any = false;
        for rights in projected.0.values_mut() {
            any |= !std::mem::take(&mut rights.matches).is_empty();
        }
        if any {
            withheld.push("match rules in this device's rights on other machines".into());
        }
        projected.0.retain(|_, r| {
            r.any_command || r.shell || !r.commands.is_empty() || !r.services.is_empty()
        });
        return projected;
    }
    if !projected.0.is_empty() {
        withheld
            .push("this device's rights on other machines (fan-out @all and @GROUP)".to_owned());
    }
    Default::default()
}

/// What machine `alias` may do on each other machine, as the ACL decides
/// it (never the rules themselves), and each group's machines among them.
fn projection(
    config: &ClusterConfig,
    alias: &str,
) -> (BTreeMap<String, OutRights>, BTreeMap<String, Vec<String>>) {
    let Some(me) = config.machines.get(alias).map(|m| m.id52) else {
        return Default::default();
    };
    let mut rights = BTreeMap::new();
    for other in config.machines.keys().filter(|a| *a != alias) {
        let r = acl::rights(config, other, &me);
        if r.any() {
            let out = OutRights {
                any_command: r.any_command,
                shell: r.shell,
                commands: r.commands,
                matches: r.matches,
                services: r.services,
            };
            rights.insert(other.clone(), out);
        }
    }
    let mut groups = BTreeMap::new();
    for name in config.groups.keys() {
        let ids = acl::expand(config, &[Principal::Group(name.clone())]);
        let members: Vec<String> = config
            .machines
            .iter()
            .filter(|(a, m)| ids.contains(&m.id52) && (rights.contains_key(*a) || *a == alias))
            .map(|(a, _)| a.clone())
            .collect();
        if !members.is_empty() {
            groups.insert(name.clone(), members);
        }
    }
    (rights, groups)
}

/// The config a machine removed from the cluster receives at `version`:
/// the cluster manager and nothing else, so that it runs nothing and
/// admits nobody but the CM. Written in the first release's keys, which
/// every machine understands.
pub fn farewell_toml(config: &ClusterConfig, version: u64) -> String {
    let out = Out {
        max_config_age: None,
        recorder: None,
        received: OutReceived {
            version,
            protocol: None,
        },
        cluster_manager: OutCm {
            id52: config.cluster_manager.to_string(),
            addrs: config.cm_addrs.iter().map(ToString::to_string).collect(),
        },
        machine: BTreeMap::new(),
        group: BTreeMap::new(),
        service: BTreeMap::new(),
        network: None,
        revoked: None,
        rights: BTreeMap::new(),
        machine_groups: BTreeMap::new(),
    };
    let body = toml::to_string(&out).expect("a farewell serializes");
    format!(
        "# Sent by the cluster manager: this machine was removed from the cluster.\n# It runs nothing for anyone until it is added again.\n\n{body}"
    )
}

/// `max_config_age` and `[revoked]` for a machine that understands
/// `protocol`; below 4 they are left out and named in `withheld`.
fn trust(
    config: &ClusterConfig,
    protocol: u32,
    withheld: &mut Vec<String>,
) -> (Option<String>, Option<OutRevoked>) {
    let has_revoked = !config.revoked.is_empty() || !config.unrevoked.is_empty();
    if protocol < 4 {
        if has_revoked {
            withheld.push("the [revoked] keys".to_owned());
        }
        if config.max_config_age.is_some() {
            withheld.push("max_config_age".to_owned());
        }
        return (None, None);
    }
    let ids = |set: &BTreeSet<crate::identity::Id52>| set.iter().map(ToString::to_string).collect();
    (
        config.max_config_age.map(crate::config::duration::format),
        has_revoked.then(|| OutRevoked {
            id52s: ids(&config.revoked),
            unrevoked: ids(&config.unrevoked),
        }),
    )
}

/// Machine `me`'s own entry with its rules, written for `protocol`.
fn own_rules(me: &crate::config::Machine, protocol: u32, withheld: &mut Vec<String>) -> OutMachine {
    if me.sftp_server.is_some() && protocol < 7 {
        withheld.push("sftp_server".into());
    }
    OutMachine {
        id52: me.id52.to_string(),
        addrs: me.addrs.iter().map(ToString::to_string).collect(),
        allow_from: Some(list(&me.allow_from)),
        allow_shell: me.allow_shell.as_deref().map(list),
        username: me.username.clone(),
        command: commands(me, protocol, withheld),
        limits: out_limits(&me.limits, protocol, "the machine", withheld),
        sftp_server: me.sftp_server.clone().filter(|_| protocol >= 7),
        recording: out_recording(&me.recording, protocol, "the machine", withheld),
    }
}

/// The machine's command rules, written for `protocol`; `allow_pty` is
/// left out below 2, a `match` rule below 7 (denied there, as unknown),
/// each named in `withheld`.
fn commands(
    me: &crate::config::Machine,
    protocol: u32,
    withheld: &mut Vec<String>,
) -> BTreeMap<String, OutCommand> {
    me.commands
        .iter()
        .filter_map(|(name, rule)| {
            if rule.exact && protocol < 7 {
                withheld.push(format!("match rule {name}"));
                return None;
            }
            if rule.allow_pty && protocol < 2 {
                withheld.push(format!("allow_pty of command {name}"));
            }
            let text = Some(rule.command.clone());
            let out = OutCommand {
                command: text.clone().filter(|_| !rule.exact),
                exact: text.filter(|_| rule.exact),
                allow_from: list(&rule.allow_from),
                username: rule.username.clone(),
                allow_args: rule.allow_args,
                allow_pty: rule.allow_pty && protocol >= 2,
                limits: out_limits(&rule.limits, protocol, &format!("command {name}"), withheld),
                recording: out_recording(
                    &rule.recording,
                    protocol,
                    &format!("command {name}"),
                    withheld,
                ),
            };
            Some((name.clone(), out))
        })
        .collect()
}

fn out_service(s: &crate::config::Service, allow_from: String) -> OutService {
    OutService {
        machine: s.machine.clone(),
        protocol: s.protocol.as_str(),
        port: s.port,
        allow_from,
        inject_headers: (s.protocol == crate::config::Protocol::Http).then_some(s.inject_headers),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileKind, cluster};
    use crate::identity::Identity;
    use std::path::Path;

    /// web01 hosts db (admins) and admin (laptop); laptop may reach admin;
    /// cm may reach nothing.
    fn company() -> (ClusterConfig, [crate::identity::Id52; 4]) {
        let ids = [(); 4].map(|_| Identity::generate().id52());
        let text = format!(
            "[cluster-manager]\nid52 = \"{cm}\"\n\
             [machine.cm]\nid52 = \"{cm}\"\n\
             [machine.web01]\nid52 = \"{web}\"\n\
             [machine.laptop]\nid52 = \"{lap}\"\n\
             [group.admins]\nmembers = \"{alice}\"\n\
             [service.db]\nmachine = \"web01\"\nprotocol = \"tcp\"\nport = 5432\nallow_from = \"admins\"\n\
             [service.admin]\nmachine = \"web01\"\nprotocol = \"http\"\nport = 8080\nallow_from = \"laptop,admins\"\ninject_headers = false\n",
            cm = ids[0],
            web = ids[1],
            lap = ids[2],
            alice = ids[3],
        );
        let config = cluster::parse(Path::new("cluster.toml"), &text, FileKind::Cluster).unwrap();
        (config, ids)
    }

    fn received(config: &ClusterConfig, alias: &str) -> ClusterConfig {
        let text = machine_toml(config, alias, 7, PROTOCOL).unwrap().text;
        cluster::parse(Path::new("machine.toml"), &text, FileKind::Machine).unwrap()
    }

    #[test]
    fn a_host_gets_its_services_with_their_acl_and_a_client_only_what_it_may_reach() {
        let (config, ids) = company();
        let [cm, web, lap, alice] = ids;

        let web01 = received(&config, "web01");
        assert_eq!(
            web01.services.keys().collect::<Vec<_>>(),
            ["admin", "db"],
            "the host gets both of its services"
        );
        for name in ["db", "admin"] {
            for peer in [cm, web, lap, alice] {
                assert_eq!(
                    acl::may_use_service(&web01, &web, &peer, name).is_allowed(),
                    acl::may_use_service(&config, &web, &peer, name).is_allowed(),
                    "web01 decides {name} for {peer} as the CM's file does"
                );
            }
        }
        assert!(!web01.services["admin"].inject_headers);

        let laptop = received(&config, "laptop");
        assert_eq!(laptop.services.keys().collect::<Vec<_>>(), ["admin"]);
        let admin = &laptop.services["admin"];
        assert_eq!(admin.machine, "web01");
        assert_eq!(admin.port, 8080);
        assert_eq!(
            admin.allow_from,
            vec![Principal::Machine("laptop".into())],
            "who else may reach it is not sent"
        );
        assert!(
            laptop.groups.is_empty(),
            "no group of web01's rules is sent"
        );
        // The laptop hosts nothing, so it admits nobody to anything.
        assert!(!acl::may_use_service(&laptop, &lap, &lap, "admin").is_allowed());

        assert!(received(&config, "cm").services.is_empty());
    }

    #[test]
    fn every_machine_gets_the_clusters_relay_and_its_ca() {
        let (config, _) = company();
        assert_eq!(received(&config, "web01").relay, None);
        let ca = include_str!("../tests/fixtures/relay-ca.pem");
        let cm = config.cluster_manager;
        let text = format!(
            "[network]\nrelay = \"https://10.0.0.1:3443\"\nrelay_ca = \'\'\'\n{ca}\'\'\'\n\
             [cluster-manager]\nid52 = \"{cm}\"\n[machine.cm]\nid52 = \"{cm}\"\n"
        );
        let config = cluster::parse(Path::new("cluster.toml"), &text, FileKind::Cluster).unwrap();
        let relay = config.relay.clone().unwrap();
        assert_eq!(relay.url, "https://10.0.0.1:3443");
        assert_eq!(relay.ca().unwrap().len(), 1);
        assert_eq!(received(&config, "cm").relay, Some(relay));

        // A first-release machine (protocol 1) gets neither the relay nor
        // the key that names its protocol, and status learns why.
        let first = machine_toml(&config, "cm", 7, 1).unwrap();
        assert!(!first.text.contains("[network]"), "{}", first.text);
        assert!(!first.text.contains("protocol"), "{}", first.text);
        assert_eq!(first.withheld, ["the cluster's relay ([network])"]);
    }

    #[test]
    fn limits_reach_machines_that_understand_them_and_are_named_for_others() {
        let cm = Identity::generate().id52();
        let text = format!(
            "[cluster-manager]\nid52 = \"{cm}\"\n[machine.cm]\nid52 = \"{cm}\"\n\
             tasks_max = 64\nmemory_max = \"1G\"\n\
             [machine.cm.command.build]\ncommand = \"make\"\nallow_from = \"cm\"\ncpu_quota = \"50%\"\n"
        );
        let config = cluster::parse(Path::new("cluster.toml"), &text, FileKind::Cluster).unwrap();
        let now = machine_toml(&config, "cm", 3, PROTOCOL).unwrap();
        assert!(now.withheld.is_empty(), "{:?}", now.withheld);
        let got = cluster::parse(Path::new("machine.toml"), &now.text, FileKind::Machine).unwrap();
        assert_eq!(got.machines["cm"].limits, config.machines["cm"].limits);
        assert_eq!(
            got.machines["cm"].commands["build"].limits,
            config.machines["cm"].commands["build"].limits
        );
        // A protocol-2 machine would refuse the keys: left out, and named.
        let older = machine_toml(&config, "cm", 3, 2).unwrap();
        assert!(!older.text.contains("tasks_max"), "{}", older.text);
        assert!(!older.text.contains("cpu_quota"), "{}", older.text);
        assert_eq!(
            older.withheld,
            ["the limits of command build", "the limits of the machine"]
        );
    }

    #[test]
    fn revoked_keys_and_the_config_age_reach_machines_that_understand_them() {
        let (cm, lost, back) = (
            Identity::generate().id52(),
            Identity::generate().id52(),
            Identity::generate().id52(),
        );
        let text = format!(
            "max_config_age = \"90m\"\n\
             [revoked]\nid52s = [\"{lost}\"]\nunrevoked = [\"{back}\"]\n\
             [cluster-manager]\nid52 = \"{cm}\"\n[machine.cm]\nid52 = \"{cm}\"\n"
        );
        let config = cluster::parse(Path::new("cluster.toml"), &text, FileKind::Cluster).unwrap();
        let now = machine_toml(&config, "cm", 3, PROTOCOL).unwrap();
        assert!(now.withheld.is_empty(), "{:?}", now.withheld);
        let got = cluster::parse(Path::new("machine.toml"), &now.text, FileKind::Machine).unwrap();
        assert_eq!(got.revoked, [lost].into());
        assert_eq!(got.unrevoked, [back].into());
        assert_eq!(
            got.max_config_age,
            Some(std::time::Duration::from_secs(5400))
        );
        assert!(
            !got.known_peers().contains(&lost),
            "a revoked key is a stranger"
        );

        let older = machine_toml(&config, "cm", 3, 3).unwrap();
        assert!(!older.text.contains("revoked"), "{}", older.text);
        assert!(!older.text.contains("max_config_age"), "{}", older.text);
        assert_eq!(older.withheld, ["the [revoked] keys", "max_config_age"]);
    }
}
