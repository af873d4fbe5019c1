//! Real networks: machines behind NAT routers, the company's own relay
//! (iroh-relay's server, TLS from the company's CA), nothing configured but
//! the relay's URL and its CA, discovery off, no address written anywhere.
//! See tests/common/lab.rs for the lab.

mod common;

use common::bus::PrivateBus;
use common::lab::{Lab, Nat};
use common::net::{Daemon, Host, id52_of, wait_until};

/// A cluster `company`: cm, web01 and laptop each behind their own router;
/// machines join with the relay alone; cluster.toml names the relay and
/// its CA and no address. web01 lets the laptop run anything; its daemon
/// is on a private bus (a Unix socket, reachable from its namespace), so
/// that `status` shows its peers and their paths. Returns the three daemons
/// with both machines in sync, and that bus.
fn company(
    lab: &Lab,
    cm: &Host,
    web01: &Host,
    laptop: &Host,
) -> (Daemon, Daemon, Daemon, PrivateBus) {
    company_with(lab, [cm, web01, laptop], "")
}

/// `company`, with `extra` appended to cluster.toml.
fn company_with(
    lab: &Lab,
    [cm, web01, laptop]: [&Host; 3],
    extra: &str,
) -> (Daemon, Daemon, Daemon, PrivateBus) {
    let cm_id = id52_of(&cm.json(&["cluster", "init", "company", "--json"]));
    let ca = lab.ca_pem.to_str().unwrap();
    let join = |h: &Host| {
        id52_of(&h.json(&[
            "machine",
            "init",
            &cm_id,
            "company",
            "--relay",
            &lab.relay_url(),
            "--relay-ca",
            ca,
            "--name",
            &h.name,
            "--json",
        ]))
    };
    let (web_id, laptop_id) = (join(web01), join(laptop));
    let pem = std::fs::read_to_string(&lab.ca_pem).unwrap();
    std::fs::write(
        cm.cluster_dir("company").join("cluster.toml"),
        format!(
            "[network]\nrelay = \"{}\"\nrelay_ca = '''\n{pem}'''\n\n\
             [cluster-manager]\nid52 = \"{cm_id}\"\n\n\
             [machine.web01]\nid52 = \"{web_id}\"\nallow_from = \"laptop\"\n\n\
             [machine.laptop]\nid52 = \"{laptop_id}\"\n\n{extra}\n",
            lab.relay_url()
        ),
    )
    .unwrap();
    let mut cm_daemon = cm.start_daemon();
    let bus = PrivateBus::start();
    let web_daemon = web01.start_daemon_with(&[("MALAI_DBUS_ADDRESS", &bus.address)]);
    let laptop_daemon = laptop.start_daemon();
    cm_daemon.wait_status("2/2 machines in sync");
    (cm_daemon, web_daemon, laptop_daemon, bus)
}

/// How web01's daemon reaches the peer named `alias` now ("direct",
/// "relay", "closed"), from its `status --json`.
fn web01_path_to(web01: &Host, bus: &PrivateBus, alias: &str) -> Option<String> {
    let out = web01
        .malai(&["status", "--json"])
        .env("MALAI_DBUS_ADDRESS", &bus.address)
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    status["clusters"][0]["peers"]
        .as_array()?
        .iter()
        .find(|p| p["alias"] == alias)
        .map(|p| p["path"].as_str().unwrap_or("").to_owned())
}

/// Runs `argv` on web01 from the laptop; its stdout.
fn on_web01(laptop: &Host, argv: &[&str]) -> String {
    let mut args = vec!["web01.company"];
    args.extend(argv);
    laptop.ok(&args)
}

