//! What malai refuses, end to end on three hosts on loopback: a peer outside
//! `allow_from`, a command rule outside its group or with extra arguments, a
//! key that is not in the cluster at all, a config pushed by someone other
//! than the cluster manager, an older config replayed, another machine's
//! config replayed, a config fetch by a stranger, and aliases that lead to
//! a denial. Every exec denial exits 255 with the reason on stderr and
//! leaves a log line on the target that names the peer's id52.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::TestHome;
use common::net::{Company, DEADLINE, Daemon, id52_of};
use common::raw::{config_request, push as push_to, try_config_request};
use malai::config::{FileKind, cluster};
use malai::identity::{Id52, Identity};
use malai::sync::envelope::Envelope;
use malai::sync::proto::{ConfigRequest, FetchAnswer, PushAnswer};

/// (a) web01 runs commands on laptop, whose `allow_from` is empty.
#[test]
fn peer_outside_allow_from_is_denied() {
    let c = Company::loopback();
    let mut cm = c.cm.start_daemon();
    let _web = c.web01.start_daemon();
    let lap = c.laptop.start_daemon();
    c.write_cluster_toml("", "", "");
    c.cm.ok(&["rescan"]);
    cm.wait_status("2/2 machines in sync");

    let out = c.web01.run(&["laptop.company", "id"]);
    assert_denied(&out, &["laptop.company", "allow_from"]);
    wait_log_line(&lap, &[DENIED, &c.web_id, "malai_argv=id "]);

    // Without a command it is a shell, decided (and refused) the same way.
    let out = c.web01.run(&["laptop.company"]);
    assert_denied(&out, &["laptop.company", "shell"]);
    wait_log_line(&lap, &[DENIED, &c.web_id, "malai_argv= "]);
}

