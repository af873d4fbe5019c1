//! Old and new malai in one cluster (docs/COMPATIBILITY.md), on loopback:
//! a first-release machine (its fetch and its machine.toml as that release
//! sends and keeps them) gets no key it would refuse, the CM's status says
//! what it lacks, and once upgraded the machine receives the full config at
//! the same version, while the old text replayed is still refused.

mod common;

use std::net::SocketAddr;

use common::net::{Company, wait_until};
use common::raw::{config_request, push};
use malai::identity::{Id52, Identity};
use malai::sync::envelope::Envelope;
use malai::sync::proto::{ConfigRequest, FetchAnswer, PushAnswer};

#[test]
fn a_first_release_machine_gets_only_what_it_understands_until_upgraded() {
    let c = Company::loopback();
    let mut cm = c.cm.start_daemon();
    let _laptop = c.laptop.start_daemon();
    c.write_cluster_toml(
        "allow_from = \"laptop\"\n[machine.web01.command.top]\ncommand = \"top -b -n 1\"\nallow_from = \"laptop\"\nallow_pty = true\n",
        "",
        "",
    );
    c.cm.ok(&["rescan"]);
    cm.wait_status("cluster-manager v2");

    // web01 as the first release: a fetch that names no protocol.
    let web_key = Identity::load(&c.web01.cluster_dir("company").join("identity.key")).unwrap();
    let cm_id: Id52 = c.cm_id.parse().unwrap();
    let cm_addr: SocketAddr = c.cm.socket_addr().parse().unwrap();
    let old_fetch = ConfigRequest::Fetch { protocol: None };
    let FetchAnswer::Config { envelope: old } =
        config_request(&web_key, &cm_id, cm_addr, old_fetch)
    else {
        panic!("no config for web01");
    };
    assert_eq!(old.version, 2);
    for key in ["allow_pty", "protocol"] {
        assert!(!old.config.contains(key), "{key} in:\n{}", old.config);
    }
    let needs = |c: &Company| {
        c.cm.json(&["status", "--json"])["clusters"][0]["machines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["alias"] == "web01")
            .unwrap()["needs_upgrade"]
            .clone()
    };
    assert_eq!(needs(&c), serde_json::json!(["allow_pty of command top"]));
    let text = c.cm.ok(&["status"]);
    assert!(
        text.contains("runs an older malai: upgrade it for allow_pty of command top"),
        "{text}"
    );

    // It keeps that text, as the first release does; then it is upgraded.
    let machine_toml = c.web01.cluster_dir("company").join("machine.toml");
    std::fs::write(&machine_toml, &old.config).unwrap();
    let mut web = c.web01.start_daemon();
    wait_until("web01 holds the config written for it", || {
        std::fs::read_to_string(&machine_toml).is_ok_and(|t| t.contains("allow_pty = true"))
    });
    let now = std::fs::read_to_string(&machine_toml).unwrap();
    let current = format!("protocol = {}", malai::personalize::PROTOCOL);
    assert!(now.contains(&current), "{now}");
    web.wait_status("company: machine v2");
    wait_until("the CM no longer lists web01 as needing an upgrade", || {
        needs(&c).is_null()
    });

    // The first-release text, replayed with the CM's own key: refused.
    let cm_key = Identity::load(&c.cm.cluster_dir("company").join("identity.key")).unwrap();
    let web_id: Id52 = c.web_id.parse().unwrap();
    let web_addr: SocketAddr = c.web01.socket_addr().parse().unwrap();
    let replay = Envelope::seal(&cm_key, &web_id, 2, old.config.clone());
    let answer = push(&cm_key, &web_id, web_addr, replay);
    assert!(matches!(&answer, PushAnswer::Rejected { .. }), "{answer:?}");
    assert_eq!(std::fs::read_to_string(&machine_toml).unwrap(), now);
}
