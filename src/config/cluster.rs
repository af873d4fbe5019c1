//! `cluster.toml` (the CM's master config) and `machine.toml` (what a machine
//! receives from its CM) share one schema: parsed by serde with unknown keys
//! refused, then validated into a `ClusterConfig` whose every error points at
//! `file:line:column`. `[service.NAME]` tables name a port on one machine
//! that peers in the service's `allow_from` may reach (see `forward`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::diag::{Diagnostic, Diagnostics, Source};
use super::limits::{self, Limit, Limits};
use super::names::{Principal, looks_like_id52, name_error, split_list, username_ok};
use crate::identity::Id52;

/// Which of the two files is being read: they differ only in the `[received]`
/// table, which a machine.toml must have and a cluster.toml must not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Cluster,
    Machine,
}

/// A validated cluster.toml or machine.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub cluster_manager: Id52,
    /// Address hints for the CM, so machines can reach it without discovery.
    pub cm_addrs: Vec<SocketAddr>,
    pub config_editors: Vec<Principal>,
    pub machines: BTreeMap<String, Machine>,
    pub groups: BTreeMap<String, Vec<Principal>>,
    /// `[service.NAME]`: ports of machines that may be forwarded to peers.
    pub services: BTreeMap<String, Service>,
    /// machine.toml only: the version the CM signed this file as.
    pub received_version: Option<u64>,
    /// machine.toml only: the protocol it was written for (none: 1).
    pub received_protocol: Option<u32>,
    /// cluster.toml only: the `[[test]]` tables, checked against the rules
    /// by `policy::check` (never sent to machines).
    pub tests: Vec<PolicyTest>,
    /// `recorder = "MACHINE"`: where recordings go; `None`: the CM.
    pub recorder: Option<String>,
    /// `[network] relay` and `relay_ca`: the cluster's own relay, which
    /// every member uses unless its malai.toml says otherwise.
    pub relay: Option<super::OwnRelay>,
    /// `[revoked] id52s`: keys refused everywhere, over every rule. On a
    /// machine, also every key an earlier config revoked and no config has
    /// listed in `unrevoked` since (`cluster::revoked`).
    pub revoked: BTreeSet<Id52>,
    /// `[revoked] unrevoked`: keys a machine stops refusing.
    pub unrevoked: BTreeSet<Id52>,
    /// `max_config_age`: a machine that has not heard from its CM for
    /// longer refuses everyone but the CM.
    pub max_config_age: Option<std::time::Duration>,
    /// machine.toml only (`[rights.MACHINE]`): what this device may do on
    /// each other machine, as the CM projects that machine's rules (never
    /// the rules themselves); fan-out `@all` and `@GROUP` pick from it.
    pub rights: BTreeMap<String, Rights>,
    /// machine.toml only (`[machine_groups]`): each group's machines on
    /// which this device has some right.
    pub machine_groups: BTreeMap<String, Vec<String>>,
}

/// This device's rights on one other machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Rights {
    /// Its `allow_from` admits this device: any argv that names no rule.
    pub any_command: bool,
    pub shell: bool,
    /// The command rules this device may run there.
    pub commands: Vec<String>,
    /// The exact argvs `match` rules there let this device run (protocol 7).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<Vec<String>>,
    /// The services it hosts that this device may reach.
    pub services: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub id52: Id52,
    pub addrs: Vec<SocketAddr>,
    /// Who may run any argv here; empty (the default) denies everyone.
    pub allow_from: Vec<Principal>,
    /// Who may open a shell; `None` means the same as `allow_from`.
    pub allow_shell: Option<Vec<Principal>>,
    pub username: Option<String>,
    pub commands: BTreeMap<String, CommandRule>,
    /// Limits of each command run here (a rule's own override them).
    pub limits: Limits,
    /// What the `sftp` subsystem runs (`malai -s MACHINE sftp`); `None`:
    /// `DEFAULT_SFTP_SERVER`.
    pub sftp_server: Option<String>,
    /// Whether sessions here are recorded (a rule's own override it).
    pub recording: super::RecordPolicy,
}

/// Where Debian's openssh-sftp-server puts the program.
pub const DEFAULT_SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";