#[test]
#[ignore = "needs root: network namespaces and NAT routers"]
fn machines_behind_nat_are_reached_through_the_company_relay_with_no_address() {
    let mut lab = Lab::new("a");
    lab.start_relay();
    let cm = lab.home("cm", 1, Nat::Ordinary);
    let web01 = lab.home("web01", 2, Nat::Ordinary);
    let laptop = lab.home("laptop", 3, Nat::Ordinary);
    let (_cm, _web01, _laptop, bus) = company(&lab, &cm, &web01, &laptop);
    // It ran in web01's network namespace, behind its router.
    let out = on_web01(&laptop, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(out.contains("192.168.2.2/24"), "{out}");

    // A running command: its connection starts on the relay and goes
    // direct (hole punching through both NATs) within 10 s; then the relay
    // stops and the command still ends well.
    let secs = common::net::sleep_secs(12);
    let mut sleeping = laptop
        .malai(&["web01.company", "sleep", &secs])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("web01 reaches the laptop directly", || {
        web01_path_to(&web01, &bus, "laptop").as_deref() == Some("direct")
    });
    lab.stop_relay();
    let status = sleeping.wait().unwrap();
    assert!(status.success(), "the command survives the relay: {status}");
}

#[test]
#[ignore = "needs root: network namespaces and NAT routers"]
fn behind_hard_nats_everything_goes_through_the_relay() {
    let mut lab = Lab::new("h");
    lab.start_relay();
    let cm = lab.home("cm", 1, Nat::Hard);
    let web01 = lab.home("web01", 2, Nat::Hard);
    let laptop = lab.home("laptop", 3, Nat::Hard);
    let (_cm, _web01, _laptop, bus) = company(&lab, &cm, &web01, &laptop);
    let out = on_web01(&laptop, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(out.contains("192.168.2.2/24"), "{out}");
    // A running command stays on the relay: no direct path can be punched.
    let secs = common::net::sleep_secs(3);
    let mut sleeping = laptop
        .malai(&["web01.company", "sleep", &secs])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("web01 sees the laptop's command", || {
        web01_path_to(&web01, &bus, "laptop").is_some_and(|p| p != "closed")
    });
    assert_eq!(
        web01_path_to(&web01, &bus, "laptop").as_deref(),
        Some("relay")
    );
    assert!(sleeping.wait().unwrap().success());
}

/// A process the test started in a namespace, ended by its pid on drop.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs root: network namespaces and NAT routers"]
fn with_the_cm_down_machines_serve_and_forward_and_pushes_resume() {
    let mut lab = Lab::new("c");
    lab.start_relay();
    let cm = lab.home("cm", 1, Nat::Ordinary);
    let web01 = lab.home("web01", 2, Nat::Ordinary);
    let laptop = lab.home("laptop", 3, Nat::Ordinary);
    // The laptop's daemon forwards 127.0.0.1:18080 to a web server on
    // web01's own loopback, which only web01 can reach.
    let site = tempfile::tempdir().unwrap();
    let token = format!("behind-nat-{}", std::process::id());
    std::fs::write(site.path().join("hello.txt"), &token).unwrap();
    let _server = Proc(
        web01
            .command("python3")
            .args([
                "-m",
                "http.server",
                "8080",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(site.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3"),
    );
    let local = laptop.home.path().join("malai.toml");
    let mut text = std::fs::read_to_string(&local).unwrap();
    text.push_str("[forward.web]\nlisten = \"127.0.0.1:18080\"\nservice = \"web.company\"\n");
    std::fs::write(&local, text).unwrap();
    let service = "[service.web]\nmachine = \"web01\"\nprotocol = \"tcp\"\nport = 8080\nallow_from = \"laptop\"\n";
    let (cm_daemon, _web, _laptop, _bus) = company_with(&lab, [&cm, &web01, &laptop], service);

    // The CM goes down: machines keep serving with the config they hold.
    assert!(cm_daemon.stop().success());
    let out = on_web01(&laptop, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(out.contains("192.168.2.2/24"), "{out}");
    let url = "http://127.0.0.1:18080/hello.txt";
    let fetch = || {
        let out = laptop
            .command("curl")
            .args(["-sf", "--max-time", "5", url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_until("the forward reaches web01's web server", || {
        fetch() == token
    });

    // It comes back with a changed cluster.toml: the push reaches web01.
    let mut cm_daemon = cm.start_daemon();
    let path = cm.cluster_dir("company").join("cluster.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("# changed while the CM was down\n");
    std::fs::write(&path, text).unwrap();
    cm.ok(&["rescan"]);
    cm_daemon.wait_status("company: cluster-manager v3, 2/2 machines in sync");
    assert_eq!(
        web01.json(&["status", "--json"])["clusters"][0]["config_version"],
        3
    );
}

#[test]
#[ignore = "needs root: network namespaces and NAT routers"]
fn a_laptop_that_changes_networks_keeps_its_running_command() {
    let mut lab = Lab::new("r");
    lab.start_relay();
    let cm = lab.home("cm", 1, Nat::Ordinary);
    let web01 = lab.home("web01", 2, Nat::Ordinary);
    let laptop = lab.home("laptop", 3, Nat::Ordinary);
    lab.second_network(&laptop, "cafe", 4, Nat::Ordinary);
    let (_cm, _web, _laptop, bus) = company(&lab, &cm, &web01, &laptop);

    // A command that reads its input until the laptop sends a line, so it
    // runs for as long as the test needs; it answers with that line.
    let mut running = laptop
        .malai(&["web01.company", "head", "-n", "1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("web01 runs the laptop's command", || {
        web01_path_to(&web01, &bus, "laptop").is_some_and(|p| p != "closed")
    });
    lab.roam(&laptop, 4);
    use std::io::Write;
    let mut stdin = running.stdin.take().unwrap();
    writeln!(stdin, "sent from the cafe").unwrap();
    drop(stdin);
    let out = running.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "sent from the cafe\n");

    // The next command needs no new configuration.
    let out = on_web01(&laptop, &["echo", "still here"]);
    assert_eq!(out, "still here\n");
}
