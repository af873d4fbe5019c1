//! Real networks: machines behind NAT routers, the company's own relay
//! (iroh-relay's server, TLS from the company's CA), nothing configured but
//! the relay's URL and its CA, discovery off, no address written anywhere.
//! See tests/common/lab.rs for the lab.

mod common;

use common::bus::PrivateBus;
use common::lab::{Lab, Nat};
use common::net::{Daemon, Host, id52_of, wait_until};
use common::tmux::Tmux;

/// A cluster `company`: cm, web01 and laptop each behind their own router;
/// machines join with the relay alone; cluster.toml names the relay and
/// its CA and no address. web01 lets the laptop run anything. Returns the
/// running cluster with both machines in sync.
fn company(lab: &Lab, cm: &Host, web01: &Host, laptop: &Host) -> Running {
    company_with(lab, [cm, web01, laptop], "")
}

/// `company`, with `extra` appended to cluster.toml.
fn company_with(lab: &Lab, [cm, web01, laptop]: [&Host; 3], extra: &str) -> Running {
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
    let web_bus = PrivateBus::start();
    let web_daemon = web01.start_daemon_with(&[("MALAI_DBUS_ADDRESS", &web_bus.address)]);
    let laptop_bus = PrivateBus::start();
    let laptop_daemon = laptop.start_daemon_with(&[("MALAI_DBUS_ADDRESS", &laptop_bus.address)]);
    cm_daemon.wait_status("2/2 machines in sync");
    Running {
        cm: cm_daemon,
        _web01: web_daemon,
        _laptop: laptop_daemon,
        web_bus,
        laptop_bus,
    }
}

/// The cluster's daemons. web01's and the laptop's are on private buses
/// (Unix sockets, reachable from their namespaces): web01's `status` shows
/// its peers and their paths, and the laptop's CLI goes through its daemon,
/// as it does wherever a daemon serves the cluster. (A second endpoint of
/// the same identity, a CLI dialling directly beside the daemon, would
/// take the relay's delivery for that id52 away from the first: the relay
/// serves one connection per id52.)
struct Running {
    cm: Daemon,
    _web01: Daemon,
    _laptop: Daemon,
    web_bus: PrivateBus,
    laptop_bus: PrivateBus,
}

impl Running {
    /// `malai ARGS` on the laptop, through its daemon.
    fn laptop(&self, laptop: &Host, args: &[&str]) -> std::process::Command {
        let mut c = laptop.malai(args);
        c.env("MALAI_DBUS_ADDRESS", &self.laptop_bus.address);
        c
    }