impl Machine {
    /// The program the `sftp` subsystem runs here.
    pub fn sftp_server(&self) -> &str {
        self.sftp_server.as_deref().unwrap_or(DEFAULT_SFTP_SERVER)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRule {
    /// The text as written, kept so personalization can write it back.
    pub command: String,
    pub argv: Vec<String>,
    /// A `match` rule: chosen when the request's argv is exactly `argv`
    /// (not by its name), and runs that argv.
    pub exact: bool,
    pub allow_from: Vec<Principal>,
    pub username: Option<String>,
    pub allow_args: bool,
    /// The rule may run on a PTY when the peer asks for one. Off by
    /// default: a program on a terminal (a pager, an editor) can open a
    /// shell, which would widen the rule to anything its user may do.
    pub allow_pty: bool,
    /// Limits of this rule's commands, over the machine's.
    pub limits: Limits,
    /// Recording of this rule's commands, over the machine's.
    pub recording: super::RecordPolicy,
}

/// A service: a port on 127.0.0.1 of one machine, reached by peers over
/// `malai/forward/1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The alias of the machine that hosts it.
    pub machine: String,
    pub protocol: Protocol,
    /// The port it listens on at 127.0.0.1 of that machine.
    pub port: u16,
    /// Who may reach it; empty (the default) admits nobody.
    pub allow_from: Vec<Principal>,
    /// http only: add the `malai-client-*` headers to each request (the
    /// client's own headers of those names are stripped either way).
    pub inject_headers: bool,
}

/// How the host treats a forwarded stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Bytes, piped both ways.
    Tcp,
    /// HTTP/1.1, proxied request by request so that headers can be added.
    Http,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
        }
    }
}

impl Rights {
    /// Whether it allows anything at all.
    pub fn any(&self) -> bool {
        self.any_command
            || self.shell
            || !self.commands.is_empty()
            || !self.matches.is_empty()
            || !self.services.is_empty()
    }
}

impl ClusterConfig {
    /// Every key this config names: the cluster manager, the machines, and
    /// each id52 written in a principal list, less the revoked ones. Anyone
    /// else is a stranger.
    pub fn known_peers(&self) -> BTreeSet<Id52> {
        let lists = self
            .machines
            .values()
            .flat_map(|m| {
                std::iter::once(&m.allow_from)
                    .chain(&m.allow_shell)
                    .chain(m.commands.values().map(|r| &r.allow_from))
            })
            .chain(self.groups.values())
            .chain(self.services.values().map(|s| &s.allow_from))
            .chain(std::iter::once(&self.config_editors));
        let named = lists.flatten().filter_map(|p| match p {
            Principal::Id52(id) => Some(*id),
            Principal::Everyone | Principal::Machine(_) | Principal::Group(_) => None,
        });
        std::iter::once(self.cluster_manager)
            .chain(self.machines.values().map(|m| m.id52))
            .chain(named)
            .filter(|id| !self.revoked.contains(id))
            .collect()
    }

    pub fn machine_by_id52(&self, id: &Id52) -> Option<(&str, &Machine)> {
        self.machines
            .iter()
            .find(|(_, m)| m.id52 == *id)
            .map(|(alias, m)| (alias.as_str(), m))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(rename = "cluster-manager")]
    cluster_manager: Option<Spanned<RawClusterManager>>,
    #[serde(default)]
    machine: BTreeMap<Spanned<String>, RawMachine>,
    #[serde(default)]
    group: BTreeMap<Spanned<String>, RawGroup>,
    #[serde(default)]
    service: BTreeMap<Spanned<String>, RawService>,
    received: Option<Spanned<RawReceived>>,
    network: Option<Spanned<RawClusterNetwork>>,
    revoked: Option<Spanned<RawRevoked>>,
    max_config_age: Option<Spanned<String>>,
    #[serde(default)]
    rights: BTreeMap<Spanned<String>, RawRights>,
    machine_groups: Option<Spanned<BTreeMap<String, Vec<String>>>>,
    #[serde(default)]
    test: Vec<Spanned<RawTest>>,
    recorder: Option<Spanned<String>>,
}

