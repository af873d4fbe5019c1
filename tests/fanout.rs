//! One command on many machines: real daemons on loopback (the CM, a
//! laptop and four machines). web01 runs the command, web02's exits 3,
//! web03 denies the laptop, web04 is stopped. The laptop's fan-out prints
//! each machine's lines with its prefix, names every failure in the
//! summary, exits 1, and the stopped machine costs only its timeout; the
//! same through the laptop's daemon on a private bus, `--json`, `@all` and
//! `@GROUP` from the rights the CM projected for the laptop.

mod common;

use std::time::{Duration, Instant};

use common::bus::PrivateBus;
use common::net::{Daemon, Host, free_udp_ports, id52_of};

struct Fleet {
    cm: Host,
    laptop: Host,
    webs: Vec<Host>,
    daemons: Vec<Daemon>,
    laptop_daemon: Option<Daemon>,
}

/// web01 runs `check`; web02's `check` exits 3; web03 admits nobody;
/// web04 admits the laptop but is stopped. The group `web` holds all
/// four, `front` web01 and web03.
fn fleet(laptop_bus: Option<&PrivateBus>) -> Fleet {
    let ports: [u16; 6] = free_udp_ports();
    let host = |name: &str, port| Host::loopback_on(name, port, &["company"]);
    let cm = host("cm", ports[0]);
    let laptop = host("laptop", ports[1]);
    let webs: Vec<Host> = (1..=4)
        .map(|i| host(&format!("web0{i}"), ports[1 + i]))
        .collect();
    let cm_id = id52_of(&cm.json(&["cluster", "init", "company", "--json"]));
    let join = |h: &Host| {
        id52_of(&h.json(&[
            "machine",
            "init",
            &cm_id,
            "company",
            "--cm-addr",
            &cm.socket_addr(),
            "--name",
            &h.name,
            "--json",
        ]))
    };
    let laptop_id = join(&laptop);
    let mut text = format!(
        "[cluster-manager]\nid52 = \"{cm_id}\"\n\n[group.web]\nmembers = \"web01,web02,web03,web04\"\n\n\
         [group.front]\nmembers = \"web01,web03\"\n\n[machine.laptop]\nid52 = \"{laptop_id}\"\naddrs = [\"{}\"]\n",
        laptop.socket_addr()
    );
    let rules = [
        "allow_from = \"laptop\"\n[machine.web01.command.check]\ncommand = \"sh -c 'echo one; echo two >&2; echo three'\"\nallow_from = \"laptop\"",
        "allow_from = \"laptop\"\n[machine.web02.command.check]\ncommand = \"sh -c 'echo failing; exit 3'\"\nallow_from = \"laptop\"",
        "allow_from = \"\"",
        "allow_from = \"laptop\"",
    ];
    for (web, rule) in webs.iter().zip(rules) {
        text.push_str(&format!(
            "\n[machine.{}]\nid52 = \"{}\"\naddrs = [\"{}\"]\n{rule}\n",
            web.name,
            join(web),
            web.socket_addr()
        ));
    }
    std::fs::write(cm.cluster_dir("company").join("cluster.toml"), text).unwrap();
    let mut daemons = vec![cm.start_daemon()];
    for web in &webs {
        daemons.push(web.start_daemon());
    }
    let mut laptop_daemon = match laptop_bus {
        Some(bus) => laptop.start_daemon_with(&[("MALAI_DBUS_ADDRESS", &bus.address)]),
        None => laptop.start_daemon(),
    };
    cm.ok(&["rescan"]);
    daemons[0].wait_status("5/5 machines in sync");
    laptop_daemon.wait_status("company: machine v2");
    // web04 goes away; its address stays in everyone's config.
    daemons.pop();
    Fleet {
        cm,
        laptop,
        webs,
        daemons,
        laptop_daemon: laptop_bus.map(|_| laptop_daemon),
    }
}

