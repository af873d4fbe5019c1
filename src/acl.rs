//! The ACL engine: a pure function of (config, this machine, peer, request)
//! to a decision with the reason a person can audit. No I/O, so it is
//! property-tested against a naive reference evaluator.
//!
//! Semantics (DESIGN.md): default deny. A `match` rule decides, alone, for
//! exactly its argv; a command rule decides, alone, for its command name;
//! otherwise the machine's `allow_from` decides for any argv.
//! A shell (`Request::Shell`) is decided by `allow_shell`, which defaults to
//! `allow_from`; an empty argv is denied. A PTY is a shell's: an argv on a
//! PTY (`Request::PtyExec`) needs a command rule with `allow_pty`, or, for
//! any other argv, both `allow_from` and `allow_shell`, because a program on
//! a terminal (a pager, an editor) can start a shell. A service (`[service.NAME]`) is
//! reached by the peers of its `allow_from`, on the machine that hosts it.
//! A key in `[revoked]` is refused everything, whatever the rules say.

use std::collections::BTreeSet;

use crate::config::{ClusterConfig, Machine, Principal};
use crate::identity::Id52;

/// What a peer asks a machine to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// Run this argv; its first word may name a command rule.
    Exec(&'a [String]),
    /// Run this argv on a PTY (a terminal program).
    PtyExec(&'a [String]),
    /// An interactive shell on a PTY.
    Shell,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Grant),
    Deny(String),
}

/// What an allowed request runs, and why it was allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The argv to run: the request's own, or a command rule's expansion.
    /// Empty for a shell.
    pub argv: Vec<String>,
    /// Run as this user; `None` means as the daemon's own user.
    pub username: Option<String>,
    /// The command rule that allowed it, if one did: a rule runs with
    /// pagers and editors neutralised (see `command::spawn`).
    pub rule: Option<String>,
    /// The limits of the command's own control group (the rule's over the
    /// machine's).
    pub limits: crate::config::Limits,
    /// Whether it is recorded (the rule's over the machine's).
    pub recording: crate::config::RecordPolicy,
    pub reason: String,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    pub fn reason(&self) -> &str {
        match self {
            Decision::Allow(g) => &g.reason,
            Decision::Deny(r) => r,
        }
    }
}

/// Decides whether `peer` may do `request` on the machine `host`.
pub fn decide(config: &ClusterConfig, host: &Id52, peer: &Id52, request: Request) -> Decision {
    if let Some(denied) = revoked(config, peer) {
        return denied;
    }
    let Some((alias, machine)) = config.machine_by_id52(host) else {
        return Decision::Deny(
            "this device is not listed as a machine of the cluster, so it runs nothing".into(),
        );
    };
    decide_on(config, alias, machine, peer, request)
}

/// `decide` on the machine `alias` already found (not revoked checked).
fn decide_on(
    config: &ClusterConfig,
    alias: &str,
    machine: &Machine,
    peer: &Id52,
    request: Request,
) -> Decision {
    match request {
        Request::Shell => {
            let (list, key) = shell_list(machine);
            match matching(config, list, peer) {
                Some(p) => Decision::Allow(Grant {
                    argv: Vec::new(),
                    username: machine.username.clone(),
                    rule: None,
                    limits: machine.limits.clone(),
                    recording: machine.recording,
                    reason: format!("shell allowed by machine.{alias}.{key} ({p})"),
                }),
                None => Decision::Deny(format!(
                    "peer is not in machine.{alias}.{key}, so it may not open a shell"
                )),
            }
        }
        Request::Exec(argv) => exec(config, alias, machine, peer, argv, false),
        Request::PtyExec(argv) => exec(config, alias, machine, peer, argv, true),
    }
}

/// Who may have a PTY on `machine` (`allow_shell`, by default
/// `allow_from`), and the key that says so.
fn shell_list(machine: &Machine) -> (&[Principal], &'static str) {
    match &machine.allow_shell {
        Some(list) => (list, "allow_shell"),
        None => (&machine.allow_from, "allow_from"),
    }
}

/// Decides an argv, on a PTY or not, on the machine `alias`.
fn exec(
    config: &ClusterConfig,
    alias: &str,
    machine: &Machine,
    peer: &Id52,
    argv: &[String],
    pty: bool,
) -> Decision {
    let Some(first) = argv.first() else {
        return Decision::Deny("empty command".into());
    };
    if let Some((name, rule)) = rule_for(machine, argv) {
        return by_rule(config, (alias, machine), (name, rule), peer, argv, pty);
    }
    let Some(p) = matching(config, &machine.allow_from, peer) else {
        return Decision::Deny(format!(
            "peer is not in machine.{alias}.allow_from and no command rule named {first:?} allows it"
        ));
    };
    let mut reason = format!("machine.{alias}.allow_from allows {p}");
    if pty {
        let (list, key) = shell_list(machine);
        let Some(s) = matching(config, list, peer) else {
            return Decision::Deny(format!(
                "peer is not in machine.{alias}.allow_shell, so it may not run a command on a PTY"
            ));
        };
        reason = format!("{reason}; PTY allowed by machine.{alias}.{key} ({s})");
    }
    Decision::Allow(Grant {
        argv: argv.to_vec(),
        username: machine.username.clone(),
        rule: None,
        limits: machine.limits.clone(),
        recording: machine.recording,
        reason,
    })
}

