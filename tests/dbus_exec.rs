//! Exec through the local daemon on D-Bus: the laptop's daemon holds the
//! cluster key and the connection, the CLI passes its descriptors and needs
//! no key; output, stdin, exit codes, denials, Ctrl-C and a vanished caller
//! behave as on the direct path; with the daemon gone, the CLI dials
//! directly again.

mod common;

use std::io::{Read, Write};
use std::process::{Child, Stdio};
use std::time::Instant;

use common::bus::PrivateBus;
use common::net::{Company, DEADLINE, Host, pids_matching};

/// `malai ARGS` on `host`, looking for its daemon on `bus`.
fn on_bus(host: &Host, bus: &PrivateBus, args: &[&str]) -> std::process::Command {
    let mut c = host.malai(args);
    c.env("MALAI_DBUS_ADDRESS", &bus.address);
    c
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(std::time::Duration::from_millis(20)); // poll
    }
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
fn exec_through_the_daemon_uses_the_callers_descriptors_and_no_key() {
    require_root!();
    let Some(bus) = PrivateBus::start() else {
        return;
    };
    let c = Company::new("dbx");
    let mut cm = c.cm.start_daemon();
    let _web = c.web01.start_daemon();
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
    let mut child = on_bus(
        &c.laptop,
        &bus,
        &[
            "-v",
            "web01.company",
            "sh",
            "-c",
            "echo out; echo err >&2; cat; exit 7",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    child.stdin.take().unwrap().write_all(b"up\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = common::stderr(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\nup\n", "{err}");
    assert!(err.contains("err\n"), "{err}");
    assert!(err.contains("through the daemon"), "{err}");
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(
        lap.log_text().contains("through the daemon"),
        "the daemon logs who ran what: {}",
        lap.log_text()
    );

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
    let child = start_sleep(&c, &bus, "301");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(128 + 2), "{}", common::stderr(&out));
    wait_until("sleep 301 is gone", || {
        pids_matching("sleep 301").is_empty()
    });

    // A CLI that dies takes its remote command with it.
    let mut child = start_sleep(&c, &bus, "302");
    child.kill().unwrap();
    child.wait().unwrap();
    wait_until("sleep 302 is gone", || {
        pids_matching("sleep 302").is_empty()
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
}