    /// How web01's daemon reaches the peer named `alias` now ("direct",
    /// "relay", "closed"), from its `status --json`.
    fn web01_path_to(&self, web01: &Host, alias: &str) -> Option<String> {
        web01_path_to(web01, &self.web_bus, alias)
    }
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

/// A shell on web01 from the laptop, in a terminal; returned once it
/// answers what is typed.
fn shell_on_web01(laptop: &Host, running: &Running) -> Tmux {
    let command = format!(
        "ip netns exec {} env -u MALAI_LOG MALAI_DBUS_ADDRESS={} MALAI_HOME={} {} web01.company",
        laptop.ns,
        running.laptop_bus.address,
        laptop.home.path().display(),
        common::malai_bin()
    );
    let term = Tmux::start(100, 30, &command);
    term.wait_screen("the remote shell's first output", |s| !s.trim().is_empty());
    say(&term, "READY");
    term
}

/// Types a command that prints `word` and a number, and waits for it: the
/// shell is alive and reachable.
fn say(term: &Tmux, word: &str) {
    term.type_line(&format!("echo {word}-$((6*7))"));
    let want = format!("{word}-42");
    term.wait_screen(&format!("the shell to answer {want}"), |s| {
        s.contains(&want)
    });
}

/// Runs `argv` on web01 from the laptop; its stdout.
fn on_web01(laptop: &Host, running: &Running, argv: &[&str]) -> String {
    let mut args = vec!["web01.company"];
    args.extend(argv);
    let out = running
        .laptop(laptop, &args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "malai {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The lab with its relay running and three homes, cm, web01 and laptop,
/// behind routers doing `nat`.
fn three_homes(tag: &str, nat: Nat) -> (Lab, [Host; 3]) {
    let mut lab = Lab::new(tag);
    lab.start_relay();
    let homes = [("cm", 1), ("web01", 2), ("laptop", 3)].map(|(name, n)| lab.home(name, n, nat));
    (lab, homes)
}

/// A command run on web01 from the laptop ran in web01's network
/// namespace, behind its router.
fn runs_behind_web01s_router(laptop: &Host, running: &Running) {
    let out = on_web01(
        laptop,
        running,
        &["ip", "-o", "-4", "addr", "show", "dev", "eth0"],
    );
    assert!(out.contains("192.168.2.2/24"), "{out}");
}

/// `sleep SECS` on web01 from the laptop, running.
fn sleep_on_web01(laptop: &Host, running: &Running, secs: &str) -> std::process::Child {
    running
        .laptop(laptop, &["web01.company", "sleep", secs])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
#[ignore = "needs root: network namespaces and NAT routers"]
fn machines_behind_nat_are_reached_through_the_company_relay_with_no_address() {
    let (mut lab, [cm, web01, laptop]) = three_homes("a", Nat::Ordinary);
    let running = company(&lab, &cm, &web01, &laptop);
    runs_behind_web01s_router(&laptop, &running);

    // A shell and a running command: their connections start on the relay
    // and go direct (hole punching through both NATs) within 10 s; then
    // the relay stops and both go on.
    let shell = shell_on_web01(&laptop, &running);
    let secs = common::net::sleep_secs(12);
    let started = std::time::Instant::now();
    let mut sleeping = sleep_on_web01(&laptop, &running, &secs);
    wait_until("web01 reaches the laptop directly", || {
        running.web01_path_to(&web01, "laptop").as_deref() == Some("direct")
    });
    let punched = started.elapsed();
    assert!(
        punched < std::time::Duration::from_secs(10),
        "direct after {punched:?}"
    );
    lab.stop_relay();
    say(&shell, "NO-RELAY");
    let status = sleeping.wait().unwrap();
    assert!(status.success(), "the command survives the relay: {status}");
}

#[test]
#[ignore = "needs root: network namespaces and NAT routers"]
fn behind_hard_nats_everything_goes_through_the_relay() {
    let (lab, [cm, web01, laptop]) = three_homes("h", Nat::Hard);
    let running = company(&lab, &cm, &web01, &laptop);
    runs_behind_web01s_router(&laptop, &running);
    // A running command stays on the relay: no direct path can be punched.
    let secs = common::net::sleep_secs(3);
    let mut sleeping = sleep_on_web01(&laptop, &running, &secs);
    wait_until("web01 sees the laptop's command", || {
        running
            .web01_path_to(&web01, "laptop")
            .is_some_and(|p| p != "closed")
    });
    assert_eq!(
        running.web01_path_to(&web01, "laptop").as_deref(),
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
    let (lab, [cm, web01, laptop]) = three_homes("c", Nat::Ordinary);
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
    let mut running = company_with(&lab, [&cm, &web01, &laptop], service);

    // The CM goes down: machines keep serving with the config they hold.
    running.cm.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(running.cm.child.wait().unwrap().success());
    runs_behind_web01s_router(&laptop, &running);
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
fn a_laptop_that_changes_networks_keeps_its_running_command_and_shell() {
    let (mut lab, [cm, web01, laptop]) = three_homes("r", Nat::Ordinary);
    lab.second_network(&laptop, "cafe", 4, Nat::Ordinary);
    let running = company(&lab, &cm, &web01, &laptop);

    // A command that reads its input until the laptop sends a line, so it
    // runs for as long as the test needs; it answers with that line.
    let mut reading = running
        .laptop(&laptop, &["web01.company", "head", "-n", "1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("web01 runs the laptop's command", || {
        running
            .web01_path_to(&web01, "laptop")
            .is_some_and(|p| p != "closed")
    });
    let shell = shell_on_web01(&laptop, &running);
    lab.roam(&laptop, 4);
    say(&shell, "CAFE");
    use std::io::Write;
    let mut stdin = reading.stdin.take().unwrap();
    writeln!(stdin, "sent from the cafe").unwrap();
    drop(stdin);
    let out = reading.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "sent from the cafe\n");

    // The next command needs no new configuration.
    let out = on_web01(&laptop, &running, &["echo", "still here"]);
    assert_eq!(out, "still here\n");
    // Where the laptop is is no part of the signed config: still version 2.
    assert_eq!(
        cm.json(&["status", "--json"])["clusters"][0]["config_version"],
        2
    );
}
