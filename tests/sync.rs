//! Config distribution under stress and several clusters in one daemon, on
//! three hosts on loopback: a machine killed with SIGKILL while configs
//! arrive never holds a torn machine.toml and converges after a restart; a
//! machine that was down while the config changed gets it once it is back,
//! and refuses the old version replayed; one daemon is CM of one cluster
//! and machine of another, and a peer of one has no rights in the other.

mod common;

use std::fs;
use std::net::SocketAddr;

use common::net::{Company, free_udp_ports, id52_of, wait_until};
use malai::config::{FileKind, cluster};
use malai::identity::{Id52, Identity};
use malai::sync::envelope::Envelope;
use malai::sync::proto::PushAnswer;

#[test]
fn kill_9_while_configs_arrive_never_tears_machine_toml() {
    let c = Company::loopback();
    let mut cm = c.cm.start_daemon();
    let mut web = c.web01.start_daemon();
    let _lap = c.laptop.start_daemon();
    let machine_toml = c.web01.cluster_dir("company").join("machine.toml");

    let mut version = 1;
    for round in 0..6 {
        // Each round changes the rules, so every rescan makes a new version.
        c.write_cluster_toml(
            &format!("allow_from = \"laptop\"\n[machine.web01.command.round{round}]\ncommand = \"echo {round}\"\nallow_from = \"laptop\""),
            "",
            "",
        );
        let before = fs::read_to_string(&machine_toml).ok();
        c.cm.ok(&["rescan"]);
        version += 1;
        // Kill web01 while the push is on its way (or landing).
        web.kill9();

        if let Ok(text) = fs::read_to_string(&machine_toml) {
            let parsed =
                cluster::parse(&machine_toml, &text, FileKind::Machine).unwrap_or_else(|e| {
                    panic!("round {round}: torn or invalid machine.toml:\n{e}\n{text}")
                });
            let v = parsed.received_version.unwrap();
            assert!(
                Some(&text) == before.as_ref() || v == version,
                "round {round}: machine.toml is neither the old file nor version {version} (has {v})"
            );
        }
        web = c.web01.start_daemon();
        web.wait_status(&format!("company: machine v{version}"));
        cm.wait_status(&format!("cluster-manager v{version}, 2/2 machines in sync"));
    }
    let text = fs::read_to_string(&machine_toml).unwrap();
    assert!(
        text.contains("round5"),
        "converged to the last config:\n{text}"
    );
    let out = c.laptop.run(&["web01.company", "round5"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "5\n");
}

#[test]
fn one_daemon_is_cm_of_one_cluster_and_machine_of_another() {
    let c = Company::loopback();
    // laptop: machine of company and CM of personal; web01: machine of both,
    // each cluster on a port of its own.
    let [web_port, lap_port] = free_udp_ports();
    for (h, port) in [(&c.web01, web_port), (&c.laptop, lap_port)] {
        let settings = format!(
            "[network]\nrelay = \"disabled\"\ndiscovery = false\nbind = \"{}\"\n[network.ports]\ncompany = {}\npersonal = {port}\n",
            h.addr, h.port
        );
        fs::write(h.home.path().join("malai.toml"), settings).unwrap();
    }
    let lap_personal = id52_of(&c.laptop.json(&["cluster", "init", "personal", "--json"]));
    let lap_personal_addr = format!("{}:{lap_port}", c.laptop.addr);
    let web_personal = id52_of(&c.web01.json(&[
        "machine",
        "init",
        &lap_personal,
        "personal",
        "--cm-addr",
        &lap_personal_addr,
        "--name",
        "web01",
        "--json",
    ]));
    fs::write(
        c.laptop.cluster_dir("personal").join("cluster.toml"),
        format!(
            "[cluster-manager]\nid52 = \"{lap_personal}\"\n\n[machine.laptop]\nid52 = \"{lap_personal}\"\n\n[machine.web01]\nid52 = \"{web_personal}\"\naddrs = [\"{}:{web_port}\"]\nallow_from = \"laptop\"\n",
            c.web01.addr
        ),
    )
    .unwrap();
    c.write_cluster_toml("allow_from = \"laptop\"", "allow_from = \"web01\"", "");

    let mut cm = c.cm.start_daemon();
    let mut web = c.web01.start_daemon();
    let mut lap = c.laptop.start_daemon();
    c.cm.ok(&["rescan"]);
    cm.wait_status("2/2 machines in sync");
    lap.wait_status("personal: cluster-manager v2, 1/1 machines in sync");
    lap.wait_status("company: machine v2");
    web.wait_status("personal: machine v2");

    // Commands in both clusters work, each with that cluster's identity.
    let out = c.laptop.run(&["web01.company", "echo", "company"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "company\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = c.laptop.run(&["web01.personal", "echo", "personal"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "personal\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = c.web01.run(&["laptop.company", "echo", "back"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "back\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // web01's personal identity dialling the company cluster: a cluster
    // directory that holds web01's *personal* key but company's directory.
    let spoof = c.web01.cluster_dir("spoof");
    fs::create_dir_all(&spoof).unwrap();
    let company = c.web01.cluster_dir("company");
    for f in ["cluster-info.toml", "machine.toml"] {
        fs::copy(company.join(f), spoof.join(f)).unwrap();
    }
    let key = spoof.join("identity.key");
    fs::copy(c.web01.cluster_dir("personal").join("identity.key"), &key).unwrap();
    let out = c.web01.run(&["laptop.spoof", "echo", "sneaky"]);
    let err = String::from_utf8_lossy(&out.stderr);
    // A key company's config does not name is a stranger there: refused
    // at the handshake, before its request is read.
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(err.contains("refused"), "{err}");
    assert!(err.contains("not a member of this cluster"), "{err}");
    assert!(out.stdout.is_empty());
    let refusal = format!("refused {web_personal}: not a member of this cluster");
    wait_until("the laptop logs the refusal", || {
        lap.log_text().contains(&refusal)
    });
    drop(web);
}

/// A machine that is down while its config changes gets it once it is
/// back (the CM keeps trying; the machine asks on start), and still refuses
/// the older version replayed to it afterwards.
#[test]
fn a_machine_down_during_a_change_gets_it_when_back_and_refuses_a_replay() {
    let c = Company::loopback();
    let (mut cm, web, _lap) = c.start_synced("allow_from = \"laptop\"", "", "");
    let machine_toml = c.web01.cluster_dir("company").join("machine.toml");
    let v2 = fs::read_to_string(&machine_toml).unwrap();
    assert!(web.stop().success());

    // Version 3 while web01 is down: the laptop takes it, web01 cannot.
    c.write_cluster_toml(
        "allow_from = \"laptop\"\n[machine.web01.command.hello]\ncommand = \"echo hello\"\nallow_from = \"laptop\"",
        "",
        "",
    );
    c.cm.ok(&["rescan"]);
    cm.wait_status("company: cluster-manager v3, 1/2 machines in sync");
    let web01_sync = || {
        let status = c.cm.json(&["status", "--json"]);
        let machines = status["clusters"][0]["machines"]
            .as_array()
            .unwrap()
            .clone();
        machines
            .into_iter()
            .find(|m| m["alias"] == "web01")
            .expect("web01 in the CM's status")
    };
    let m = web01_sync();
    assert_eq!(m["acked_version"], 2, "{m}");
    assert_ne!(m["sync"], "in-sync", "{m}");
    assert_eq!(fs::read_to_string(&machine_toml).unwrap(), v2);

    // Back up, web01 gets version 3 and the CM sees it acknowledged.
    let mut web = c.web01.start_daemon();
    web.wait_status("company: machine v3");
    cm.wait_status("company: cluster-manager v3, 2/2 machines in sync");
    let m = web01_sync();
    assert_eq!(m["acked_version"], 3, "{m}");
    assert_eq!(m["sync"], "in-sync", "{m}");
    assert!(m["unreachable_since"].is_null(), "{m}");
    let out = c.laptop.run(&["web01.company", "hello"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello\n",
        "{}",
        common::stderr(&out)
    );

    // Version 2 again, exactly as the CM signed it, from the CM's own key:
    // a replay, refused; nothing changes.
    let v3 = fs::read(&machine_toml).unwrap();
    let cm_key = Identity::load(&c.cm.cluster_dir("company").join("identity.key")).unwrap();
    let web_id: Id52 = c.web_id.parse().unwrap();
    let web_addr: SocketAddr = c.web01.socket_addr().parse().unwrap();
    let replay = Envelope::seal(&cm_key, &web_id, 2, v2);
    let answer = common::raw::push(&cm_key, &web_id, web_addr, replay);
    assert!(
        matches!(&answer, PushAnswer::Rejected { holds: Some(3), .. }),
        "{answer:?}"
    );
    wait_until("web01 logs the refused replay", || {
        web.log_text().contains("refused config version 2")
    });
    assert_eq!(fs::read(&machine_toml).unwrap(), v3, "unchanged");
    let status = c.web01.json(&["status", "--json"]);
    assert_eq!(status["clusters"][0]["config_version"], 3);
    let out = c.laptop.run(&["web01.company", "hello"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    web.wait_status("company: machine v3");
}

/// A CM that lost its state.json (or had an old copy restored) starts over
/// at version 1; its machines hold version 4 and would refuse every later
/// config as not newer. The first refusal carries the version held; the CM
/// moves past it, says so in status, and a revocation made meanwhile lands.
#[test]
fn a_cm_that_lost_its_state_moves_past_its_machines_and_a_revocation_lands() {
    let c = Company::loopback();
    let (cm, mut web, _lap) = c.start_synced("allow_from = \"laptop\"", "", "");
    let mut cm = Some(cm);
    let cluster_toml = c.cm.cluster_dir("company").join("cluster.toml");
    for version in [3, 4] {
        let mut text = fs::read_to_string(&cluster_toml).unwrap();
        text.push_str(&format!("# change {version}\n"));
        fs::write(&cluster_toml, text).unwrap();
        c.cm.ok(&["rescan"]);
        let d = cm.as_mut().unwrap();
        d.wait_status(&format!("cluster-manager v{version}, 2/2 machines in sync"));
    }
    web.wait_status("company: machine v4");
    let out = c.laptop.run(&["web01.company", "echo", "allowed"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "allowed\n");

    // The CM goes down and loses its state; the laptop is revoked on web01.
    assert!(cm.take().unwrap().stop().success());
    fs::remove_file(c.cm.cluster_dir("company").join("state.json")).unwrap();
    c.write_cluster_toml("", "", "");
    let mut cm = c.cm.start_daemon();
    cm.wait_status("cluster-manager v5, 2/2 machines in sync");
    web.wait_status("company: machine v5");
    let out = c.laptop.run(&["web01.company", "echo", "allowed"]);
    // Refused by web01's ACL (exit 255, as ssh when it cannot run it).
    assert_eq!(out.status.code(), Some(255));
    assert!(out.stdout.is_empty());
    assert!(
        common::stderr(&out).contains("denied the command"),
        "{}",
        common::stderr(&out)
    );

    let status = c.cm.json(&["status", "--json"]);
    let moved = &status["clusters"][0]["moved_past"];
    assert_eq!(
        (moved["from"].as_u64(), moved["to"].as_u64()),
        (Some(1), Some(5)),
        "{status}"
    );
    let text = c.cm.ok(&["status"]);
    assert!(
        text.contains("the config version jumped from 1 to 5"),
        "{text}"
    );
}

/// A member that fetches again and again makes the CM redo its own push
/// only: the push to an unreachable machine keeps its backoff instead of
/// starting over at every fetch (each fetch used to restart every push, an
/// amplifier for any member's key).
#[test]
fn fetches_by_a_member_do_not_restart_the_pushes_to_others() {
    let c = Company::loopback();
    let mut cm = c.cm.start_daemon_with(&[("MALAI_LOG", "malai=debug")]);
    let _lap = c.laptop.start_daemon();
    c.write_cluster_toml("", "", "");
    c.cm.ok(&["rescan"]);
    // web01 has no daemon: its push fails and backs off (1 s, 2 s, 4 s...).
    cm.wait_status("cluster-manager v2, 1/2 machines in sync");
    let pushes_to_web01 = |cm: &common::net::Daemon| {
        cm.log_text()
            .lines()
            .filter(|l| l.contains("pushing config version 2 to") && l.contains(&c.web_id))
            .count()
    };
    wait_until("a first push to web01", || pushes_to_web01(&cm) >= 1);
    let before = pushes_to_web01(&cm);
    let laptop_key = Identity::load(&c.laptop.cluster_dir("company").join("identity.key")).unwrap();
    let cm_id: Id52 = c.cm_id.parse().unwrap();
    let cm_addr: SocketAddr = c.cm.socket_addr().parse().unwrap();
    let fetches = 30;
    for _ in 0..fetches {
        let answer: malai::sync::proto::FetchAnswer = common::raw::config_request(
            &laptop_key,
            &cm_id,
            cm_addr,
            malai::sync::proto::ConfigRequest::Fetch { protocol: None },
        );
        assert!(matches!(
            answer,
            malai::sync::proto::FetchAnswer::Config { .. }
        ));
    }
    let during = pushes_to_web01(&cm) - before;
    assert!(
        during < 8,
        "{during} pushes to web01 during {fetches} fetches by the laptop: the backoff must hold"
    );
}

/// A cluster with more machines that never answer than the CM pushes to
/// at once: web01 still gets the config while their dials are waiting,
/// not once they gave up (the window's own rule, that a push holds its
/// place for a moment only, is proven in `sync::cm`'s unit tests, where
/// the order of the pushes is known).
#[test]
fn machines_that_never_answer_do_not_hold_back_a_live_one() {
    let c = Company::loopback();
    let mut cm = c.cm.start_daemon();
    let _web = c.web01.start_daemon();
    // Their address takes every datagram and answers none, as a machine
    // that is off behind a firewall does.
    let black_hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent = black_hole.local_addr().unwrap();
    let dead = 40;
    let extra: String = (0..dead)
        .map(|i| {
            let id = Identity::generate().id52();
            format!("[machine.dead{i:02}]\nid52 = \"{id}\"\naddrs = [\"{silent}\"]\n\n")
        })
        .collect();
    c.write_cluster_toml("", "", &extra);
    c.cm.ok(&["rescan"]);
    // The laptop has no daemon either.
    cm.wait_status(&format!(
        "cluster-manager v2, 1/{} machines in sync",
        dead + 2
    ));
    let status = c.cm.json(&["status", "--json"]);
    let machines = status["clusters"][0]["machines"].as_array().unwrap();
    let given_up: Vec<&str> = machines
        .iter()
        .filter(|m| !m["unreachable_since"].is_null())
        .filter_map(|m| m["alias"].as_str())
        .filter(|alias| alias.starts_with("dead"))
        .collect();
    assert!(
        given_up.is_empty(),
        "web01 got its config only after the pushes to {given_up:?} gave up"
    );
    drop(black_hole);
}
