//! Why the ACL engine decides as it does: for a peer, a machine and a
//! request, the engine's own decision, the principal list that decided
//! (its key in cluster.toml) and, when allowed, the chain of groups from
//! that list down to the peer (`on-call > admins > laptop`). What `malai acl
//! explain` prints and what a failing `[[test]]` names. The decision is
//! always the engine's (`acl`); this module only names the list it used.

use std::collections::BTreeSet;

use crate::acl::{self, Decision, Request};
use crate::config::{ClusterConfig, Principal};
use crate::identity::Id52;

/// What is asked: an argv, a shell, a service, editing the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    Argv(Vec<String>),
    Shell,
    Service(String),
    Edit,
}

impl Ask {
    /// `"shell"`, `"edit"`, `"service:NAME"`, or an argv written as a
    /// command line (split like a rule's `command`).
    pub fn parse(text: &str) -> Result<Ask, String> {
        match text {
            "shell" => return Ok(Ask::Shell),
            "edit" => return Ok(Ask::Edit),
            _ => {}
        }
        if let Some(name) = text.strip_prefix("service:") {
            return Ok(Ask::Service(name.to_owned()));
        }
        match shell_words::split(text) {
            Ok(argv) if !argv.is_empty() => Ok(Ask::Argv(argv)),
            Ok(_) => Err("an empty command".into()),
            Err(e) => Err(format!("cannot split {text:?} into arguments: {e}")),
        }
    }
}

impl std::fmt::Display for Ask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ask::Argv(argv) => write!(f, "{:?}", shell_words::join(argv)),
            Ask::Shell => f.write_str("a shell"),
            Ask::Service(name) => write!(f, "service {name}"),
            Ask::Edit => f.write_str("editing the config"),
        }
    }
}

/// The engine's decision and the list it came from.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub decision: Decision,
    /// The key of the list that decided (`machine.web01.allow_from`,
    /// `service.db.allow_from`, `cluster-manager.config_editors`,
    /// `revoked`); empty when none could (the host is not a machine).
    pub list: String,
    /// When allowed: the principal of `list` that admits the peer and the
    /// groups down to it, outermost first; the last names the peer.
    pub chain: Vec<String>,
}

impl Explanation {
    pub fn allowed(&self) -> bool {
        self.decision.is_allowed()
    }
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.decision {
            Decision::Allow(_) => {
                write!(f, "allowed by {} ({})", self.list, self.chain.join(" > "))
            }
            Decision::Deny(reason) => write!(f, "denied: {reason}"),
        }
    }
}

/// Explains what `peer` may do on machine `alias` (any machine for `Edit`).
pub fn explain(config: &ClusterConfig, alias: &str, peer: &Id52, ask: &Ask) -> Explanation {
    let host = config.machines.get(alias).map(|m| m.id52);
    let (decision, list) = match (ask, host) {
        (Ask::Edit, _) => (
            acl::may_edit_config(config, peer),
            deciding(
                config,
                peer,
                "cluster-manager.config_editors".into(),
                &config.config_editors,
            ),
        ),
        (_, None) => {
            let why = format!("there is no machine {alias:?} in the config");
            return Explanation {
                decision: Decision::Deny(why),
                list: String::new(),
                chain: Vec::new(),
            };
        }
        (Ask::Shell, Some(host)) => {
            let m = &config.machines[alias];
            let (key, list) = match &m.allow_shell {
                Some(list) => ("allow_shell", list),
                None => ("allow_from", &m.allow_from),
            };
            let decision = acl::decide(config, &host, peer, Request::Shell);
            (
                decision,
                deciding(config, peer, format!("machine.{alias}.{key}"), list),
            )
        }
        (Ask::Argv(argv), Some(host)) => {
            let m = &config.machines[alias];
            let (key, list) = match acl::rule_for(m, argv) {
                Some((name, rule)) => (
                    format!("machine.{alias}.command.{name}.allow_from"),
                    &rule.allow_from,
                ),
                None => (format!("machine.{alias}.allow_from"), &m.allow_from),
            };
            let decision = acl::decide(config, &host, peer, Request::Exec(argv));
            (decision, deciding(config, peer, key, list))
        }
        (Ask::Service(name), Some(host)) => {
            let decision = acl::may_use_service(config, &host, peer, name);
            let key = format!("service.{name}.allow_from");
            let list = config.services.get(name).map_or(&[][..], |s| &s.allow_from);
            (decision, deciding(config, peer, key, list))
        }
    };
    let (key, chain) = list;
    let allowed = decision.is_allowed();
    Explanation {
        decision,
        list: if config.revoked.contains(peer) {
            "revoked".to_owned()
        } else {
            key
        },
        chain: chain.filter(|_| allowed).unwrap_or_default(),
    }
}

/// The list's key, and the chain to `peer` when the list admits it.
fn deciding(
    config: &ClusterConfig,
    peer: &Id52,
    key: String,
    list: &[Principal],
) -> (String, Option<Vec<String>>) {
    let chain = list
        .iter()
        .find_map(|p| chain(config, p, peer, &mut BTreeSet::new()));
    (key, chain)
}

/// How `principal` admits `peer`: its name, then (for a group) the chain
/// of the member that does; `None` when it does not.
fn chain<'a>(
    config: &'a ClusterConfig,
    principal: &'a Principal,
    peer: &Id52,
    visiting: &mut BTreeSet<&'a str>,
) -> Option<Vec<String>> {
    match principal {
        Principal::Everyone => config
            .machine_by_id52(peer)
            .map(|(alias, _)| vec!["*".to_owned(), alias.to_owned()]),
        Principal::Id52(id) => (id == peer).then(|| vec![id.to_string()]),
        Principal::Machine(alias) => config
            .machines
            .get(alias)
            .filter(|m| m.id52 == *peer)
            .map(|_| vec![alias.clone()]),
        Principal::Group(name) => {
            if !visiting.insert(name) {
                return None;
            }
            let members = config.groups.get(name)?;
            let found = members
                .iter()
                .find_map(|m| chain(config, m, peer, visiting));
            visiting.remove(name.as_str());
            found.map(|rest| std::iter::once(name.clone()).chain(rest).collect())
        }
    }
}

/// A peer named as in a `[[test]]` or on the command line: a machine
/// alias or an id52.
pub fn peer(config: &ClusterConfig, name: &str) -> Result<Id52, String> {
    if let Some(m) = config.machines.get(name) {
        return Ok(m.id52);
    }
    name.parse()
        .map_err(|_| format!("{name:?} is neither a machine of the config nor an id52"))
}
