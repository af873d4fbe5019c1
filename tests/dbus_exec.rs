//! Exec through the local daemon on D-Bus: the laptop's daemon holds the
//! cluster key and the connection, the CLI passes its descriptors and needs
//! no key; output, stdin, exit codes, denials, Ctrl-C and a vanished caller
//! behave as on the direct path; with the daemon gone, the CLI dials
//! directly again. Three hosts on loopback, each daemon on a private bus.

mod common;

use std::io::{Read, Write};
use std::process::{Child, Stdio};
use std::time::Instant;

use common::bus::PrivateBus;
use common::net::{Company, DEADLINE, Host, pids_matching, sleep_secs, wait_until};

/// `malai ARGS` on `host`, looking for its daemon on `bus`.
fn on_bus(host: &Host, bus: &PrivateBus, args: &[&str]) -> std::process::Command {
    let mut c = host.malai(args);
    c.env("MALAI_DBUS_ADDRESS", &bus.address);
    c
}

/// What the output comparison runs: stdout, stderr, stdin and an exit code.
const PROBE: [&str; 4] = [
    "web01.company",
    "sh",
    "-c",
    "echo out; echo err >&2; cat; exit 7",
];

/// Runs `cmd` with `up` on its stdin; its output.
fn with_stdin(mut cmd: std::process::Command) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"up\n").unwrap();
    child.wait_with_output().unwrap()
}

