//! Property tests of the ACL engine (`malai::acl`) against DESIGN.md's
//! cluster.toml semantics: default deny, monotonicity of principal lists,
//! agreement with a deliberately naive reference evaluator, invariance under
//! renaming groups, preservation of every decision (and its recording) by
//! personalization, and explanations that name the deciding list.
//! A few readable examples parsed from TOML text close the file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::LazyLock;

use malai::acl::{self, Decision, Request};
use malai::config::cluster::{self, FileKind};
use malai::config::{ClusterConfig, CommandRule, Machine, Principal, Record, RecordPolicy};
use malai::explain;
use malai::identity::Id52;
use malai::personalize;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::Union;
use proptest::test_runner::Config as ProptestConfig;

// ---------------------------------------------------------------------------
// Fixed pools the random configs draw from.

/// Identities a config may name (machines, the CM, id52 principals).
const NAMED: usize = 6;
/// One more identity that no config ever names: a stranger.
const POOL: usize = NAMED + 1;

static IDS: LazyLock<Vec<Id52>> = LazyLock::new(|| {
    (0..POOL)
        .map(|i| {
            let secret = iroh::SecretKey::from_bytes(&[i as u8 + 1; 32]);
            Id52::from_public_key(secret.public())
        })
        .collect()
});

/// Command rules run one of these: (text as written, its argv).
const COMMANDS: &[(&str, &[&str])] = &[
    (
        "systemctl restart nginx",
        &["systemctl", "restart", "nginx"],
    ),
    (
        "journalctl -u 'my unit' -n 50",
        &["journalctl", "-u", "my unit", "-n", "50"],
    ),
    ("uptime", &["uptime"]),
];

/// Names a command rule may have. `uptime` is also a plain program, so that
/// a rule shadowing a program name is exercised.
const RULE_NAMES: &[&str] = &["restart", "logs", "uptime"];

const USERNAMES: &[&str] = &["root", "www-data"];

/// Every Exec request the properties try (plus `Request::Shell`): plain
/// argvs, rule names with and without extra arguments, and an empty argv.
static ARGVS: LazyLock<Vec<Vec<String>>> = LazyLock::new(|| {
    let argvs: &[&[&str]] = &[
        &[],
        &["ls"],
        &["ls", "-l", "/tmp"],
        &["systemctl", "restart", "nginx"],
        &["journalctl", "-u", "my unit", "-n", "50"],
        &["restart"],
        &["restart", "now"],
        &["logs"],
        &["logs", "-f", "x y"],
        &["uptime"],
        &["uptime", "-p"],
    ];
    argvs
        .iter()
        .map(|a| a.iter().map(|s| s.to_string()).collect())
        .collect()
});

fn requests() -> Vec<Request<'static>> {
    std::iter::once(Request::Shell)
        .chain(ARGVS.iter().map(|a| Request::Exec(a)))
        .chain(ARGVS.iter().map(|a| Request::PtyExec(a)))
        .collect()
}

fn machine_name(i: usize) -> String {
    format!("m{i}")
}

fn group_name(i: usize) -> String {
    format!("g{i}")
}

/// The index `i` of a group named `gi` (all generated groups are).
fn group_index(name: &str) -> usize {
    name.strip_prefix('g')
        .and_then(|n| n.parse().ok())
        .expect("generated group names are g0..g3")
}

// ---------------------------------------------------------------------------
// Strategies.

/// A principal of a config with `nm` machines, naming only groups `g0..`
/// below `groups`.
fn principal(nm: usize, groups: usize) -> BoxedStrategy<Principal> {
    let mut options: Vec<(u32, BoxedStrategy<Principal>)> = vec![
        (1, Just(Principal::Everyone).boxed()),
        (3, (0..NAMED).prop_map(|i| Principal::Id52(IDS[i])).boxed()),
    ];
    if nm > 0 {
        options.push((
            2,
            (0..nm)
                .prop_map(|i| Principal::Machine(machine_name(i)))
                .boxed(),
        ));
    }
    if groups > 0 {
        options.push((
            3,
            (0..groups)
                .prop_map(|i| Principal::Group(group_name(i)))
                .boxed(),
        ));
    }
    Union::new_weighted(options).boxed()
}

fn principals(nm: usize, groups: usize) -> BoxedStrategy<Vec<Principal>> {
    prop::collection::vec(principal(nm, groups), 0..4).boxed()
}

fn username() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop::sample::select(USERNAMES).prop_map(String::from))
}