/// (b) A command rule grants only its command, only to its group, and only
/// without extra arguments unless it says `allow_args = true`.
#[test]
fn command_rule_is_for_its_group_only() {
    let c = Company::loopback();
    let mut cm = c.cm.start_daemon();
    let mut web = c.web01.start_daemon();
    let _lap = c.laptop.start_daemon();
    let rules = |oncall: &str| {
        format!(
            "[machine.web01.command.restart]\ncommand = \"echo restarted\"\nallow_from = \"oncall\"\n\n\
             [machine.web01.command.say]\ncommand = \"echo said\"\nallow_from = \"oncall\"\nallow_args = true\n\n\
             [group.oncall]\nmembers = \"{oncall}\"\n"
        )
    };
    // laptop is neither in web01's allow_from (there is none) nor in oncall.
    c.write_cluster_toml("", "", &rules(&c.cm_id));
    c.cm.ok(&["rescan"]);
    cm.wait_status("2/2 machines in sync");
    web.wait_status("company: machine v2");

    let out = c.laptop.run(&["web01.company", "restart"]);
    assert_denied(&out, &["web01.company", "command.restart.allow_from"]);
    wait_log_line(&web, &[DENIED, &c.laptop_id, "malai_argv=restart "]);
    let out = c.laptop.run(&["web01.company", "echo", "restarted"]);
    assert_denied(&out, &["web01.company", "allow_from"]);
    wait_log_line(&web, &[DENIED, &c.laptop_id, "malai_argv=echo restarted "]);

    // laptop joins oncall: the rule now runs for it, and only the rule.
    c.write_cluster_toml("", "", &rules(&format!("laptop,{}", c.cm_id)));
    c.cm.ok(&["rescan"]);
    web.wait_status("company: machine v3");
    let out = c.laptop.run(&["web01.company", "restart"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "restarted\n");
    wait_log_line(&web, &[ALLOWED, &c.laptop_id, "malai_argv=echo restarted "]);

    // Extra arguments are refused without allow_args...
    let out = c.laptop.run(&["web01.company", "restart", "now"]);
    assert_denied(&out, &["web01.company", "allow_args"]);
    assert!(out.stdout.is_empty());
    wait_log_line(&web, &[DENIED, &c.laptop_id, "malai_argv=restart now "]);
    // ...and appended with it.
    let out = c.laptop.run(&["web01.company", "say", "hi", "there"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "said hi there\n");
    // The rule grants its command, not the machine: other argv stay denied.
    let out = c.laptop.run(&["web01.company", "id"]);
    assert_denied(&out, &["web01.company", "allow_from"]);
    wait_log_line(&web, &[DENIED, &c.laptop_id, "malai_argv=id "]);
}

/// (c) A key that is not in the cluster at all, holding the public directory
/// of machines, is refused even where `allow_from = "*"`: its connection is
/// closed right after the handshake, before any request is read.
#[test]
fn key_outside_the_cluster_is_denied() {
    let c = Company::loopback();
    let mut cm = c.cm.start_daemon();
    let web = c.web01.start_daemon();
    let _lap = c.laptop.start_daemon();
    c.write_cluster_toml("allow_from = \"*\"", "", "");
    c.cm.ok(&["rescan"]);
    cm.wait_status("2/2 machines in sync");

    // A member of the cluster may run here.
    let out = c.laptop.run(&["web01.company", "echo", "member"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "member\n");

    // The stranger lives beside the laptop with a key of its own and a
    // copy of the laptop's machine.toml (public facts).
    let stranger = TestHome::new();
    std::fs::write(
        stranger.path().join("malai.toml"),
        format!(
            "[network]\nrelay = \"disabled\"\ndiscovery = false\nbind = \"{}\"\n",
            c.laptop.addr
        ),
    )
    .unwrap();
    let stranger_id = id52_of(&stranger.json(&[
        "machine",
        "init",
        &c.cm_id,
        "company",
        "--cm-addr",
        &c.cm.socket_addr(),
        "--name",
        "stranger",
        "--json",
    ]));
    std::fs::copy(
        c.laptop.cluster_dir("company").join("machine.toml"),
        stranger.cluster_dir("company").join("machine.toml"),
    )
    .unwrap();
    let out = Command::new(common::malai_bin())
        .args(["web01.company", "id"])
        .env("MALAI_HOME", stranger.path())
        .env("MALAI_DBUS_ADDRESS", "disabled")
        .env_remove("MALAI_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_refused(&out, &["web01.company", "not a member of this cluster"]);
    wait_log_line(
        &web,
        &["refused", &stranger_id, "not a member of this cluster"],
    );
}

/// (d) Only the cluster manager may push config: the very envelope the CM
/// signed is refused when another key delivers it, and one a stranger signed
/// itself is refused too; the same bytes from the CM's key are accepted.
#[test]
fn config_push_from_a_non_manager_is_denied() {
    let c = Company::loopback();
    let (_cm, mut web, _lap) = c.start_synced("allow_from = \"laptop\"", "", "");
    let machine_toml = c.web01.cluster_dir("company").join("machine.toml");
    let before = std::fs::read(&machine_toml).unwrap();
    let web_id: Id52 = c.web_id.parse().unwrap();
    let cm_key = cm_identity(&c);
    let text = personalized(&c, "web01", 3).replace("echo", "evil");

    // A stranger seals its own config.
    let stranger = Identity::generate();
    let forged = Envelope::seal(&stranger, &web_id, 3, text.clone());
    let answer = try_push(&stranger, &c, forged);
    assert!(
        matches!(&answer, Err(e) if e.contains("not a member of this cluster")),
        "{answer:?}"
    );
    wait_log_line(
        &web,
        &["refused", &stranger.id52().to_string(), "not a member"],
    );

    // The laptop (a member, but not the CM) delivers a CM-signed envelope.
    let genuine = Envelope::seal(&cm_key, &web_id, 3, text);
    let laptop_key = Identity::load(&c.laptop.cluster_dir("company").join("identity.key")).unwrap();
    let answer = push(&laptop_key, &c, genuine.clone());
    assert!(
        matches!(&answer, PushAnswer::Denied { reason } if reason.contains("cluster manager")),
        "{answer:?}"
    );
    wait_log_line(&web, &["refused a config push", &c.laptop_id]);
    assert_eq!(std::fs::read(&machine_toml).unwrap(), before, "unchanged");
    let status = c.web01.json(&["status", "--json"]);
    assert_eq!(status["clusters"][0]["config_version"], 2);

    // The same envelope from the CM's key is applied: the refusals above
    // were about who sent it, not what it held.
    let answer = push(&cm_key, &c, genuine.clone());
    assert!(
        matches!(answer, PushAnswer::Ack { version: 3, .. }),
        "{answer:?}"
    );
    web.wait_status("company: machine v3");
    assert_eq!(
        std::fs::read_to_string(&machine_toml).unwrap(),
        genuine.config
    );
}

/// (e) A correctly signed config older than (or as old as, with other bytes)
/// the one in force is refused.
#[test]
fn older_config_version_is_rejected() {
    let c = Company::loopback();
    let (_cm, web, _lap) = c.start_synced("allow_from = \"laptop\"", "", "");
    let machine_toml = c.web01.cluster_dir("company").join("machine.toml");
    let before = std::fs::read(&machine_toml).unwrap();
    let web_id: Id52 = c.web_id.parse().unwrap();
    let cm_key = cm_identity(&c);

    let old = Envelope::seal(&cm_key, &web_id, 1, personalized(&c, "web01", 1));
    let answer = push(&cm_key, &c, old);
    assert!(
        matches!(&answer, PushAnswer::Rejected { holds: Some(2), .. }),
        "{answer:?}"
    );
    wait_log_line(&web, &["refused config version 1", &c.cm_id]);

    // Version 2 again, with other bytes: not newer either.
    let text = personalized(&c, "web01", 2).replace("laptop", "web01");
    let same = Envelope::seal(&cm_key, &web_id, 2, text);
    let answer = push(&cm_key, &c, same);
    assert!(
        matches!(&answer, PushAnswer::Rejected { holds: Some(2), .. }),
        "{answer:?}"
    );
    wait_log_line(&web, &["refused config version 2", &c.cm_id]);
    assert_eq!(std::fs::read(&machine_toml).unwrap(), before, "unchanged");
    let status = c.web01.json(&["status", "--json"]);
    assert_eq!(status["clusters"][0]["config_version"], 2);
    // And the rules in force are still the pushed ones.
    let out = c.laptop.run(&["web01.company", "echo", "still"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still\n");
}

/// (f) The envelope names its machine: the laptop's config, signed by the
/// CM, is refused by web01, and accepted by the laptop.
#[test]
fn another_machines_config_is_rejected() {
    let c = Company::loopback();
    let (_cm, web, mut lap) =
        c.start_synced("allow_from = \"laptop\"", "allow_from = \"web01\"", "");
    let machine_toml = c.web01.cluster_dir("company").join("machine.toml");
    let before = std::fs::read(&machine_toml).unwrap();
    let laptop_id: Id52 = c.laptop_id.parse().unwrap();
    let cm_key = cm_identity(&c);

    let for_laptop = Envelope::seal(&cm_key, &laptop_id, 3, personalized(&c, "laptop", 3));
    let answer = push(&cm_key, &c, for_laptop.clone());
    assert!(
        matches!(&answer, PushAnswer::Rejected { reason, holds: None }
            if reason.contains("not this machine") && reason.contains(&c.laptop_id)),
        "{answer:?}"
    );
    wait_log_line(&web, &["refused config", &c.laptop_id, &c.cm_id]);
    assert_eq!(std::fs::read(&machine_toml).unwrap(), before, "unchanged");
    let status = c.web01.json(&["status", "--json"]);
    assert_eq!(status["clusters"][0]["config_version"], 2);

    // The envelope itself is genuine: its own machine takes it.
    let answer = push_to(
        &cm_key,
        &laptop_id,
        c.laptop.socket_addr().parse().unwrap(),
        for_laptop.clone(),
    );
    assert!(
        matches!(answer, PushAnswer::Ack { version: 3, .. }),
        "{answer:?}"
    );
    lap.wait_status("company: machine v3");
    let lap_toml = c.laptop.cluster_dir("company").join("machine.toml");
    assert_eq!(
        std::fs::read_to_string(lap_toml).unwrap(),
        for_laptop.config
    );
}

/// (g) The CM serves a config only to a machine of the cluster, and only
/// that machine's own; it takes no pushed config itself.
#[test]
fn config_fetch_is_for_members_and_their_own_config() {
    let c = Company::loopback();
    let mut cm = c.cm.start_daemon();
    let _web = c.web01.start_daemon();
    let _lap = c.laptop.start_daemon();
    c.write_cluster_toml(
        "allow_from = \"laptop\"",
        "",
        "[machine.web01.command.restart]\ncommand = \"echo restarted\"\nallow_from = \"laptop\"\n",
    );
    c.cm.ok(&["rescan"]);
    cm.wait_status("2/2 machines in sync");
    let cm_id: Id52 = c.cm_id.parse().unwrap();
    let cm_addr: SocketAddr = c.cm.socket_addr().parse().unwrap();

    let stranger = Identity::generate();
    let answer: Result<FetchAnswer, _> = try_config_request(
        &stranger,
        &cm_id,
        cm_addr,
        ConfigRequest::Fetch { protocol: None },
    );
    assert!(
        matches!(&answer, Err(e) if e.contains("not a member of this cluster")),
        "{answer:?}"
    );
    wait_log_line(
        &cm,
        &["refused", &stranger.id52().to_string(), "not a member"],
    );

    // A member gets its own config, signed for it, without web01's rules.
    let laptop_key = Identity::load(&c.laptop.cluster_dir("company").join("identity.key")).unwrap();
    let answer: FetchAnswer = config_request(
        &laptop_key,
        &cm_id,
        cm_addr,
        ConfigRequest::Fetch { protocol: None },
    );
    let FetchAnswer::Config { envelope } = answer else {
        panic!("{answer:?}");
    };
    envelope.verify(&cm_id, &laptop_key.id52()).unwrap();
    assert_eq!(envelope.version, 2);
    assert!(!envelope.config.contains("restart"), "{}", envelope.config);
    assert!(
        !envelope.config.contains("allow_from = \"laptop"),
        "{}",
        envelope.config
    );

    // Nobody pushes config to the CM, not even with a CM-signed envelope.
    let cm_key = cm_identity(&c);
    let web_id: Id52 = c.web_id.parse().unwrap();
    let genuine = Envelope::seal(&cm_key, &web_id, 3, personalized(&c, "web01", 3));
    let answer = push_to(&laptop_key, &cm_id, cm_addr, genuine);
    assert!(
        matches!(&answer, PushAnswer::Denied { reason } if reason.contains("cluster manager")),
        "{answer:?}"
    );
    wait_log_line(&cm, &["refused a config push", &c.laptop_id]);
}

/// (2) Aliases from malai.toml expand to a target and argv, with the user's
/// arguments appended, and a denial through an alias reads like any other.
#[test]
fn aliases_expand_and_denials_show_through() {
    let c = Company::loopback();
    append(
        &c.laptop.home.path().join("malai.toml"),
        "\n[aliases]\nw = \"web01.company echo\"\nl = \"laptop.company id\"\n",
    );
    append(
        &c.web01.home.path().join("malai.toml"),
        "\n[aliases]\nl = \"laptop.company id\"\n",
    );
    let mut cm = c.cm.start_daemon();
    let web = c.web01.start_daemon();
    let lap = c.laptop.start_daemon();
    c.write_cluster_toml("allow_from = \"laptop\"", "", "");
    c.cm.ok(&["rescan"]);
    cm.wait_status("2/2 machines in sync");

    let out = c.laptop.run(&["w", "hi"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    wait_log_line(&web, &[ALLOWED, &c.laptop_id, "malai_argv=echo hi "]);
    // Arguments that look like options are the remote command's.
    let out = c.laptop.run(&["w", "-n", "-v", "x"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "-v x");

    // web01's alias leads to laptop, which allows nobody.
    let out = c.web01.run(&["l"]);
    assert_denied(&out, &["laptop.company", "allow_from"]);
    wait_log_line(&lap, &[DENIED, &c.web_id, "malai_argv=id "]);
}

/// A device runs commands on itself through its own ACL, like any peer
/// (DESIGN.md: `malai cm.company uptime` works on the CM itself). The CLI
/// decides and runs it locally (iroh cannot dial its own key), so the
/// denial is on the CLI's stderr rather than in the daemon's audit log.
#[test]
fn exec_on_itself_goes_through_the_acl() {
    let c = Company::loopback();
    append(
        &c.laptop.home.path().join("malai.toml"),
        "\n[aliases]\nl = \"laptop.company id -u\"\n",
    );
    let mut cm = c.cm.start_daemon();
    let _web = c.web01.start_daemon();
    let mut lap = c.laptop.start_daemon();
    c.write_cluster_toml("", "allow_from = \"web01\"", "");
    c.cm.ok(&["rescan"]);
    cm.wait_status("2/2 machines in sync");
    lap.wait_status("company: machine v2");

    // Not in its own allow_from: denied like anyone else.
    let out = c.laptop.run(&["l"]);
    assert_denied(&out, &["laptop.company", "allow_from"]);

    // Once listed, it runs.
    c.write_cluster_toml("", "allow_from = \"web01,laptop\"", "");
    c.cm.ok(&["rescan"]);
    lap.wait_status("company: machine v3");
    let out = c.laptop.run(&["l"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    // As the user who ran it (root in CI: "0").
    let uid = nix::unistd::geteuid();
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{uid}\n"));
}

/// The audit fields of a denial and of an allowed command.
const DENIED: &str = "malai_decision=\"denied\"";
const ALLOWED: &str = "malai_decision=\"allowed\"";

/// Exit 255, nothing on stdout, and a stderr that says it was denied and
/// contains each of `why`.
fn assert_denied(out: &Output, why: &[&str]) {
    let err = common::stderr(out);
    assert_eq!(out.status.code(), Some(255), "stderr: {err}");
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
    assert!(err.contains("denied"), "stderr: {err}");
    for w in why {
        assert!(err.contains(w), "stderr lacks {w:?}: {err}");
    }
}

/// Exit 255, nothing on stdout, and a stderr that says the host refused
/// the connection and contains each of `why`.
fn assert_refused(out: &Output, why: &[&str]) {
    let err = common::stderr(out);
    assert_eq!(out.status.code(), Some(255), "stderr: {err}");
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
    for w in why {
        assert!(err.contains(w), "stderr lacks {w:?}: {err}");
    }
}

/// Waits until one line of the daemon's log contains every one of `needles`
/// (logging is asynchronous to the answer the client saw).
fn wait_log_line(d: &Daemon, needles: &[&str]) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let log = d.log_text();
        if log.lines().any(|l| needles.iter().all(|n| l.contains(n))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no log line with all of {needles:?}; log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20)); // poll interval
    }
}

fn append(path: &Path, text: &str) {
    let mut old = std::fs::read_to_string(path).unwrap();
    old.push_str(text);
    std::fs::write(path, old).unwrap();
}

fn cm_identity(c: &Company) -> Identity {
    Identity::load(&c.cm.cluster_dir("company").join("identity.key")).unwrap()
}

/// The machine.toml the CM would send `alias` at `version`, from the CM's
/// current cluster.toml.
fn personalized(c: &Company, alias: &str, version: u64) -> String {
    let path = c.cm.cluster_dir("company").join("cluster.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let config = cluster::parse(&path, &text, FileKind::Cluster).unwrap_or_else(|d| panic!("{d}"));
    malai::personalize::machine_toml(&config, alias, version, malai::sync::proto::PROTOCOL)
        .expect("machine in cluster.toml")
        .text
}

/// Pushes `envelope` to web01 as `from`; returns web01's answer.
fn push(from: &Identity, c: &Company, envelope: Envelope) -> PushAnswer {
    let web_id: Id52 = c.web_id.parse().unwrap();
    let web_addr: SocketAddr = c.web01.socket_addr().parse().unwrap();
    push_to(from, &web_id, web_addr, envelope)
}

/// `push`, for a sender the host may refuse outright: the connection's
/// error as text.
fn try_push(from: &Identity, c: &Company, envelope: Envelope) -> Result<PushAnswer, String> {
    let web_id: Id52 = c.web_id.parse().unwrap();
    let web_addr: SocketAddr = c.web01.socket_addr().parse().unwrap();
    try_config_request(from, &web_id, web_addr, ConfigRequest::Push { envelope })
}