/// One `[[test]]`: what `peer` may (`allow`) and may not (`deny`) do on
/// `machine`. Each item keeps its position for the error that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyTest {
    pub peer: String,
    pub machine: String,
    /// (item, line, column): an argv, `shell`, `service:NAME`, `edit`.
    pub allow: Vec<(String, usize, usize)>,
    pub deny: Vec<(String, usize, usize)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    peer: Spanned<String>,
    machine: Spanned<String>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRights {
    #[serde(default)]
    any_command: bool,
    #[serde(default)]
    shell: bool,
    #[serde(default)]
    commands: Vec<String>,
    #[serde(default)]
    matches: Vec<Vec<String>>,
    #[serde(default)]
    services: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRevoked {
    #[serde(default)]
    id52s: Vec<Spanned<String>>,
    #[serde(default)]
    unrevoked: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClusterNetwork {
    relay: Option<Spanned<String>>,
    relay_ca: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClusterManager {
    id52: Spanned<String>,
    #[serde(default)]
    addrs: Vec<Spanned<String>>,
    config_editors: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMachine {
    id52: Spanned<String>,
    #[serde(default)]
    addrs: Vec<Spanned<String>>,
    allow_from: Option<Spanned<String>>,
    allow_shell: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    #[serde(default)]
    command: BTreeMap<Spanned<String>, RawCommand>,
    memory_max: Option<Spanned<toml::Value>>,
    tasks_max: Option<Spanned<toml::Value>>,
    cpu_quota: Option<Spanned<toml::Value>>,
    sftp_server: Option<Spanned<String>>,
    record: Option<Spanned<String>>,
    record_input: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommand {
    command: Option<Spanned<String>>,
    #[serde(rename = "match")]
    exact: Option<Spanned<String>>,
    allow_from: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    #[serde(default)]
    allow_args: bool,
    #[serde(default)]
    allow_pty: bool,
    memory_max: Option<Spanned<toml::Value>>,
    tasks_max: Option<Spanned<toml::Value>>,
    cpu_quota: Option<Spanned<toml::Value>>,
    record: Option<Spanned<String>>,
    record_input: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    machine: Spanned<String>,
    protocol: Spanned<String>,
    port: Spanned<i64>,
    allow_from: Option<Spanned<String>>,
    inject_headers: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    members: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReceived {
    version: u64,
    protocol: Option<u32>,
}

/// Parses and validates the text of a cluster.toml or machine.toml.
pub fn parse(path: &Path, text: &str, kind: FileKind) -> Result<ClusterConfig, Diagnostics> {
    let src = Source::new(path, text);
    let raw: RawFile = src.parse().map_err(|d| Diagnostics(vec![d]))?;
    Validator {
        src: &src,
        diags: Vec::new(),
        machines: raw.machine.keys().map(|k| k.get_ref().clone()).collect(),
        groups: raw.group.keys().map(|k| k.get_ref().clone()).collect(),
    }
    .run(raw, kind)
}

struct Validator<'a> {
    src: &'a Source<'a>,
    diags: Vec<Diagnostic>,
    machines: BTreeSet<String>,
    groups: BTreeSet<String>,
}

impl Validator<'_> {
    /// `[network]`: a relay URL, and the PEM of its CA only beside one.
    fn relay(&mut self, net: &Spanned<RawClusterNetwork>) -> Option<super::OwnRelay> {
        let raw = net.get_ref();
        let Some(url) = &raw.relay else {
            if let Some(ca) = &raw.relay_ca {
                self.err(
                    ca.span(),
                    "relay_ca without a relay",
                    "add relay = \"https://HOST:PORT\" for the relay this CA signed, or remove relay_ca",
                );
            }
            return None;
        };
        if let Err(e) = super::relay::check_url(url.get_ref()) {
            self.err(url.span(), e, "write relay = \"https://relay.example.com\"");
            return None;
        }
        let ca_pem = match &raw.relay_ca {
            None => None,
            Some(ca) => match super::relay::certificates(ca.get_ref()) {
                Ok(_) => Some(ca.get_ref().clone()),
                Err(e) => {
                    self.err(
                        ca.span(),
                        format!("relay_ca: {e}"),
                        "paste the PEM text of the CA certificate in a '\'\'\' string",
                    );
                    return None;
                }
            },
        };
        Some(super::OwnRelay {
            url: url.get_ref().clone(),
            ca_pem,
        })
    }

    /// `[received]`: the version (and protocol) the CM sent a machine.toml
    /// as; a cluster.toml has none.
    fn received(
        &mut self,
        received: Option<&Spanned<RawReceived>>,
        kind: FileKind,
    ) -> (Option<u64>, Option<u32>) {
        let version = match (kind, received) {
            (FileKind::Cluster, Some(r)) => {
                self.err(
                    r.span(),
                    "a [received] table belongs only in a machine.toml sent by the cluster manager",
                    "remove the [received] table from cluster.toml",
                );
                None
            }
            (FileKind::Cluster, None) => None,
            (FileKind::Machine, Some(r)) => Some(r.get_ref().version),
            (FileKind::Machine, None) => {
                self.err(
                    0..0,
                    "machine.toml has no [received] table with the version the cluster manager sent",
                    "do not edit machine.toml by hand: delete it and let the cluster manager send it again",
                );
                None
            }
        };
        let protocol = received
            .and_then(|r| r.get_ref().protocol)
            .filter(|_| kind == FileKind::Machine);
        (version, protocol)
    }

    fn max_config_age(&mut self, age: Option<&Spanned<String>>) -> Option<std::time::Duration> {
        let age = age?;
        super::duration::parse(age.get_ref())
            .map_err(|e| {
                self.err(
                    age.span(),
                    format!("max_config_age: {e}"),
                    "write how long a machine may go without word from its cluster manager, like max_config_age = \"1h\"",
                )
            })
            .ok()
    }

    /// `[rights.MACHINE]` and `[machine_groups]`: the CM writes them into
    /// a machine.toml; a cluster.toml says who may do what in its rules.
    #[allow(clippy::type_complexity)]
    fn projection(
        &mut self,
        raw: &RawFile,
        kind: FileKind,
    ) -> (BTreeMap<String, Rights>, BTreeMap<String, Vec<String>>) {
        let help = "remove it: the cluster manager writes each device's rights into its machine.toml from the rules (allow_from, command rules, services)";
        if kind == FileKind::Cluster {
            if let Some(name) = raw.rights.keys().next() {
                self.err(
                    name.span(),
                    "[rights] belongs in a machine.toml, not in cluster.toml",
                    help,
                );
            }
            if let Some(groups) = &raw.machine_groups {
                self.err(
                    groups.span(),
                    "[machine_groups] belongs in a machine.toml, not in cluster.toml",
                    help,
                );
            }
            return Default::default();
        }
        let mut rights = BTreeMap::new();
        for (name, r) in &raw.rights {
            if !self.machines.contains(name.get_ref()) {
                self.err(name.span(), format!("[rights.{}] names no machine", name.get_ref()), "do not edit machine.toml by hand: delete it and let the cluster manager send it again");
                continue;
            }
            rights.insert(
                name.get_ref().clone(),
                Rights {
                    any_command: r.any_command,
                    shell: r.shell,
                    commands: r.commands.clone(),
                    matches: r.matches.clone(),
                    services: r.services.clone(),
                },
            );
        }
        let groups = raw
            .machine_groups
            .as_ref()
            .map(|g| g.get_ref().clone())
            .unwrap_or_default();
        (rights, groups)
    }

    /// `[[test]]` tables: in cluster.toml only; each names a machine of the
    /// file. Whether they pass is `policy::check`'s, on the whole config.
    fn tests(&mut self, raw: &[Spanned<RawTest>], kind: FileKind) -> Vec<PolicyTest> {
        if kind == FileKind::Machine {
            if let Some(t) = raw.first() {
                self.err(t.span(), "[[test]] tables belong in cluster.toml on the cluster manager", "do not edit machine.toml by hand: delete it and let the cluster manager send it again");
            }
            return Vec::new();
        }
        let mut out = Vec::new();
        for t in raw {
            let t = t.get_ref();
            if !self.machines.contains(t.machine.get_ref()) {
                self.err(
                    t.machine.span(),
                    format!("[[test]] names no machine {:?}", t.machine.get_ref()),
                    "name a machine of this file (its alias, without the cluster)",
                );
                continue;
            }
            if t.allow.is_empty() && t.deny.is_empty() {
                self.err(
                    t.peer.span(),
                    "[[test]] has neither allow nor deny, so it checks nothing",
                    "add allow = [\"uptime\", \"shell\"] or deny = [\"service:db\", \"edit\"]",
                );
            }
            let items = |list: &[Spanned<String>]| -> Vec<(String, usize, usize)> {
                list.iter()
                    .map(|i| {
                        let (line, col) = self.src.line_col(i.span().start);
                        (i.get_ref().clone(), line, col)
                    })
                    .collect()
            };
            out.push(PolicyTest {
                peer: t.peer.get_ref().clone(),
                machine: t.machine.get_ref().clone(),
                allow: items(&t.allow),
                deny: items(&t.deny),
            });
        }
        out
    }

    fn err(&mut self, span: std::ops::Range<usize>, message: impl Into<String>, help: &str) {
        self.diags.push(self.src.diag(span, message, help));
    }

    fn run(mut self, raw: RawFile, kind: FileKind) -> Result<ClusterConfig, Diagnostics> {
        let (received_version, received_protocol) = self.received(raw.received.as_ref(), kind);

        let (cluster_manager, cm_addrs, config_editors) = match &raw.cluster_manager {
            None => {
                self.err(
                    0..0,
                    "missing [cluster-manager] table",
                    "add [cluster-manager] with id52 = \"<the cluster manager's id52>\"",
                );
                (None, Vec::new(), Vec::new())
            }
            Some(cm) => {
                let cm = cm.get_ref();
                let id = self.id52(&cm.id52, "the cluster manager's id52");
                let addrs = self.addrs(&cm.addrs);
                let editors = cm
                    .config_editors
                    .as_ref()
                    .map(|l| self.principals(l))
                    .unwrap_or_default();
                (id, addrs, editors)
            }
        };

        for name in raw.group.keys() {
            self.principal_name(name, "group name", "rename the group");
            if self.machines.contains(name.get_ref()) {
                self.err(
                    name.span(),
                    format!("group {:?} has the same name as a machine, so a principal of that name would be ambiguous", name.get_ref()),
                    "rename the group or the machine",
                );
            }
        }
        let mut groups = BTreeMap::new();
        let mut member_spans = HashMap::new();
        for (name, group) in &raw.group {
            groups.insert(name.get_ref().clone(), self.principals(&group.members));
            member_spans.insert(name.get_ref().clone(), group.members.span());
        }
        self.check_cycles(&groups, &member_spans);

        let mut machines = BTreeMap::new();
        let mut seen_ids: HashMap<Id52, String> = HashMap::new();
        for (alias, m) in &raw.machine {
            self.principal_name(alias, "machine alias", "rename the machine");
            let id = self.id52(&m.id52, "a machine's id52");
            if let Some(id) = id {
                if let Some(first) = seen_ids.get(&id) {
                    self.err(
                        m.id52.span(),
                        format!("id52 {id} is already the id52 of machine {first:?}"),
                        "each device has one id52 per cluster: remove one of the two entries",
                    );
                } else {
                    seen_ids.insert(id, alias.get_ref().clone());
                }
            }
            if let Some(machine) = self.machine(id, m) {
                machines.insert(alias.get_ref().clone(), machine);
            }
        }

        let relay = raw.network.as_ref().and_then(|n| self.relay(n));
        let (revoked, unrevoked) = match &raw.revoked {
            Some(r) => self.revoked(r.get_ref(), cluster_manager.as_ref()),
            None => Default::default(),
        };
        let max_config_age = self.max_config_age(raw.max_config_age.as_ref());

        let (rights, machine_groups) = self.projection(&raw, kind);

        let mut services = BTreeMap::new();
        for (name, s) in &raw.service {
            if let Some(service) = self.service(name, s) {
                services.insert(name.get_ref().clone(), service);
            }
        }

        let tests = self.tests(&raw.test, kind);
        let recorder = raw.recorder.as_ref().map(|r| {
            if !self.machines.contains(r.get_ref()) {
                self.err(r.span(), format!("recorder {:?} is not a machine of this file", r.get_ref()), "name a machine (its alias), or remove recorder to record on the cluster manager");
            }
            r.get_ref().clone()
        });
        if !self.diags.is_empty() {
            return Err(Diagnostics(self.diags));
        }
        Ok(ClusterConfig {
            cluster_manager: cluster_manager.expect("no diagnostics means the CM id52 parsed"),
            cm_addrs,
            config_editors,
            machines,
            groups,
            services,
            received_version,
            received_protocol,
            tests,
            recorder,
            relay,
            revoked,
            unrevoked,
            max_config_age,
            rights,
            machine_groups,
        })
    }

    /// `[revoked]`: two lists of id52s, neither naming the cluster manager
    /// (its key is replaced by rotation, never revoked), no key in both.
    fn revoked(&mut self, raw: &RawRevoked, cm: Option<&Id52>) -> (BTreeSet<Id52>, BTreeSet<Id52>) {
        let mut read = |list: &[Spanned<String>], key: &str| {
            let mut out: BTreeMap<Id52, std::ops::Range<usize>> = BTreeMap::new();
            for text in list {
                let Some(id) = self.id52(text, &format!("an entry of revoked.{key}")) else {
                    continue;
                };
                if Some(&id) == cm {
                    self.err(
                        text.span(),
                        format!("revoked.{key} names the cluster manager's own key"),
                        "the cluster manager's key is replaced with `malai identity rotate`, not revoked; see the README on a stolen CM key",
                    );
                    continue;
                }
                out.insert(id, text.span());
            }
            out
        };
        let revoked = read(&raw.id52s, "id52s");
        let unrevoked = read(&raw.unrevoked, "unrevoked");
        for (id, span) in &unrevoked {
            if revoked.contains_key(id) {
                self.err(
                    span.clone(),
                    format!("{id} is in both revoked.id52s and revoked.unrevoked"),
                    "keep it in id52s to refuse it, or only in unrevoked to admit it again",
                );
            }
        }
        (
            revoked.into_keys().collect(),
            unrevoked.into_keys().collect(),
        )
    }

    /// Validates the command rules of one machine.
    fn commands(
        &mut self,
        raw: &BTreeMap<Spanned<String>, RawCommand>,
    ) -> BTreeMap<String, CommandRule> {
        let mut commands = BTreeMap::new();
        for (name, c) in raw {
            if let Some(why) = name_error(name.get_ref()) {
                self.err(
                    name.span(),
                    format!("invalid command name {:?}: {why}", name.get_ref()),
                    "rename the command rule",
                );
            }
            let (text, key) = match (&c.command, &c.exact) {
                (Some(text), None) => (text, "command"),
                (None, Some(text)) => (text, "match"),
                (Some(_), Some(text)) => {
                    self.err(text.span(), format!("command rule {:?} has both command and match", name.get_ref()), "keep one: command runs its argv when the rule's name is asked for; match is chosen when the request is exactly its argv");
                    (text, "match")
                }
                (None, None) => {
                    self.err(name.span(), format!("command rule {:?} has neither command nor match", name.get_ref()), "add command = \"systemctl restart nginx\" (run by name) or match = \"git-upload-pack /srv/repo.git\" (this exact argv)");
                    continue;
                }
            };
            let exact = key == "match";
            let argv = match shell_words::split(text.get_ref()) {
                Ok(argv) if argv.is_empty() => {
                    self.err(text.span(), format!("command rule {:?} has an empty {key}", name.get_ref()), "write the program and its arguments, e.g. command = \"systemctl restart nginx\"");
                    Vec::new()
                }
                Ok(argv) => argv,
                Err(e) => {
                    self.err(text.span(), format!("command rule {:?}: cannot split the {key} into arguments: {e}", name.get_ref()), "close every quote; the command is split like a shell would, but never run by one");
                    Vec::new()
                }
            };
            if exact
                && let Some((other, _)) = commands
                    .iter()
                    .find(|(_, r): &(&String, &CommandRule)| r.exact && r.argv == argv)
            {
                self.err(
                    text.span(),
                    format!(
                        "command rules {other:?} and {:?} match the same argv",
                        name.get_ref()
                    ),
                    "merge them into one rule: one exact argv is decided by one rule",
                );
            }
            if exact && c.allow_args {
                self.err(text.span(), format!("command rule {:?}: allow_args has no meaning on a match rule, which is chosen only for exactly its argv", name.get_ref()), "remove allow_args, or use command = ... with allow_args = true");
            }
            let allow_from = match &c.allow_from {
                Some(l) => self.principals(l),
                None => {
                    self.err(
                        name.span(),
                        format!(
                            "command rule {:?} has no allow_from, so nobody could run it",
                            name.get_ref()
                        ),
                        "add allow_from = \"<group or machine>\" to the rule",
                    );
                    Vec::new()
                }
            };
            let username = c.username.as_ref().and_then(|u| self.username(u));
            commands.insert(
                name.get_ref().clone(),
                CommandRule {
                    command: text.get_ref().clone(),
                    argv,
                    exact,
                    allow_from,
                    username,
                    allow_args: c.allow_args,
                    allow_pty: c.allow_pty,
                    limits: self.limits([&c.memory_max, &c.tasks_max, &c.cpu_quota]),
                    recording: self.recording(c.record.as_ref(), c.record_input),
                },
            );
        }
        commands
    }

    /// Validates the rules of one machine; `None` when its id52 did not parse.
    fn machine(&mut self, id52: Option<Id52>, m: &RawMachine) -> Option<Machine> {
        let addrs = self.addrs(&m.addrs);
        let allow_from = m
            .allow_from
            .as_ref()
            .map(|l| self.principals(l))
            .unwrap_or_default();
        let allow_shell = m.allow_shell.as_ref().map(|l| self.principals(l));
        let username = m.username.as_ref().and_then(|u| self.username(u));
        let commands = self.commands(&m.command);
        let limits = self.limits([&m.memory_max, &m.tasks_max, &m.cpu_quota]);
        let sftp_server = m.sftp_server.as_ref().map(|path| {
            if !path.get_ref().starts_with('/') {
                self.err(
                    path.span(),
                    format!("sftp_server {:?} is not an absolute path", path.get_ref()),
                    "write the program's full path, e.g. sftp_server = \"/usr/lib/openssh/sftp-server\"",
                );
            }
            path.get_ref().clone()
        });
        Some(Machine {
            id52: id52?,
            addrs,
            allow_from,
            allow_shell,
            username,
            commands,
            limits,
            sftp_server,
            recording: self.recording(m.record.as_ref(), m.record_input),
        })
    }

    /// Validates one `[service.NAME]`; `None` when a part of it is wrong.
    fn service(&mut self, name: &Spanned<String>, s: &RawService) -> Option<Service> {
        let n = name.get_ref();
        let mut ok = true;
        if let Some(why) = name_error(n) {
            self.err(
                name.span(),
                format!("invalid service name {n:?}: {why}"),
                "rename the service; it is addressed as SERVICE.CLUSTER and SERVICE.CLUSTER.localhost",
            );
            ok = false;
        }
        if !self.machines.contains(s.machine.get_ref()) {
            self.err(
                s.machine.span(),
                format!(
                    "service {n:?} is on machine {:?}, which is not a machine of this file",
                    s.machine.get_ref()
                ),
                "write the alias of a [machine.NAME] of this file, or fix the spelling",
            );
            ok = false;
        }
        let protocol = match s.protocol.get_ref().as_str() {
            "tcp" => Some(Protocol::Tcp),
            "http" => Some(Protocol::Http),
            other => {
                self.err(
                    s.protocol.span(),
                    format!("service {n:?}: protocol {other:?} is neither \"tcp\" nor \"http\""),
                    "write protocol = \"tcp\" (bytes piped as they are) or \"http\" (HTTP/1.1 with malai-client-* headers)",
                );
                None
            }
        };
        let port = match u16::try_from(*s.port.get_ref()) {
            Ok(p) if p > 0 => p,
            _ => {
                self.err(
                    s.port.span(),
                    format!(
                        "port {} of service {n:?} is not between 1 and 65535",
                        s.port.get_ref()
                    ),
                    "write the TCP port the service listens on at 127.0.0.1 of its machine",
                );
                ok = false;
                0
            }
        };
        if let Some(inject) = &s.inject_headers
            && protocol == Some(Protocol::Tcp)
        {
            self.err(
                inject.span(),
                format!("service {n:?}: inject_headers applies only to protocol = \"http\""),
                "remove inject_headers, or set protocol = \"http\" if the service speaks HTTP",
            );
            ok = false;
        }
        let allow_from = s
            .allow_from
            .as_ref()
            .map(|l| self.principals(l))
            .unwrap_or_default();
        Some(Service {
            machine: s.machine.get_ref().clone(),
            protocol: protocol.filter(|_| ok)?,
            port,
            allow_from,
            inject_headers: s.inject_headers.as_ref().is_none_or(|i| *i.get_ref()),
        })
    }

    /// Checks a machine alias or group name, the names a principal list can
    /// use besides id52s: a valid name, and not one that reads as an id52.
    /// `principals` resolves groups and aliases before id52s, so a machine
    /// or group spelled like a device's id52 would take that device's place
    /// in every `allow_from`, `members` and `config_editors` naming it.
    fn principal_name(&mut self, name: &Spanned<String>, what: &str, rename: &str) {
        let n = name.get_ref();
        if let Some(why) = name_error(n) {
            self.err(name.span(), format!("invalid {what} {n:?}: {why}"), rename);
        } else if looks_like_id52(n) {
            self.err(
                name.span(),
                format!(
                    "{what} {n:?} looks like an id52, so it would shadow the device with that id52 \
                     in allow_from, members and config_editors"
                ),
                &format!(
                    "{rename} to a shorter name: 40 or more letters and digits read as an id52"
                ),
            );
        }
    }

    fn id52(&mut self, text: &Spanned<String>, what: &str) -> Option<Id52> {
        match text.get_ref().parse::<Id52>() {
            Ok(id) => Some(id),
            Err(e) => {
                self.err(
                    text.span(),
                    format!("malformed id52 {:?} for {what}: {e}", text.get_ref()),
                    "copy the id52 exactly as `malai machine init` or `malai cluster init` printed it",
                );
                None
            }
        }
    }

    fn addrs(&mut self, addrs: &[Spanned<String>]) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for a in addrs {
            match a.get_ref().parse::<SocketAddr>() {
                Ok(addr) => out.push(addr),
                Err(_) => self.err(
                    a.span(),
                    format!("{:?} is not an IP:PORT address", a.get_ref()),
                    "write addresses like \"192.0.2.10:7700\" or \"[2001:db8::1]:7700\"",
                ),
            }
        }
        out
    }

    /// `memory_max`, `tasks_max`, `cpu_quota`, in that order, checked at
    /// their values.
    fn recording(
        &mut self,
        record: Option<&Spanned<String>>,
        input: Option<bool>,
    ) -> super::RecordPolicy {
        let record = record.and_then(|r| match super::Record::parse(r.get_ref()) {
            Ok(r) => Some(r),
            Err(e) => {
                self.err(r.span(), e, "write record = \"off\", \"on\" (recorded when the recorder takes it) or \"required\" (refused when it cannot)");
                None
            }
        });
        super::RecordPolicy {
            record,
            record_input: input,
        }
    }

    fn limits(&mut self, [memory, tasks, cpu]: [&Option<Spanned<toml::Value>>; 3]) -> Limits {
        let mut one = |v: &Option<Spanned<toml::Value>>,
                       parse: fn(&str) -> Result<u64, String>,
                       help: &str| {
            let v = v.as_ref()?;
            let checked = limits::text_of(v.get_ref())
                .ok_or_else(|| "a limit is a string or a number".to_owned())
                .and_then(|text| parse(&text).map(|value| Limit { text, value }));
            match checked {
                Ok(limit) => Some(limit),
                Err(e) => {
                    self.err(v.span(), e, help);
                    None
                }
            }
        };
        Limits {
            memory_max: one(
                memory,
                limits::memory_max,
                "write a size like memory_max = \"512M\" (K, M, G, T), or \"infinity\"",
            ),
            tasks_max: one(
                tasks,
                limits::tasks_max,
                "write a count like tasks_max = 64, or \"infinity\"",
            ),
            cpu_quota: one(
                cpu,
                limits::cpu_quota,
                "write a percentage of one CPU like cpu_quota = \"50%\"",
            ),
        }
    }

    fn username(&mut self, u: &Spanned<String>) -> Option<String> {
        if username_ok(u.get_ref()) {
            Some(u.get_ref().clone())
        } else {
            self.err(
                u.span(),
                format!("{:?} is not a valid Unix user name", u.get_ref()),
                "use a lowercase name such as \"www-data\" or \"root\"",
            );
            None
        }
    }

    fn principals(&mut self, list: &Spanned<String>) -> Vec<Principal> {
        let mut out = Vec::new();
        for (offset, item) in split_list(list.get_ref()) {
            let span = self.src.sub_span(&list.span(), offset, item.len().max(1));
            if item.is_empty() {
                self.err(
                    span,
                    "empty entry in a principal list",
                    "remove the extra comma",
                );
            } else if item == "*" {
                out.push(Principal::Everyone);
            } else if self.groups.contains(item) {
                out.push(Principal::Group(item.to_owned()));
            } else if self.machines.contains(item) {
                out.push(Principal::Machine(item.to_owned()));
            } else if looks_like_id52(item) {
                match item.parse::<Id52>() {
                    Ok(id) => out.push(Principal::Id52(id)),
                    Err(e) => self.err(
                        span,
                        format!("malformed id52 {item:?}: {e}"),
                        "copy the id52 exactly as `malai machine init` printed it",
                    ),
                }
            } else {
                self.err(
                    span,
                    format!("unknown principal {item:?}: not a machine alias, a group or an id52"),
                    "define [group.NAME] or [machine.NAME] with that name, or fix the spelling",
                );
            }
        }
        out
    }

    fn check_cycles(
        &mut self,
        groups: &BTreeMap<String, Vec<Principal>>,
        spans: &HashMap<String, std::ops::Range<usize>>,
    ) {
        let mut reported: BTreeSet<BTreeSet<String>> = BTreeSet::new();
        let mut acyclic = BTreeSet::new();
        for start in groups.keys() {
            let mut path = vec![start.clone()];
            if let Some(cycle) = find_cycle(groups, &mut path, &mut acyclic)
                && reported.insert(cycle.iter().cloned().collect())
            {
                let head = &cycle[0];
                self.err(
                    spans[head].clone(),
                    format!("group cycle: {}", cycle.join(" -> ")),
                    "remove one of these memberships; a group cannot contain itself",
                );
            }
        }
    }
}

/// Depth-first search for a cycle reachable from the last group of `path`;
/// returns it as a closed path (`a -> b -> a`). `acyclic` remembers groups
/// already fully explored without finding one, so each is walked once.
fn find_cycle(
    groups: &BTreeMap<String, Vec<Principal>>,
    path: &mut Vec<String>,
    acyclic: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    let current = path.last().expect("path is never empty").clone();
    for member in groups.get(&current).into_iter().flatten() {
        let Principal::Group(next) = member else {
            continue;
        };
        if let Some(pos) = path.iter().position(|g| g == next) {
            let mut cycle = path[pos..].to_vec();
            cycle.push(next.clone());
            return Some(cycle);
        }
        if acyclic.contains(next) {
            continue;
        }
        path.push(next.clone());
        if let Some(c) = find_cycle(groups, path, acyclic) {
            return Some(c);
        }
        path.pop();
    }
    acyclic.insert(current);
    None
}