fn rule(nm: usize, ng: usize) -> impl Strategy<Value = CommandRule> {
    (
        0..COMMANDS.len(),
        principals(nm, ng),
        username(),
        (any::<bool>(), any::<bool>()),
        (any::<bool>(), recording()),
    )
        .prop_map(
            |(c, allow_from, username, (allow_args, exact), (allow_pty, recording))| CommandRule {
                command: COMMANDS[c].0.to_owned(),
                argv: COMMANDS[c].1.iter().map(|s| s.to_string()).collect(),
                exact,
                allow_from,
                username,
                // Validation refuses allow_args on a match rule.
                allow_args: allow_args && !exact,
                allow_pty,
                limits: Default::default(),
                recording,
            },
        )
}

/// `record` and `record_input`, each set or not.
fn recording() -> impl Strategy<Value = RecordPolicy> {
    let record = prop::sample::select(&[Record::Off, Record::On, Record::Required][..]);
    (prop::option::of(record), prop::option::of(any::<bool>())).prop_map(
        |(record, record_input)| RecordPolicy {
            record,
            record_input,
        },
    )
}

/// A machine's rules; its id52 is filled in by `config_with`.
fn machine(nm: usize, ng: usize) -> impl Strategy<Value = Machine> {
    (
        principals(nm, ng),
        prop::option::of(principals(nm, ng)),
        username(),
        prop::collection::btree_map(
            prop::sample::select(RULE_NAMES).prop_map(String::from),
            rule(nm, ng),
            0..3,
        ),
        recording(),
    )
        .prop_map(
            |(allow_from, allow_shell, username, mut commands, recording)| {
                // Validation refuses two match rules of one argv: the later
                // becomes a named rule.
                let mut matched = BTreeSet::new();
                for rule in commands.values_mut() {
                    if rule.exact {
                        rule.exact = matched.insert(rule.argv.clone());
                    }
                }
                Machine {
                    id52: IDS[POOL - 1],
                    addrs: Vec::new(),
                    allow_from,
                    allow_shell,
                    username,
                    commands,
                    limits: Default::default(),
                    sftp_server: None,
                    recording,
                }
            },
        )
}

/// A config with `min_machines..=4` machines `m0..` and `0..=4` groups
/// `g0..`. When `acyclic`, group `gi` only contains groups `gj` with `j < i`
/// (as validation demands); otherwise any group may contain any group.
fn config_with(min_machines: usize, acyclic: bool) -> impl Strategy<Value = ClusterConfig> {
    (min_machines..=4usize, 0..=4usize)
        .prop_flat_map(move |(nm, ng)| {
            let groups: Vec<_> = (0..ng)
                .map(|i| principals(nm, if acyclic { i } else { ng }))
                .collect();
            (
                groups,
                prop::collection::vec(machine(nm, ng), nm),
                Just((0..NAMED).collect::<Vec<_>>()).prop_shuffle(),
                0..NAMED,
                principals(nm, ng),
                prop::collection::btree_set(0..NAMED, 0..=2),
            )
        })
        .prop_map(
            |(groups, machines, ids, cm, config_editors, revoked)| ClusterConfig {
                cluster_manager: IDS[cm],
                cm_addrs: Vec::new(),
                config_editors,
                machines: machines
                    .into_iter()
                    .enumerate()
                    .map(|(i, m)| {
                        let m = Machine {
                            id52: IDS[ids[i]],
                            ..m
                        };
                        (machine_name(i), m)
                    })
                    .collect(),
                groups: groups
                    .into_iter()
                    .enumerate()
                    .map(|(i, g)| (group_name(i), g))
                    .collect(),
                services: BTreeMap::new(),
                received_version: None,
                relay: None,
                // Any key but the CM's (validation refuses that one).
                revoked: revoked
                    .into_iter()
                    .filter(|i| *i != cm)
                    .map(|i| IDS[i])
                    .collect(),
                unrevoked: Default::default(),
                max_config_age: None,
                rights: Default::default(),
                machine_groups: Default::default(),
                received_protocol: None,
                tests: Vec::new(),
                recorder: None,
            },
        )
}

fn config() -> impl Strategy<Value = ClusterConfig> {
    config_with(0, true)
}

// ---------------------------------------------------------------------------
// Decisions of a whole config, for comparing two configs.

/// What an allowed request runs: (argv, username). `None` is a denial.
type Outcome = Option<(Vec<String>, Option<String>)>;

fn outcome(d: &Decision) -> Outcome {
    match d {
        Decision::Allow(g) => {
            assert!(!g.reason.is_empty(), "an allow must say why");
            Some((g.argv.clone(), g.username.clone()))
        }
        Decision::Deny(reason) => {
            assert!(!reason.is_empty(), "a denial must say why");
            None
        }
    }
}

/// One question asked of a config.
#[derive(Debug, Clone, Copy)]
enum Question {
    /// decide(host, peer, requests()[req])
    Decide {
        host: usize,
        peer: usize,
        req: usize,
    },
    /// may_edit_config(peer)
    Edit { peer: usize },
}

