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
             [machine.laptop]\nid52 = \"{laptop_id}\"\n",
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