/// The command rule that decides `argv` on `machine`, if one does: a
/// `match` rule of exactly that argv, else the rule its first word names.
pub fn rule_for<'m>(
    machine: &'m Machine,
    argv: &[String],
) -> Option<(&'m String, &'m crate::config::CommandRule)> {
    let first = argv.first()?;
    machine
        .commands
        .iter()
        .find(|(_, r)| r.exact && r.argv == argv)
        .or_else(|| {
            machine
                .commands
                .get_key_value(first)
                .filter(|(_, r)| !r.exact)
        })
}

/// Decides `argv` by the command rule `name` of machine `alias`, alone: a
/// `match` rule runs exactly the argv, a named rule its own argv with the
/// request's extra arguments (when it allows them).
fn by_rule(
    config: &ClusterConfig,
    (alias, machine): (&str, &Machine),
    (name, rule): (&String, &crate::config::CommandRule),
    peer: &Id52,
    argv: &[String],
    pty: bool,
) -> Decision {
    let Some(p) = matching(config, &rule.allow_from, peer) else {
        let exactly = if rule.exact {
            " (its match is exactly this command)"
        } else {
            ""
        };
        return Decision::Deny(format!(
            "peer is not in machine.{alias}.command.{name}.allow_from{exactly}"
        ));
    };
    if !rule.exact && argv.len() > 1 && !rule.allow_args {
        return Decision::Deny(format!(
            "command rule {name:?} runs exactly its command; extra arguments need allow_args = true"
        ));
    }
    if pty && !rule.allow_pty {
        return Decision::Deny(format!(
            "command rule {name:?} may not run on a PTY (a terminal program can start a shell); \
             run it without -t, or set allow_pty = true on machine.{alias}.command.{name}"
        ));
    }
    let (run, kind) = if rule.exact {
        (argv.to_vec(), "match")
    } else {
        let run = rule.argv.iter().chain(&argv[1..]).cloned().collect();
        (run, "command")
    };
    Decision::Allow(Grant {
        argv: run,
        username: rule.username.clone().or_else(|| machine.username.clone()),
        rule: Some(name.clone()),
        limits: rule.limits.over(&machine.limits),
        recording: rule.recording.over(&machine.recording),
        reason: format!("{kind} rule machine.{alias}.command.{name} allows {p}"),
    })
}

/// Whether `peer` may copy files to or from the machine `host`, which then
/// runs `argv` (its copy helper): only a peer that may run any command
/// there (`allow_from`); a command rule is not enough. Runs as the
/// machine's `username`, with its limits.
pub fn copy(config: &ClusterConfig, host: &Id52, peer: &Id52, argv: &[String]) -> Decision {
    if let Some(denied) = revoked(config, peer) {
        return denied;
    }
    let Some((alias, machine)) = config.machine_by_id52(host) else {
        return Decision::Deny(
            "this device is not listed as a machine of the cluster, so it runs nothing".into(),
        );
    };
    match matching(config, &machine.allow_from, peer) {
        Some(p) => Decision::Allow(Grant {
            argv: argv.to_vec(),
            username: machine.username.clone(),
            rule: None,
            limits: machine.limits.clone(),
            // A copy is a file transfer: logged, never recorded.
            recording: Default::default(),
            reason: format!("copy allowed by machine.{alias}.allow_from ({p})"),
        }),
        None => Decision::Deny(format!(
            "peer is not in machine.{alias}.allow_from, so it may not copy files (a command rule is not enough)"
        )),
    }
}