fn questions() -> Vec<Question> {
    let n = requests().len();
    let mut out = Vec::new();
    for host in 0..POOL {
        for peer in 0..POOL {
            for req in 0..n {
                out.push(Question::Decide { host, peer, req });
            }
        }
    }
    out.extend((0..POOL).map(|peer| Question::Edit { peer }));
    out
}

fn describe(q: Question) -> String {
    match q {
        Question::Decide { host, peer, req } => format!(
            "host IDS[{host}] {} peer IDS[{peer}] {} request {:?}",
            IDS[host],
            IDS[peer],
            requests()[req]
        ),
        Question::Edit { peer } => format!("may_edit_config peer IDS[{peer}] {}", IDS[peer]),
    }
}

fn ask(config: &ClusterConfig, q: Question) -> Outcome {
    match q {
        Question::Decide { host, peer, req } => outcome(&acl::decide(
            config,
            &IDS[host],
            &IDS[peer],
            requests()[req],
        )),
        Question::Edit { peer } => outcome(&acl::may_edit_config(config, &IDS[peer])),
    }
}

fn answers(config: &ClusterConfig) -> Vec<(Question, Outcome)> {
    questions()
        .into_iter()
        .map(|q| (q, ask(config, q)))
        .collect()
}

// ---------------------------------------------------------------------------
// The naive reference evaluator.

/// The id52s each group stands for: least fixpoint, starting from empty sets
/// and recomputing every group until nothing changes. Works on cycles too.
fn ref_groups(config: &ClusterConfig) -> BTreeMap<String, BTreeSet<Id52>> {
    let mut sets: BTreeMap<String, BTreeSet<Id52>> = config
        .groups
        .keys()
        .map(|g| (g.clone(), BTreeSet::new()))
        .collect();
    loop {
        let mut changed = false;
        for (name, members) in &config.groups {
            let set = ref_list(config, &sets, members);
            if set != sets[name] {
                sets.insert(name.clone(), set);
                changed = true;
            }
        }
        if !changed {
            return sets;
        }
    }
}

fn ref_list(
    config: &ClusterConfig,
    groups: &BTreeMap<String, BTreeSet<Id52>>,
    list: &[Principal],
) -> BTreeSet<Id52> {
    let mut out = BTreeSet::new();
    for p in list {
        match p {
            Principal::Everyone => out.extend(config.machines.values().map(|m| m.id52)),
            Principal::Id52(id) => {
                out.insert(*id);
            }
            Principal::Machine(alias) => out.extend(config.machines.get(alias).map(|m| m.id52)),
            Principal::Group(name) => out.extend(groups.get(name).into_iter().flatten()),
        }
    }
    out
}

