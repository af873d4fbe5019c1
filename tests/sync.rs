//! Config distribution under stress and several clusters in one daemon:
//! a machine killed with SIGKILL while configs arrive never holds a torn
//! machine.toml and converges after a restart; one daemon is CM of one
//! cluster and machine of another, and a peer of one has no rights in the
//! other.

mod common;

use std::fs;
use std::process::Command;

use common::net::{Company, PORT, id52_of};
use malai::config::{FileKind, cluster};

#[test]
fn kill_9_while_configs_arrive_never_tears_machine_toml() {
    require_root!();
    let c = Company::new("kill9");
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
    require_root!();
    let c = Company::new("multi");
    // laptop: machine of company and CM of personal; web01: machine of both.
    let personal_port = PORT + 1;
    for h in [&c.web01, &c.laptop] {
        let settings = format!(
            "[network]\nrelay = \"disabled\"\ndiscovery = false\nbind = \"{}\"\n[network.ports]\ncompany = {PORT}\npersonal = {personal_port}\n",
            h.addr
        );
        fs::write(h.home.path().join("malai.toml"), settings).unwrap();
    }
    let lap_personal = id52_of(&c.laptop.json(&["cluster", "init", "personal", "--json"]));
    let lap_personal_addr = format!("{}:{personal_port}", c.laptop.addr);
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
            "[cluster-manager]\nid52 = \"{lap_personal}\"\n\n[machine.laptop]\nid52 = \"{lap_personal}\"\n\n[machine.web01]\nid52 = \"{web_personal}\"\naddrs = [\"{}:{personal_port}\"]\nallow_from = \"laptop\"\n",
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
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.web01.ns,
            common::malai_bin(),
            "laptop.spoof",
            "echo",
            "sneaky",
        ])
        .env("MALAI_HOME", c.web01.home.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // A key company's config does not name is a stranger there: refused
    // at the handshake, before its request is read.
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(err.contains("not a member of this cluster"), "{err}");
    assert!(out.stdout.is_empty());
    let deadline = std::time::Instant::now() + common::net::DEADLINE;
    while !lap.log_text().contains(&format!("refused {web_personal}")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no denial logged:\n{}",
            lap.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(20)); // poll the log
    }
    drop(web);
}