const TARGET: &str = "web01,web02,web03,web04.company";

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The assertions both paths share: the lines of each machine, prefixed;
/// the summary naming each failure; exit 1; and web04 costing no more
/// than its timeout.
fn check_report(out: &std::process::Output, took: Duration) {
    let (so, se) = (stdout(out), common::stderr(out));
    assert_eq!(out.status.code(), Some(1), "{so}\n{se}");
    assert!(
        so.contains("web01: one\n") && so.contains("web01: three\n"),
        "{so}\n{se}"
    );
    assert!(se.contains("web01: two\n"), "{se}");
    assert!(so.contains("web02: failing\n"), "{so}");
    for line in so.lines() {
        assert!(
            line.starts_with("web01: ") || line.starts_with("web02: "),
            "an unprefixed or foreign line: {line:?}\n{so}"
        );
    }
    let summary = se.lines().last().unwrap_or_default();
    assert!(summary.starts_with("4 machines: 1 ok, 3 failed ("), "{se}");
    assert!(summary.contains("web02: exit 3"), "{summary}");
    assert!(
        summary.contains("web03: denied: peer is not in machine.web03.allow_from"),
        "{summary}"
    );
    assert!(summary.contains("web04: "), "{summary}");
    // The stopped machine is bounded by its 3 s timeout, the others by
    // nothing more: the whole run ends well before a second timeout.
    assert!(took < Duration::from_secs(6), "took {took:?}");
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one fleet, set up once, asked everything a fan-out must answer"
)]
fn a_fan_out_reports_every_machine_and_fails_when_one_does() {
    let f = fleet(None);
    let started = Instant::now();
    let out = f.laptop.run(&["--timeout", "3s", TARGET, "check"]);
    check_report(&out, started.elapsed());

    // --json: one object that says the same.
    let out = f
        .laptop
        .run(&["--json", "--timeout", "3s", TARGET, "check"]);
    assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let machines = json["machines"].as_array().unwrap();
    let by = |name: &str| {
        machines
            .iter()
            .find(|m| m["machine"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(by("web01")["exit"], 0);
    assert_eq!(by("web01")["stdout"], "one\nthree\n");
    assert_eq!(by("web01")["stderr"], "two\n");
    assert_eq!(by("web02")["exit"], 3);
    assert_eq!(by("web03")["status"], "denied");
    assert!(
        by("web03")["error"]
            .as_str()
            .unwrap()
            .contains("allow_from")
    );
    assert!(by("web04")["exit"].is_null());
    assert!(
        matches!(
            by("web04")["status"].as_str(),
            Some("timeout" | "unreachable")
        ),
        "{}",
        by("web04")
    );

    // @all: the machines where the laptop may run `check`, as the CM
    // projected its rights: web01, web02 (rules) and web04 (allow_from);
    // never web03.
    let out = f.laptop.run(&["--timeout", "3s", "@all.company", "check"]);
    let se = common::stderr(&out);
    assert!(
        se.contains("3 machines: 1 ok, 2 failed (web02: exit 3; web04: "),
        "{se}"
    );
    // @front: web01 and web03, of which the laptop may use only web01.
    let out = f.laptop.run(&["@front.company", "check"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    assert_eq!(stdout(&out), "web01: one\nweb01: three\n");
    assert!(
        common::stderr(&out).ends_with("1 machine: 1 ok\n"),
        "{}",
        common::stderr(&out)
    );
    // An unknown group, a typo in a list, a shell: clear errors.
    let out = f.laptop.run(&["@nope.company", "check"]);
    assert!(
        common::stderr(&out).contains("no group \"nope\""),
        "{}",
        common::stderr(&out)
    );
    let out = f.laptop.run(&["web01,web09.company", "check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::stderr(&out).contains("web09: failed: no machine \"web09\""),
        "{}",
        common::stderr(&out)
    );
    let out = f.laptop.run(&["web01,web02.company"]);
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));
    let out = f.laptop.run(&["--json", "web01.company", "true"]);
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));

    // `malai ls`: who answers, and the rights the fan-out picked from.
    let listed = f.laptop.json(&["ls", "--json", "--timeout", "2s"]);
    let rows = listed["machines"].as_array().unwrap();
    let row = |name: &str| rows.iter().find(|r| r["machine"] == name).unwrap().clone();
    assert_eq!(row("laptop")["this_device"], true);
    assert_eq!(row("web01")["path"], "direct", "{listed}");
    assert!(row("web01")["rtt_ms"].as_f64().is_some(), "{listed}");
    assert_eq!(
        row("web01")["rights"]["commands"],
        serde_json::json!(["check"])
    );
    assert_eq!(row("web01")["rights"]["any_command"], true);
    assert_eq!(row("web03")["path"], "direct", "web03 is up: {listed}");
    assert_eq!(
        row("web03")["rights"],
        serde_json::json!({"any_command": false, "shell": false, "commands": [], "services": []})
    );
    assert!(
        row("web04")["path"].is_null() && row("web04")["error"].is_string(),
        "{listed}"
    );
    let table = f.laptop.ok(&["ls", "company", "--timeout", "2s"]);
    assert!(
        table.lines().any(|l| l.starts_with("web01.company")
            && l.contains("yes, direct")
            && l.contains("rules: check")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("web04.company") && l.contains(" no ")),
        "{table}"
    );

    // A copy to several machines is reported the same way.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("motd");
    std::fs::write(&file, "hello fleet\n").unwrap();
    let into = tempfile::tempdir().unwrap();
    let out = f.laptop.run(&[
        "cp",
        file.to_str().unwrap(),
        &format!("web01,web02,web03.company:{}/", into.path().display()),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));
    let se = common::stderr(&out);
    assert!(
        se.starts_with(
            "3 machines: 2 ok, 1 failed (web03: denied: peer is not in machine.web03.allow_from"
        ),
        "{se}"
    );
    assert_eq!(
        std::fs::read_to_string(into.path().join("motd")).unwrap(),
        "hello fleet\n"
    );

    // Ctrl-C reaches every running command.
    let child = f
        .laptop
        .malai(&["web01,web02.company", "sleep", "1000"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for web in &f.daemons[1..3] {
        common::net::wait_until("the sleep runs", || {
            web.log_text().contains("malai_argv=sleep 1000 ")
        });
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::stderr(&out)
            .ends_with("2 machines: 0 ok, 2 failed (web01: exit 130; web02: exit 130)\n"),
        "{}",
        common::stderr(&out)
    );
    drop(f.daemons);
    let _ = (&f.cm, &f.webs);
}

#[test]
fn a_fan_out_through_the_daemon_reports_the_same() {
    let bus = PrivateBus::start();
    let f = fleet(Some(&bus));
    let started = Instant::now();
    let out = f
        .laptop
        .malai(&["-v", "--timeout", "3s", TARGET, "check"])
        .env("MALAI_DBUS_ADDRESS", &bus.address)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        common::stderr(&out).contains("through the daemon"),
        "{}",
        common::stderr(&out)
    );
    check_report(&out, took);
    let out = f
        .laptop
        .malai(&["--timeout", "3s", "@all.company", "check"])
        .env("MALAI_DBUS_ADDRESS", &bus.address)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        common::stderr(&out).contains("3 machines: 1 ok, 2 failed"),
        "{}",
        common::stderr(&out)
    );
    drop(f.laptop_daemon);
}