fn ref_answer(
    config: &ClusterConfig,
    groups: &BTreeMap<String, BTreeSet<Id52>>,
    q: Question,
) -> Outcome {
    // A revoked key is refused everything.
    let has = |list: &[Principal], peer: usize| {
        !config.revoked.contains(&IDS[peer]) && ref_list(config, groups, list).contains(&IDS[peer])
    };
    let (host, peer, req) = match q {
        Question::Edit { peer } => {
            return has(&config.config_editors, peer).then(|| (Vec::new(), None));
        }
        Question::Decide { host, peer, req } => (host, peer, req),
    };
    // A device that is not a machine of the cluster runs nothing.
    let machine = config.machines.values().find(|m| m.id52 == IDS[host])?;
    match requests()[req] {
        Request::Shell => {
            let list = machine.allow_shell.as_ref().unwrap_or(&machine.allow_from);
            has(list, peer).then(|| (Vec::new(), machine.username.clone()))
        }
        Request::Exec(argv) | Request::PtyExec(argv) => {
            let pty = matches!(requests()[req], Request::PtyExec(_));
            let (first, extra) = argv.split_first()?;
            let shell = machine.allow_shell.as_ref().unwrap_or(&machine.allow_from);
            // A match rule decides alone for exactly its argv.
            if let Some(rule) = machine
                .commands
                .values()
                .find(|r| r.exact && r.argv == argv)
            {
                return (has(&rule.allow_from, peer) && (!pty || rule.allow_pty)).then(|| {
                    let user = rule.username.clone().or_else(|| machine.username.clone());
                    (argv.to_vec(), user)
                });
            }
            match machine.commands.get(first).filter(|r| !r.exact) {
                // The rule decides alone for its name; extra args need
                // allow_args, a PTY allow_pty.
                Some(rule) => (has(&rule.allow_from, peer)
                    && (extra.is_empty() || rule.allow_args)
                    && (!pty || rule.allow_pty))
                    .then(|| {
                        let argv = rule.argv.iter().chain(extra).cloned().collect();
                        let user = rule.username.clone().or_else(|| machine.username.clone());
                        (argv, user)
                    }),
                // Any other argv on a PTY needs allow_shell too.
                None => (has(&machine.allow_from, peer) && (!pty || has(shell, peer)))
                    .then(|| (argv.to_vec(), machine.username.clone())),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Editing configs.

/// A principal list of a config.
#[derive(Debug, Clone)]
enum Slot {
    Editors,
    Group(String),
    AllowFrom(String),
    AllowShell(String),
    Rule(String, String),
}

fn slots(config: &ClusterConfig) -> Vec<Slot> {
    let mut out = vec![Slot::Editors];
    out.extend(config.groups.keys().cloned().map(Slot::Group));
    for (alias, m) in &config.machines {
        out.push(Slot::AllowFrom(alias.clone()));
        if m.allow_shell.is_some() {
            out.push(Slot::AllowShell(alias.clone()));
        }
        for name in m.commands.keys() {
            out.push(Slot::Rule(alias.clone(), name.clone()));
        }
    }
    out
}

fn slot_mut<'a>(config: &'a mut ClusterConfig, slot: &Slot) -> &'a mut Vec<Principal> {
    match slot {
        Slot::Editors => &mut config.config_editors,
        Slot::Group(g) => config.groups.get_mut(g).unwrap(),
        Slot::AllowFrom(m) => &mut config.machines.get_mut(m).unwrap().allow_from,
        Slot::AllowShell(m) => config
            .machines
            .get_mut(m)
            .unwrap()
            .allow_shell
            .as_mut()
            .unwrap(),
        Slot::Rule(m, r) => {
            &mut config
                .machines
                .get_mut(m)
                .unwrap()
                .commands
                .get_mut(r)
                .unwrap()
                .allow_from
        }
    }
}

/// Every principal that may be added to `slot` keeping the config valid
/// (and its groups acyclic).
fn addable(config: &ClusterConfig, slot: &Slot) -> Vec<Principal> {
    let mut out = vec![Principal::Everyone];
    out.extend(IDS[..NAMED].iter().copied().map(Principal::Id52));
    out.extend(config.machines.keys().cloned().map(Principal::Machine));
    let below = match slot {
        Slot::Group(g) => group_index(g),
        _ => usize::MAX,
    };
    out.extend(
        config
            .groups
            .keys()
            .filter(|g| group_index(g) < below)
            .cloned()
            .map(Principal::Group),
    );
    out
}

/// `config` with every group renamed by `names`, in the groups map and in
/// every list that names one.
fn rename_groups(config: &ClusterConfig, names: &BTreeMap<String, String>) -> ClusterConfig {
    let list = |l: &[Principal]| -> Vec<Principal> {
        l.iter()
            .map(|p| match p {
                Principal::Group(g) => Principal::Group(names[g].clone()),
                other => other.clone(),
            })
            .collect()
    };
    ClusterConfig {
        config_editors: list(&config.config_editors),
        groups: config
            .groups
            .iter()
            .map(|(g, members)| (names[g].clone(), list(members)))
            .collect(),
        machines: config
            .machines
            .iter()
            .map(|(alias, m)| {
                let m = Machine {
                    allow_from: list(&m.allow_from),
                    allow_shell: m.allow_shell.as_deref().map(list),
                    commands: m
                        .commands
                        .iter()
                        .map(|(name, r)| {
                            let r = CommandRule {
                                allow_from: list(&r.allow_from),
                                ..r.clone()
                            };
                            (name.clone(), r)
                        })
                        .collect(),
                    ..m.clone()
                };
                (alias.clone(), m)
            })
            .collect(),
        ..config.clone()
    }
}

/// Group names a rename may use: the original ones (so groups can swap
/// names) and others.
const GROUP_NAMES: &[&str] = &[
    "g0", "g1", "g2", "g3", "admins", "devs", "on-call", "ops_2", "x",
];

fn proptest_config() -> ProptestConfig {
    ProptestConfig {
        // A failure is reported with its shrunk case; do not write
        // regression files next to the sources.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(proptest_config())]

    /// 1. An empty config (no machines, no groups, no editors) denies every
    /// request of every peer, whichever device asks and whoever is the CM.
    #[test]
    fn empty_config_denies_everything(cm in 0..POOL) {
        let config = ClusterConfig {
            cluster_manager: IDS[cm],
            cm_addrs: Vec::new(),
            config_editors: Vec::new(),
            machines: BTreeMap::new(),
            groups: BTreeMap::new(),
            services: BTreeMap::new(),
            received_version: None,
            relay: None,
            revoked: Default::default(),
            unrevoked: Default::default(),
            max_config_age: None,
            rights: Default::default(),
            machine_groups: Default::default(),
            received_protocol: None,
                tests: Vec::new(),
                recorder: None,
        };
        for (q, out) in answers(&config) {
            prop_assert_eq!(out, None, "{}", describe(q));
        }
    }

    /// 2. Adding a principal to a group, an allow_from, an allow_shell, a
    /// command rule's allow_from or config_editors never removes access, and
    /// leaves what an allowed request runs unchanged.
    #[test]
    fn adding_a_principal_never_removes_access(
        config in config(),
        slot in any::<Index>(),
        pick in any::<Index>(),
        at in any::<Index>(),
    ) {
        let slot = slot.get(&slots(&config)).clone();
        let added = pick.get(&addable(&config, &slot)).clone();
        let mut bigger = config.clone();
        let list = slot_mut(&mut bigger, &slot);
        list.insert(at.index(list.len() + 1), added.clone());
        let after = answers(&bigger);
        for ((q, before), (_, after)) in answers(&config).into_iter().zip(after) {
            if before.is_some() {
                prop_assert_eq!(
                    &before, &after,
                    "adding {:?} to {:?} changed {}", added, slot, describe(q)
                );
            }
        }
    }

    /// 3. Removing a principal from any list never grants access (and leaves
    /// what a still-allowed request runs unchanged).
    #[test]
    fn removing_a_principal_never_grants_access(
        config in config(),
        slot in any::<Index>(),
        at in any::<Index>(),
    ) {
        let nonempty: Vec<Slot> = slots(&config)
            .into_iter()
            .filter(|s| !slot_mut(&mut config.clone(), s).is_empty())
            .collect();
        prop_assume!(!nonempty.is_empty());
        let slot = slot.get(&nonempty).clone();
        let mut smaller = config.clone();
        let list = slot_mut(&mut smaller, &slot);
        let removed = list.remove(at.index(list.len()));
        let before = answers(&config);
        for ((q, after), (_, before)) in answers(&smaller).into_iter().zip(before) {
            if after.is_some() {
                prop_assert_eq!(
                    &before, &after,
                    "removing {:?} from {:?} changed {}", removed, slot, describe(q)
                );
            }
        }
    }

    /// 4. The engine agrees with the naive reference evaluator: same
    /// allow/deny, and when allowed the same argv and username.
    #[test]
    fn engine_agrees_with_reference(config in config()) {
        let groups = ref_groups(&config);
        for (q, engine) in answers(&config) {
            prop_assert_eq!(engine, ref_answer(&config, &groups, q), "{}", describe(q));
        }
    }

    /// 4b. Also on group graphs with cycles, which validation refuses: the
    /// engine's cycle guard must not lose members a fixpoint finds.
    #[test]
    fn engine_agrees_with_reference_on_cyclic_groups(config in config_with(0, false)) {
        let groups = ref_groups(&config);
        for (q, engine) in answers(&config) {
            prop_assert_eq!(engine, ref_answer(&config, &groups, q), "{}", describe(q));
        }
        for g in config.groups.keys() {
            let everything = [Principal::Group(g.clone())];
            prop_assert_eq!(&acl::expand(&config, &everything), &groups[g], "expand({})", g);
        }
    }

    /// 5. Renaming the groups consistently changes no decision.
    #[test]
    fn renaming_groups_changes_nothing(
        config in config(),
        names in prop::sample::subsequence(GROUP_NAMES, 4).prop_shuffle(),
    ) {
        let names: BTreeMap<String, String> = config
            .groups
            .keys()
            .cloned()
            .zip(names.into_iter().map(String::from))
            .collect();
        let renamed = rename_groups(&config, &names);
        for ((q, before), (_, after)) in answers(&config).into_iter().zip(answers(&renamed)) {
            prop_assert_eq!(before, after, "renaming {:?}: {}", names, describe(q));
        }
    }

    /// 6. The machine.toml a machine receives parses, carries the version,
    /// and gives that machine exactly the decisions the CM's config gives it.
    /// Other machines' rules are not sent, so the file allows nothing on them.
    #[test]
    fn personalization_preserves_decisions(
        config in config_with(1, true),
        which in any::<Index>(),
    ) {
        let aliases: Vec<&String> = config.machines.keys().collect();
        let alias = which.get(&aliases).as_str();
        let host = config.machines[alias].id52;
        let text = personalize::machine_toml(&config, alias, 7, malai::sync::proto::PROTOCOL)
            .expect("alias is a machine of the config")
            .text;
        let parsed = match cluster::parse(Path::new("machine.toml"), &text, FileKind::Machine) {
            Ok(parsed) => parsed,
            Err(e) => return Err(TestCaseError::fail(format!("{e:?}\n{text}"))),
        };
        prop_assert_eq!(parsed.received_version, Some(7));
        prop_assert_eq!(parsed.cluster_manager, config.cluster_manager);
        let ids: Vec<_> = config.machines.iter().map(|(a, m)| (a, m.id52)).collect();
        let parsed_ids: Vec<_> = parsed.machines.iter().map(|(a, m)| (a, m.id52)).collect();
        prop_assert_eq!(ids, parsed_ids, "the directory of machines");
        for peer in &IDS[..] {
            for request in requests() {
                let (want, got) = (
                    acl::decide(&config, &host, peer, request),
                    acl::decide(&parsed, &host, peer, request),
                );
                prop_assert_eq!(
                    outcome(&want), outcome(&got),
                    "machine {} peer {} request {:?}\n{}", alias, peer, request, text
                );
                // And recorded as the CM's config says.
                if let (Decision::Allow(w), Decision::Allow(g)) = (&want, &got) {
                    prop_assert_eq!(w.recording, g.recording, "recording of {:?}\n{}", request, text);
                }
                for other in config.machines.values().filter(|m| m.id52 != host) {
                    let d = acl::decide(&parsed, &other.id52, peer, request);
                    prop_assert!(!d.is_allowed(), "rules of another machine were sent:\n{}", text);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(proptest_config())]

    /// 7. The rights a device receives about each other machine (what
    /// `malai ls` shows and fan-out `@all` picks from) are exactly what the
    /// CM's rules give it there; `@all` never leaves out a machine that
    /// would run the command, and includes one that would not only when the
    /// command names a rule there that the device may not use as asked
    /// (the rules themselves are not sent).
    #[test]
    fn the_rights_a_device_receives_are_what_the_rules_give_it(
        config in config_with(2, true),
        which in any::<Index>(),
    ) {
        let aliases: Vec<&String> = config.machines.keys().collect();
        let alias = which.get(&aliases).as_str();
        let me = config.machines[alias].id52;
        let text = personalize::machine_toml(&config, alias, 7, malai::sync::proto::PROTOCOL)
            .expect("alias is a machine of the config")
            .text;
        let parsed = match cluster::parse(Path::new("machine.toml"), &text, FileKind::Machine) {
            Ok(parsed) => parsed,
            Err(e) => return Err(TestCaseError::fail(format!("{e:?}\n{text}"))),
        };
        for (other, m) in config.machines.iter().filter(|(a, _)| *a != alias) {
            let want = acl::rights(&config, other, &me);
            let got = parsed.rights.get(other).cloned().unwrap_or_default();
            prop_assert_eq!(&want, &got, "rights of {} on {}\n{}", alias, other, text);
            prop_assert_eq!(
                got.shell,
                acl::decide(&config, &m.id52, &me, Request::Shell).is_allowed()
            );
            for argv in ARGVS.iter().filter(|a| !a.is_empty()) {
                let allowed = acl::decide(&config, &m.id52, &me, Request::Exec(argv)).is_allowed();
                let picked = malai::selection::may_run(&parsed, &me, other, argv);
                prop_assert!(!allowed || picked, "@all left out {} for {:?}\n{}", other, argv, text);
                if picked && !allowed {
                    let rule = m.commands.get(&argv[0]).filter(|r| !r.exact);
                    let matched = m.commands.values().any(|r| r.exact && r.argv == *argv);
                    prop_assert!(
                        matched || rule.is_some_and(|r| !got.commands.contains(&argv[0]) || (argv.len() > 1 && !r.allow_args)),
                        "@all picked {} for {:?}, which no rule explains\n{}", other, argv, text
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Readable examples.

struct Example {
    config: ClusterConfig,
    cm: Id52,
    web: Id52,
    laptop: Id52,
    alice: Id52,
    bob: Id52,
    carol: Id52,
}

/// A cluster.toml with nested groups and a narrow command rule; `extra` is
/// appended to the `[machine.web01]` table.
fn example(web01_extra: &str) -> Example {
    let [cm, web, laptop, alice, bob, carol] = [0, 1, 2, 3, 4, 5].map(|i| IDS[i]);
    let text = format!(
        r#"
[cluster-manager]
id52 = "{cm}"
config_editors = "admins"

[machine.web01]
id52 = "{web}"
{web01_extra}

[machine.web01.command.restart-nginx]
command = "systemctl restart nginx"
allow_from = "on-call"
username = "root"

[machine.laptop]
id52 = "{laptop}"

[group.admins]
members = "laptop, {alice}"

[group.devs]
members = "admins,{bob}"

[group.on-call]
members = "{carol}"
"#
    );
    let config = cluster::parse(Path::new("cluster.toml"), &text, FileKind::Cluster)
        .unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    Example {
        config,
        cm,
        web,
        laptop,
        alice,
        bob,
        carol,
    }
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

fn exec(ex: &Example, peer: &Id52, words: &[&str]) -> Decision {
    acl::decide(&ex.config, &ex.web, peer, Request::Exec(&argv(words)))
}

#[test]
fn nested_groups_grant() {
    let ex = example(r#"allow_from = "devs""#);
    // alice and laptop are admins, admins are devs.
    for peer in [&ex.alice, &ex.laptop, &ex.bob] {
        let d = exec(&ex, peer, &["ls", "-l"]);
        assert!(d.is_allowed(), "{d:?}");
        assert_eq!(outcome(&d), Some((argv(&["ls", "-l"]), None)));
    }
    for peer in [&ex.carol, &ex.cm, &ex.web] {
        assert!(!exec(&ex, peer, &["ls"]).is_allowed());
    }
}

#[test]
fn star_means_only_listed_machines() {
    let ex = example(r#"allow_from = "*""#);
    // laptop and web01 are machines of the cluster.
    assert!(exec(&ex, &ex.laptop, &["uptime"]).is_allowed());
    assert!(exec(&ex, &ex.web, &["uptime"]).is_allowed());
    // alice is a member of a group but not a machine; the CM is not listed
    // as a machine; IDS[6] is a stranger.
    for peer in [&ex.alice, &ex.cm, &IDS[6]] {
        assert!(!exec(&ex, peer, &["uptime"]).is_allowed());
    }
}

#[test]
fn command_rule_grants_a_narrow_right() {
    let ex = example(r#"allow_from = "admins""#);
    // carol is outside allow_from but on call: she may restart nginx, as root,
    let d = exec(&ex, &ex.carol, &["restart-nginx"]);
    assert_eq!(
        outcome(&d),
        Some((
            argv(&["systemctl", "restart", "nginx"]),
            Some("root".into())
        )),
        "{d:?}"
    );
    // and nothing else.
    assert!(!exec(&ex, &ex.carol, &["systemctl", "restart", "nginx"]).is_allowed());
    assert!(!exec(&ex, &ex.carol, &["ls"]).is_allowed());
    // The rule decides alone for its name: alice may run anything, but not
    // restart-nginx by name (she can run its argv directly).
    assert!(!exec(&ex, &ex.alice, &["restart-nginx"]).is_allowed());
    assert!(exec(&ex, &ex.alice, &["systemctl", "restart", "nginx"]).is_allowed());
}

#[test]
fn extra_args_need_allow_args() {
    let ex = example("");
    let d = exec(&ex, &ex.carol, &["restart-nginx", "--force"]);
    assert!(!d.is_allowed(), "{d:?}");
    assert!(d.reason().contains("allow_args"), "{}", d.reason());

    let mut ex = example("");
    ex.config
        .machines
        .get_mut("web01")
        .unwrap()
        .commands
        .get_mut("restart-nginx")
        .unwrap()
        .allow_args = true;
    let d = exec(&ex, &ex.carol, &["restart-nginx", "--force"]);
    assert_eq!(
        outcome(&d),
        Some((
            argv(&["systemctl", "restart", "nginx", "--force"]),
            Some("root".into())
        ))
    );
}

#[test]
fn shell_uses_allow_shell_or_else_allow_from() {
    let ex = example("allow_from = \"devs\"\nallow_shell = \"admins\"\nusername = \"www-data\"");
    let shell = |peer: &Id52| acl::decide(&ex.config, &ex.web, peer, Request::Shell);
    assert!(exec(&ex, &ex.bob, &["ls"]).is_allowed());
    assert!(!shell(&ex.bob).is_allowed());
    assert_eq!(
        outcome(&shell(&ex.alice)),
        Some((Vec::new(), Some("www-data".into())))
    );

    let ex = example(r#"allow_from = "devs""#);
    let shell = |peer: &Id52| acl::decide(&ex.config, &ex.web, peer, Request::Shell);
    assert!(shell(&ex.bob).is_allowed());
    assert!(!shell(&ex.carol).is_allowed());
}

#[test]
fn a_device_that_is_not_a_machine_runs_nothing() {
    let ex = example(r#"allow_from = "*""#);
    for host in [&ex.cm, &ex.alice, &IDS[6]] {
        let d = acl::decide(&ex.config, host, &ex.laptop, Request::Exec(&argv(&["ls"])));
        assert!(!d.is_allowed(), "{d:?}");
    }
}

#[test]
fn config_editors_via_may_edit_config() {
    let ex = example("");
    assert!(acl::may_edit_config(&ex.config, &ex.alice).is_allowed());
    assert!(acl::may_edit_config(&ex.config, &ex.laptop).is_allowed());
    for peer in [&ex.bob, &ex.carol, &ex.web, &IDS[6]] {
        assert!(!acl::may_edit_config(&ex.config, peer).is_allowed());
    }
    // The CM's own identity is not an editor unless listed.
    assert!(!acl::may_edit_config(&ex.config, &ex.cm).is_allowed());
}

// ---------------------------------------------------------------------------
// Explanations.

/// The key and principals of the list that decides `ask` for `peer` on
/// `alias`, by DESIGN.md's rules (written apart from `malai::explain`).
fn ref_deciding<'a>(
    config: &'a ClusterConfig,
    alias: &str,
    ask: &explain::Ask,
) -> (String, &'a [Principal]) {
    let m = &config.machines[alias];
    match ask {
        explain::Ask::Edit => (
            "cluster-manager.config_editors".into(),
            &config.config_editors,
        ),
        explain::Ask::Shell => match &m.allow_shell {
            Some(list) => (format!("machine.{alias}.allow_shell"), list),
            None => (format!("machine.{alias}.allow_from"), &m.allow_from),
        },
        explain::Ask::Argv(argv) => {
            let exact = m.commands.iter().find(|(_, r)| r.exact && r.argv == *argv);
            let named = m.commands.iter().find(|(n, r)| !r.exact && **n == argv[0]);
            match exact.or(named) {
                Some((name, r)) => (
                    format!("machine.{alias}.command.{name}.allow_from"),
                    &r.allow_from,
                ),
                None => (format!("machine.{alias}.allow_from"), &m.allow_from),
            }
        }
        explain::Ask::Service(_) => unreachable!("no services are generated"),
    }
}

/// The principal named `name` in a chain: `*`, a machine, a group, an id52.
fn named_principal(config: &ClusterConfig, name: &str) -> Principal {
    if name == "*" {
        Principal::Everyone
    } else if config.groups.contains_key(name) {
        Principal::Group(name.to_owned())
    } else if config.machines.contains_key(name) {
        Principal::Machine(name.to_owned())
    } else {
        Principal::Id52(name.parse().expect("a chain names principals"))
    }
}

proptest! {
    #![proptest_config(proptest_config())]

    /// 8. `acl explain` gives the engine's decision, names the list that
    /// decided (as the reference reads the rules), and when allowed a chain
    /// that really leads from a principal of that list to the peer; when
    /// denied, the peer is not in that list.
    #[test]
    fn explain_agrees_with_the_engine_and_names_the_deciding_list(config in config_with(1, true)) {
        let groups = ref_groups(&config);
        let mut asks = vec![explain::Ask::Shell, explain::Ask::Edit];
        asks.extend(ARGVS.iter().filter(|a| !a.is_empty()).cloned().map(explain::Ask::Argv));
        for (alias, m) in &config.machines {
            for (i, peer) in IDS.iter().enumerate() {
                for ask in &asks {
                    let e = explain::explain(&config, alias, peer, ask);
                    let engine = match ask {
                        explain::Ask::Edit => acl::may_edit_config(&config, peer),
                        explain::Ask::Shell => acl::decide(&config, &m.id52, peer, Request::Shell),
                        explain::Ask::Argv(argv) => acl::decide(&config, &m.id52, peer, Request::Exec(argv)),
                        explain::Ask::Service(_) => unreachable!(),
                    };
                    prop_assert_eq!(outcome(&e.decision), outcome(&engine));
                    let what = format!("{alias} peer IDS[{i}] {ask}: {e}");
                    if config.revoked.contains(peer) {
                        prop_assert_eq!(&e.list, "revoked", "{}", what);
                        continue;
                    }
                    let (key, list) = ref_deciding(&config, alias, ask);
                    prop_assert_eq!(&e.list, &key, "{}", what);
                    let members = ref_list(&config, &groups, list);
                    if !e.allowed() {
                        // In the list yet denied: only a rule's extra arguments.
                        let extra_args = matches!(ask, explain::Ask::Argv(a) if a.len() > 1)
                            && e.decision.reason().contains("allow_args");
                        prop_assert!(!members.contains(peer) || extra_args, "denied, yet in the list: {}", what);
                        continue;
                    }
                    prop_assert!(!e.chain.is_empty(), "{}", what);
                    let first = named_principal(&config, &e.chain[0]);
                    prop_assert!(list.contains(&first), "{} is not in the list: {}", e.chain[0], what);
                    for pair in e.chain.windows(2) {
                        let inner = named_principal(&config, &pair[1]);
                        let ok = match named_principal(&config, &pair[0]) {
                            Principal::Group(g) => config.groups[&g].contains(&inner),
                            Principal::Everyone => config.machines.contains_key(&pair[1]),
                            other => other == inner,
                        };
                        prop_assert!(ok, "{} does not lead to {}: {}", pair[0], pair[1], what);
                    }
                    let last = e.chain.last().unwrap();
                    let names_peer = config.machines.get(last).map(|m| m.id52) == Some(*peer)
                        || last.parse::<Id52>().ok() == Some(*peer);
                    prop_assert!(names_peer, "the chain ends at {}: {}", last, what);
                }
            }
        }
    }
}