/// What `peer` may do on machine `alias`, as this config's rules decide:
/// any argv that names no rule (`allow_from`), a shell, the command rules
/// it may run, the services there it may reach. What the CM sends each
/// device about the others (`personalize`), and what `malai ls` shows.
pub fn rights(config: &ClusterConfig, alias: &str, peer: &Id52) -> crate::config::Rights {
    let Some(machine) = config.machines.get(alias) else {
        return crate::config::Rights::default();
    };
    if config.revoked.contains(peer) {
        return crate::config::Rights::default();
    }
    crate::config::Rights {
        any_command: matching(config, &machine.allow_from, peer).is_some(),
        // On the machine at hand: `decide` would find it by id52 again, a
        // scan of every machine for each of them (the CM projects every
        // machine's rights for every other at each config round).
        shell: decide_on(config, alias, machine, peer, Request::Shell).is_allowed(),
        commands: machine
            .commands
            .iter()
            .filter(|(_, r)| !r.exact && matching(config, &r.allow_from, peer).is_some())
            .map(|(name, _)| name.clone())
            .collect(),
        matches: machine
            .commands
            .values()
            .filter(|r| r.exact && matching(config, &r.allow_from, peer).is_some())
            .map(|r| r.argv.clone())
            .collect(),
        services: config
            .services
            .iter()
            .filter(|(name, s)| {
                s.machine == alias
                    && may_use_service(config, &machine.id52, peer, name).is_allowed()
            })
            .map(|(name, _)| name.clone())
            .collect(),
    }
}

/// Whether `peer` may download and upload the cluster config.
pub fn may_edit_config(config: &ClusterConfig, peer: &Id52) -> Decision {
    if let Some(denied) = revoked(config, peer) {
        return denied;
    }
    match matching(config, &config.config_editors, peer) {
        Some(p) => Decision::Allow(Grant {
            argv: Vec::new(),
            username: None,
            rule: None,
            limits: crate::config::Limits::default(),
            recording: Default::default(),
            reason: format!("cluster-manager.config_editors allows {p}"),
        }),
        None => Decision::Deny("peer is not in cluster-manager.config_editors".into()),
    }
}

/// Whether `peer` may reach the service `name` on this device `host`: the
/// service must exist, be hosted here, and admit the peer.
pub fn may_use_service(config: &ClusterConfig, host: &Id52, peer: &Id52, name: &str) -> Decision {
    if let Some(denied) = revoked(config, peer) {
        return denied;
    }
    let Some(service) = config.services.get(name) else {
        return Decision::Deny(format!("no service {name:?} in this machine's config"));
    };
    let hosted_here = config
        .machines
        .get(&service.machine)
        .is_some_and(|m| m.id52 == *host);
    if !hosted_here {
        return Decision::Deny(format!(
            "service {name:?} is hosted by machine {:?}, not by this one",
            service.machine
        ));
    }
    match matching(config, &service.allow_from, peer) {
        Some(p) => Decision::Allow(Grant {
            argv: Vec::new(),
            username: None,
            rule: None,
            limits: crate::config::Limits::default(),
            recording: Default::default(),
            reason: format!("service.{name}.allow_from allows {p}"),
        }),
        None => Decision::Deny(format!("peer is not in service.{name}.allow_from")),
    }
}

/// The denial of a revoked key, which no rule can allow.
fn revoked(config: &ClusterConfig, peer: &Id52) -> Option<Decision> {
    config
        .revoked
        .contains(peer)
        .then(|| Decision::Deny("this key is revoked ([revoked] in the cluster's config)".into()))
}

/// The first principal of `list` that includes `peer`, if any.
pub fn matching<'a>(
    config: &ClusterConfig,
    list: &'a [Principal],
    peer: &Id52,
) -> Option<&'a Principal> {
    list.iter()
        .find(|p| includes(config, p, peer, &mut BTreeSet::new()))
}

/// Whether `principal` includes `peer`. `visiting` guards against a cycle,
/// which validation already refuses.
fn includes<'a>(
    config: &'a ClusterConfig,
    principal: &'a Principal,
    peer: &Id52,
    visiting: &mut BTreeSet<&'a str>,
) -> bool {
    match principal {
        Principal::Everyone => config.machines.values().any(|m| m.id52 == *peer),
        Principal::Id52(id) => id == peer,
        Principal::Machine(alias) => config.machines.get(alias).is_some_and(|m| m.id52 == *peer),
        Principal::Group(name) => {
            if !visiting.insert(name) {
                return false;
            }
            let found = config
                .groups
                .get(name)
                .is_some_and(|members| members.iter().any(|m| includes(config, m, peer, visiting)));
            visiting.remove(name.as_str());
            found
        }
    }
}

/// Every id52 a principal list stands for, with groups expanded: what
/// personalization writes into a machine's groups.
pub fn expand(config: &ClusterConfig, list: &[Principal]) -> BTreeSet<Id52> {
    let mut out = BTreeSet::new();
    let mut stack: Vec<&Principal> = list.iter().collect();
    let mut seen_groups = BTreeSet::new();
    while let Some(p) = stack.pop() {
        match p {
            Principal::Everyone => out.extend(config.machines.values().map(|m| m.id52)),
            Principal::Id52(id) => {
                out.insert(*id);
            }
            Principal::Machine(alias) => out.extend(config.machines.get(alias).map(|m| m.id52)),
            Principal::Group(name) => {
                if seen_groups.insert(name) {
                    stack.extend(config.groups.get(name).into_iter().flatten());
                }
            }
        }
    }
    out
}