/// Starts a long command on web01 through the daemon; returns the CLI once
/// the command runs there.
fn start_sleep(c: &Company, bus: &PrivateBus, seconds: &str) -> Child {
    let child = on_bus(&c.laptop, bus, &["web01.company", "sleep", seconds])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let needle = format!("sleep {seconds}");
    wait_until(&format!("{needle} runs on web01"), || {
        !pids_matching(&needle).is_empty()
    });
    child
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario, step by step, with its assertions"
)]
fn exec_through_the_daemon_uses_the_callers_descriptors_and_no_key() {
    let bus = PrivateBus::start();
    let c = Company::loopback();
    let mut cm = c.cm.start_daemon();
    let web = c.web01.start_daemon();
    let mut lap = c
        .laptop
        .start_daemon_with(&[("MALAI_DBUS_ADDRESS", &bus.address)]);
    c.write_cluster_toml(
        "allow_from = \"laptop\"",
        "[machine.laptop.command.hi]\ncommand = \"echo hi from the laptop\"\nallow_from = \"laptop\"",
        "",
    );
    c.cm.ok(&["rescan"]);
    cm.wait_status("2/2 machines in sync");
    lap.wait_status("company: machine v2");

    // The CLI needs no key: the daemon has it.
    let key = c.laptop.cluster_dir("company").join("identity.key");
    let hidden = c.laptop.home.path().join("identity.key.hidden");
    std::fs::rename(&key, &hidden).unwrap();

    // stdout, stderr, stdin with EOF and the exit code.
    let out = with_stdin(on_bus(&c.laptop, &bus, &[&["-v"], &PROBE[..]].concat()));
    let err = common::stderr(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\nup\n", "{err}");
    assert!(err.contains("err\n"), "{err}");
    assert!(err.contains("through the daemon"), "{err}");
    assert_eq!(out.status.code(), Some(7), "{err}");
    let through_daemon = with_stdin(on_bus(&c.laptop, &bus, &PROBE));
    // A stdin of /dev/null is end-of-file at once for the command (the CLI
    // passes a pipe already closed, with no thread to feed it).
    let out = on_bus(
        &c.laptop,
        &bus,
        &["web01.company", "sh", "-c", "cat; echo after-eof"],
    )
    .stdin(Stdio::null())
    .output()
    .unwrap();
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(0), "after-eof\n"),
        "{}",
        common::stderr(&out)
    );
    assert!(
        lap.log_text().contains("through the daemon"),
        "the daemon logs who ran what: {}",
        lap.log_text()
    );
    // web01 logs which local user of the laptop ran it, as the laptop's
    // claim beside the peer it authenticated.
    let uid = nix::unistd::getuid().as_raw();
    let claimed = format!("malai_claimed_uid={uid}");
    wait_until("web01's audit line names the laptop's local user", || {
        web.log_text()
            .lines()
            .any(|l| l.contains(&claimed) && l.contains(&c.laptop_id) && l.contains("as it claims"))
    });

    // The device itself: the daemon decides with the ACL and runs it here.
    let out = on_bus(&c.laptop, &bus, &["laptop.company", "hi"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hi from the laptop\n",
        "{}",
        common::stderr(&out)
    );
    let out = on_bus(&c.laptop, &bus, &["laptop.company", "id"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(
        common::stderr(&out).contains("denied"),
        "{}",
        common::stderr(&out)
    );

    // An unknown machine is a usage error.
    let out = on_bus(&c.laptop, &bus, &["db01.company", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));
    assert!(common::stderr(&out).contains("no machine \"db01\""));

    // Ctrl-C reaches the remote command; its death by SIGINT is the exit.
    let secs = sleep_secs(301);
    let child = start_sleep(&c, &bus, &secs);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(128 + 2), "{}", common::stderr(&out));
    wait_until(&format!("sleep {secs} is gone"), || {
        pids_matching(&format!("sleep {secs}")).is_empty()
    });

    // A CLI that dies takes its remote command with it.
    let secs = sleep_secs(302);
    let mut child = start_sleep(&c, &bus, &secs);
    child.kill().unwrap();
    child.wait().unwrap();
    wait_until(&format!("sleep {secs} is gone"), || {
        pids_matching(&format!("sleep {secs}")).is_empty()
    });

    // Without its daemon and without the key, the CLI cannot go directly...
    drop(lap);
    let out = on_bus(&c.laptop, &bus, &["-v", "web01.company", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(common::stderr(&out).contains("going directly"));
    // ...and with the key back it does, and says so under -v.
    std::fs::rename(&hidden, &key).unwrap();
    let mut child = on_bus(&c.laptop, &bus, &["-v", "web01.company", "echo", "direct"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = common::stderr(&out);
    assert_eq!(stdout, "direct\n", "{err}");
    assert!(err.contains("going directly"), "{err}");
    assert!(err.contains("dialling"), "{err}");
    assert!(out.status.success(), "{err}");

    // The same command gives the same stdout, stderr and exit code both ways.
    let direct = with_stdin(on_bus(&c.laptop, &bus, &PROBE));
    assert_eq!(direct.stdout, through_daemon.stdout);
    assert_eq!(direct.stderr, through_daemon.stderr);
    assert_eq!(direct.status.code(), through_daemon.status.code());
    assert_eq!(direct.status.code(), Some(7));
}

/// `busctl monitor` of the signals of malai's cluster objects on `bus`;
/// its JSON lines arrive on the returned channel.
struct Monitor {
    child: Child,
    lines: std::sync::mpsc::Receiver<serde_json::Value>,
    seen: Vec<serde_json::Value>,
}

impl Monitor {
    fn start(bus: &PrivateBus) -> Monitor {
        let mut child = std::process::Command::new("busctl")
            .arg(format!("--address={}", bus.address))
            .args(["monitor", "--json=short"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("busctl monitor");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        let mut m = Monitor {
            child,
            lines,
            seen: Vec::new(),
        };
        // Ready once it shows a signal of ours.
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(Instant::now() < deadline, "busctl monitor never started");
            std::process::Command::new("busctl")
                .arg(format!("--address={}", bus.address))
                .args(["emit", "/test", "test.Monitor", "Ready"])
                .output()
                .unwrap();
            if m.next_within(
                |v| v["member"] == "Ready",
                std::time::Duration::from_millis(200),
            ) {
                return m;
            }
        }
    }

    fn next_within(
        &mut self,
        want: impl Fn(&serde_json::Value) -> bool,
        wait: std::time::Duration,
    ) -> bool {
        let deadline = Instant::now() + wait;
        if self.seen.iter().any(&want) {
            return true;
        }
        while let Ok(v) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            let hit = want(&v);
            self.seen.push(v);
            if hit {
                return true;
            }
        }
        false
    }

    /// Waits for a signal `member` whose payload data is `data`.
    fn wait_signal(&mut self, member: &str, data: serde_json::Value) {
        let want = |v: &serde_json::Value| v["member"] == member && v["payload"]["data"] == data;
        assert!(
            self.next_within(want, DEADLINE),
            "no {member} {data} signal; seen: {:#?}",
            self.seen
        );
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn config_editing_over_the_bus_with_signals_and_machine_properties() {
    let (cm_bus, lap_bus) = (PrivateBus::start(), PrivateBus::start());
    let c = Company::loopback();
    let mut cm =
        c.cm.start_daemon_with(&[("MALAI_DBUS_ADDRESS", &cm_bus.address)]);
    let _web = c.web01.start_daemon();
    let _lap = c
        .laptop
        .start_daemon_with(&[("MALAI_DBUS_ADDRESS", &lap_bus.address)]);
    c.write_cluster_toml("allow_from = \"laptop\"", "", "");
    c.cm.ok(&["rescan"]);
    cm.wait_status("2/2 machines in sync");
    let mut signals = Monitor::start(&cm_bus);

    // The laptop's daemon downloads and uploads as the laptop (a config
    // editor); the CLI has no key.
    let key = c.laptop.cluster_dir("company").join("identity.key");
    std::fs::remove_file(&key).unwrap();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("company.toml");
    let file_arg = common::net::path_str(&file);
    let ok = |host: &Host, bus: &PrivateBus, args: &[&str]| {
        let out = on_bus(host, bus, args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", common::stderr(&out));
    };
    ok(
        &c.laptop,
        &lap_bus,
        &["config", "download", "company", "-o", &file_arg],
    );
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("\n[group.ops]\nmembers = \"laptop\"\n");
    std::fs::write(&file, &text).unwrap();
    ok(&c.laptop, &lap_bus, &["config", "upload", &file_arg]);
    let hash = blake3::hash(text.as_bytes()).to_hex().to_string();
    assert_eq!(
        std::fs::read_to_string(c.cm.cluster_dir("company").join("cluster.toml")).unwrap(),
        text
    );

    // The CM's object announced it, then each machine's acknowledgement.
    signals.wait_signal("ConfigApplied", serde_json::json!([3, hash]));
    for (name, id) in [("web01", &c.web_id), ("laptop", &c.laptop_id)] {
        signals.wait_signal("MachineAcknowledged", serde_json::json!([name, id, 3]));
    }
    let machines = cm_bus.busctl(&[
        "get-property",
        "--json=short",
        "sh.malai.Malai1",
        "/sh/malai/Malai1/cluster/company",
        "sh.malai.Malai1.Cluster",
        "Machines",
    ]);
    let machines: serde_json::Value = serde_json::from_str(&machines).unwrap();
    let rows = machines["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{machines}");
    for row in rows {
        assert_eq!(row[2], 3, "{row}");
        assert_eq!(row[3], "in-sync", "{row}");
        assert!(row[4].as_u64().unwrap() > 0, "a last contact: {row}");
    }

    // An invalid upload through the bus: refused with its errors, 78.
    std::fs::write(&file, format!("{text}[group.bad]\nmembers = \"ghost\"\n")).unwrap();
    let out = on_bus(&c.laptop, &lap_bus, &["config", "upload", &file_arg])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", common::stderr(&out));
    assert!(common::stderr(&out).contains("ghost"));

    // On the CM itself the daemon applies an upload: a stale base is
    // refused with the version and hash in force.
    let cm_file = work.path().join("cm.toml");
    let cm_arg = common::net::path_str(&cm_file);
    ok(
        &c.cm,
        &cm_bus,
        &["config", "download", "company", "-o", &cm_arg],
    );
    let base = std::fs::read_to_string(format!("{cm_arg}.base")).unwrap();
    assert!(base.contains(&hash), "{base}");
    std::fs::write(
        format!("{cm_arg}.base"),
        base.replace(&hash, &"0".repeat(64)),
    )
    .unwrap();
    let out = on_bus(&c.cm, &cm_bus, &["config", "upload", &cm_arg])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("version 3") && err.contains(&hash), "{err}");
    // (uid 0 in CI.)
    let uid = nix::unistd::getuid();
    assert!(
        cm.log_text()
            .contains(&format!("uid {uid} on this device downloaded cluster.toml")),
        "the CM's daemon served the CLI: {}",
        cm.log_text()
    );
}

/// A home on loopback whose cluster `company` has its CM as its only
/// machine, `cm`, with `rules` (TOML lines) on it.
fn lone_cm(name: &str, rules: &str) -> Host {
    let host = Host::loopback(name, &["company"]);
    let cm = common::net::id52_of(&host.json(&["cluster", "init", "company", "--json"]));
    std::fs::write(
        host.cluster_dir("company").join("cluster.toml"),
        format!("[cluster-manager]\nid52 = \"{cm}\"\n\n[machine.cm]\nid52 = \"{cm}\"\n{rules}"),
    )
    .unwrap();
    host
}

/// A user who names no MALAI_HOME finds the system service's daemon on the
/// bus. When the user's own home has a cluster of the same name, that is
/// another cluster (another CM, other keys): `cm.company` must run there
/// with the user's keys, never through the service's `company`.
#[test]
fn a_cluster_of_the_users_own_is_not_sent_to_another_homes_daemon() {
    let bus = PrivateBus::start();
    // The service's home: its `company` lets nobody run anything on cm.
    let service = lone_cm("service", "");
    let _daemon = service.start_daemon_with(&[("MALAI_DBUS_ADDRESS", &bus.address)]);
    // The user's own home: its `company` lets the user's key run on cm.
    let own = lone_cm("own", "allow_from = \"cm\"\n");
    // No MALAI_HOME: the home comes from STATE_DIRECTORY, and a daemon of
    // any home will do for what the user's home does not have.
    let out = own
        .malai(&["cm.company", "echo", "own-cluster"])
        .env_remove("MALAI_HOME")
        .env("STATE_DIRECTORY", own.home.path())
        .env("MALAI_DBUS_ADDRESS", &bus.address)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(0), "own-cluster\n"),
        "{}",
        common::stderr(&out)
    );
    // The service's status is still what that user sees for the rest.
    let status = own
        .malai(&["status", "--json"])
        .env_remove("MALAI_HOME")
        .env("STATE_DIRECTORY", own.home.path())
        .env("MALAI_DBUS_ADDRESS", &bus.address)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", common::stderr(&status));
}

/// A user who names a MALAI_HOME is never served by a daemon of another
/// home, even one whose cluster of that name would run the command: the
/// one call (`ExecIn`) names the home, that daemon answers OtherHome before
/// it touches anything, and the CLI goes on with the named home alone.
#[test]
fn a_named_home_never_runs_a_command_through_another_homes_daemon() {
    let bus = PrivateBus::start();
    // The daemon's home: its `company` lets its own key run on cm.
    let service = lone_cm("service", "allow_from = \"cm\"\n");
    let daemon = service.start_daemon_with(&[("MALAI_DBUS_ADDRESS", &bus.address)]);
    // Through that daemon, with its own home named, the command runs...
    let out = on_bus(&service, &bus, &["-v", "cm.company", "echo", "served"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(0), "served\n"),
        "{}",
        common::stderr(&out)
    );
    assert!(
        !common::stderr(&out).contains("going directly"),
        "{}",
        common::stderr(&out)
    );
    // ...but a user naming another home (without that cluster) is told so
    // by that home, and nothing runs.
    let other = Host::loopback("other", &[]);
    let out = on_bus(&other, &bus, &["-v", "cm.company", "echo", "leaked"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        out.stdout.is_empty(),
        "ran through another home's daemon: {err}"
    );
    assert!(
        err.contains(&format!(
            "the daemon there serves {}",
            std::fs::canonicalize(service.home.path())
                .unwrap()
                .display()
        )),
        "{err}"
    );
    assert!(
        err.contains("no cluster") || err.contains("company"),
        "{err}"
    );
    let log = daemon.log_text();
    assert!(!log.contains("leaked"), "the daemon saw the command: {log}");
    drop(daemon);
}

#[test]
fn a_command_on_the_device_itself_ends_when_a_config_takes_its_rule_away() {
    let bus = PrivateBus::start();
    let c = Company::loopback();
    let mut cm = c.cm.start_daemon();
    let _web = c.web01.start_daemon();
    let mut lap = c
        .laptop
        .start_daemon_with(&[("MALAI_DBUS_ADDRESS", &bus.address)]);
    let rule = "[machine.laptop.command.hold]\ncommand = \"sleep 4747\"\nallow_from = \"laptop\"";
    c.write_cluster_toml("", rule, "");
    c.cm.ok(&["rescan"]);
    cm.wait_status("2/2 machines in sync");
    lap.wait_status("company: machine v2");

    let child = on_bus(&c.laptop, &bus, &["laptop.company", "hold"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("sleep 4747 runs on the laptop", || {
        !pids_matching("sleep 4747").is_empty()
    });

    // The rule goes.
    c.write_cluster_toml("", "", "");
    c.cm.ok(&["rescan"]);
    let mut child = child;
    wait_until("the command ended", || child.try_wait().unwrap().is_some());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(err.contains("revoked by config v3"), "{err}");
    wait_until("sleep 4747 is gone", || {
        pids_matching("sleep 4747").is_empty()
    });
    assert!(
        lap.log_text()
            .lines()
            .any(|l| l.contains("malai_decision=\"revoked\"") && l.contains("sleep 4747")),
        "{}",
        lap.log_text()
    );
}

/// The CLI asks its daemon with `Exec` alone (no probe of the cluster's
/// object first). A daemon that does not serve the cluster (made after it
/// started, not rescanned yet) answers `UnknownObject` without touching a
/// descriptor: the CLI goes on directly, and the command still gets all
/// of stdin, the part this process had already fed into the daemon's pipe
/// included (more than a pipe holds).
#[test]
fn a_cluster_the_daemon_does_not_serve_yet_goes_directly_with_all_of_stdin() {
    let bus = PrivateBus::start();
    let host = Host::loopback("solo", &["company", "second"]);
    host.json(&["cluster", "init", "company", "--json"]);
    let _daemon = host.start_daemon_with(&[("MALAI_DBUS_ADDRESS", &bus.address)]);
    let me = common::net::id52_of(&host.json(&["cluster", "init", "second", "--json"]));
    std::fs::write(
        host.cluster_dir("second").join("cluster.toml"),
        format!("[cluster-manager]\nid52 = \"{me}\"\n\n[machine.solo]\nid52 = \"{me}\"\nallow_from = \"solo\"\n"),
    )
    .unwrap();
    let input: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut child = on_bus(&host, &bus, &["-v", "solo.second", "sha256sum"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feed = {
        let input = input.clone();
        std::thread::spawn(move || stdin.write_all(&input))
    };
    let out = child.wait_with_output().unwrap();
    let err = common::stderr(&out);
    feed.join().unwrap().expect(&err);
    assert!(
        err.contains("has no cluster \"second\"") && err.contains("going directly"),
        "{err}"
    );
    let expected = {
        let mut sum = std::process::Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        sum.stdin.take().unwrap().write_all(&input).unwrap();
        sum.wait_with_output().unwrap().stdout
    };
    assert_eq!(
        (out.status.code(), String::from_utf8_lossy(&out.stdout)),
        (Some(0), String::from_utf8_lossy(&expected)),
        "{err}"
    );
}
