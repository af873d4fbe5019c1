//! Real networks: machines behind NAT routers, the company's own relay
//! (iroh-relay's server, TLS from the company's CA), nothing configured but
//! the relay's URL and its CA, discovery off, no address written anywhere.
//! See tests/common/lab.rs for the lab.

mod common;

use common::lab::{Lab, Nat};
use common::net::{Daemon, Host, id52_of};

/// A cluster `company`: cm, web01 and laptop each behind their own router;
/// machines join with the relay alone; cluster.toml names the relay and
/// its CA and no address. web01 lets the laptop run anything. Returns the
/// three daemons with both machines in sync.
fn company(lab: &Lab, cm: &Host, web01: &Host, laptop: &Host) -> (Daemon, Daemon, Daemon) {
    let cm_id = id52_of(&cm.json(&["cluster", "init", "company", "--json"]));
    let ca = lab.ca_pem.to_str().unwrap();
    let join = |h: &Host| {
        id52_of(&h.json(&[
            "machine", "init", &cm_id, "company", "--relay", &lab.relay_url(), "--relay-ca", ca,
            "--name", &h.name, "--json",
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
    let web_daemon = web01.start_daemon();
    let laptop_daemon = laptop.start_daemon();
    cm_daemon.wait_status("2/2 machines in sync");
    (cm_daemon, web_daemon, laptop_daemon)
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
    let _daemons = company(&lab, &cm, &web01, &laptop);
    // It ran in web01's network namespace, behind its router.
    let out = on_web01(&laptop, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(out.contains("192.168.2.2/24"), "{out}");
}

#[test]
#[ignore = "needs root: network namespaces and NAT routers"]
fn behind_hard_nats_everything_goes_through_the_relay() {
    let mut lab = Lab::new("h");
    lab.start_relay();
    let cm = lab.home("cm", 1, Nat::Hard);
    let web01 = lab.home("web01", 2, Nat::Hard);
    let laptop = lab.home("laptop", 3, Nat::Hard);
    let _daemons = company(&lab, &cm, &web01, &laptop);
    let out = on_web01(&laptop, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(out.contains("192.168.2.2/24"), "{out}");
}
