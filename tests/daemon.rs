//! `malai daemon` itself, on hosts on loopback: one daemon per home,
//! refusing to start on invalid config, rescans that reconcile (and keep
//! the last good config of an invalid cluster), graceful shutdown that lets
//! running commands finish, the per-peer command cap; and, as root, running
//! commands as another user.

mod common;

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::net::{Company, DEADLINE, Host, path_str, pids_matching, sleep_secs, wait_until};
use malai::identity::Identity;
use nix::sys::signal::Signal;

#[test]
fn a_second_daemon_on_the_same_home_refuses_naming_the_first() {
    let host = Host::loopback("cm", &["company"]);
    host.ok(&["cluster", "init", "company"]);
    let mut first = host.start_daemon();

    let child = host
        .malai(&["daemon"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = output_within(child, DEADLINE, "the second daemon exits");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second daemon must fail:\n{err}");
    assert!(
        err.contains(&format!("pid {}", first.pid())),
        "names the running daemon's pid {}:\n{err}",
        first.pid()
    );
    assert!(
        err.contains(&path_str(host.home.path())),
        "names the home:\n{err}"
    );

    // The first daemon is untouched and still owns the lock.
    assert!(
        first.child.try_wait().unwrap().is_none(),
        "first still runs"
    );
    let lock = fs::read_to_string(host.home.path().join("malai.lock")).unwrap();
    assert_eq!(lock.trim(), first.pid().to_string());

    // Once it stops, the home is free again.
    assert!(first.stop().success());
    let again = host.start_daemon();
    assert!(again.stop().success());
}

#[test]
fn a_daemon_with_an_invalid_cluster_toml_exits_78_listing_every_error() {
    let host = Host::loopback("cm", &["company"]);
    let cm = common::net::id52_of(&host.json(&["cluster", "init", "company", "--json"]));
    let web = Identity::generate().id52().to_string();
    let path = host.cluster_dir("company").join("cluster.toml");
    fs::write(
        &path,
        format!(
            "[cluster-manager]\nid52 = \"{cm}\"\n\n[machine.web01]\nid52 = \"{web}\"\nallow_from = \"admins,devs\"\nusername = \"Www Data\"\n[group.admins]\nmembers = \"web01\"\n"
        ),
    )
    .unwrap();

    let sock = host.home.path().join("notify-bad.sock");
    let notify = UnixDatagram::bind(&sock).unwrap();
    notify.set_nonblocking(true).unwrap();
    let child = host
        .malai(&["daemon"])
        .env("NOTIFY_SOCKET", &sock)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = output_within(child, DEADLINE, "the daemon refuses to start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    let file = path_str(&path);
    for want in [
        format!("{file}:6:22: unknown principal \"devs\""),
        format!("{file}:7:12: \"Www Data\" is not a valid Unix user name"),
    ] {
        assert!(err.contains(&want), "expected {want:?} in:\n{err}");
    }
    assert!(err.contains("fix: "), "says how to fix it:\n{err}");

    // It never said it was ready, and it left no lock behind.
    let mut buf = [0u8; 4096];
    while let Ok(n) = notify.recv(&mut buf) {
        let msg = String::from_utf8_lossy(&buf[..n]);
        assert!(!msg.contains("READY=1"), "an invalid daemon said {msg:?}");
    }
    let home = malai::home::Home::at(host.home.path());
    assert_eq!(malai::daemon::lock::running_daemon(&home), None);
    let status = host.json(&["status", "--json"]);
    assert_eq!(status["clusters"][0]["role"], "invalid", "{status}");
}

#[test]
fn rescan_reconciles_clusters_and_keeps_the_last_good_config() {
    let c = Company::loopback();
    c.write_cluster_toml("allow_from = \"laptop\"", "", "");
    let mut cm = c.cm.start_daemon();
    let mut web = c.web01.start_daemon();
    let _lap = c.laptop.start_daemon();
    cm.wait_status("company: cluster-manager v2, 2/2 machines in sync");
    web.wait_status("company: machine v2");

    // A new cluster on the CM host is started by a rescan.
    c.cm.ok(&["cluster", "init", "other"]);
    c.cm.ok(&["rescan"]);
    cm.wait_notify("RELOADING=1");
    cm.wait_notify("READY=1");
    assert!(
        cm.status.contains("other: cluster-manager"),
        "{:?}",
        cm.status
    );
    assert!(cm.status.contains("company: cluster-manager v2"));

    // Its directory removed, the next rescan stops it.
    fs::remove_dir_all(c.cm.cluster_dir("other")).unwrap();
    c.cm.ok(&["rescan"]);
    cm.wait_notify("RELOADING=1");
    cm.wait_notify("READY=1");
    assert!(!cm.status.contains("other"), "{:?}", cm.status);
    assert!(cm.status.contains("company: cluster-manager v2"));
    let good_status = cm.status.clone();
    let state_path = c.cm.cluster_dir("company").join("state.json");
    assert_eq!(state_version(&state_path), 2);

    // An invalid cluster.toml: rescan exits 78 listing the error, the daemon
    // keeps the last good config.
    c.write_cluster_toml("allow_from = \"laptop,ghost\"", "", "");
    let out = c.cm.run(&["rescan"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    let file = path_str(&c.cm.cluster_dir("company").join("cluster.toml"));
    let want = format!("{file}:8:22: unknown principal \"ghost\"");
    assert!(err.contains(&want), "expected {want:?} in:\n{err}");
    cm.wait_notify("RELOADING=1");
    cm.wait_notify("READY=1");
    assert_eq!(cm.status, good_status, "STATUS unchanged");
    wait_until("the CM logs that it kept the last good config", || {
        let log = cm.log_text();
        log.contains("kept the last good config") && log.contains(&file)
    });
    assert_eq!(state_version(&state_path), 2, "no new version");
    let status = c.cm.json(&["status", "--json"]);
    let company = &status["clusters"][0];
    assert_eq!(company["alias"], "company");
    assert!(
        company["error"].as_str().unwrap_or("").contains("ghost"),
        "status reports why the file is invalid: {status}"
    );
    assert!(cm.child.try_wait().unwrap().is_none(), "the CM still runs");
    let out = c.laptop.run(&["web01.company", "echo", "still"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "still\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Fixed (and changed): the next rescan makes version 3 and pushes it.
    c.write_cluster_toml(
        "allow_from = \"laptop\"\n[machine.web01.command.hello]\ncommand = \"echo hello\"\nallow_from = \"laptop\"",
        "",
        "",
    );
    c.cm.ok(&["rescan"]);
    cm.wait_notify("RELOADING=1");
    cm.wait_notify("READY=1");
    cm.wait_status("company: cluster-manager v3, 2/2 machines in sync");
    web.wait_status("company: machine v3");
    assert_eq!(state_version(&state_path), 3);
    assert_eq!(
        c.cm.json(&["status", "--json"])["clusters"][0]["config_version"],
        3
    );
    let out = c.laptop.run(&["web01.company", "hello"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
}

#[test]
fn sigterm_lets_a_running_command_finish_then_exits_0() {
    let c = Company::loopback();
    let (_cm, mut web, _lap) = c.start_synced("allow_from = \"laptop\"", "", "");

    let marker = format!("sleep {}", sleep_secs(2));
    let cli = c
        .laptop
        .malai(&[
            "web01.company",
            "sh",
            "-c",
            &format!("{marker}; echo finished"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the remote sleep runs", || {
        !pids_matching(&marker).is_empty()
    });
    web.signal(Signal::SIGTERM);
    web.wait_notify("STOPPING=1");

    let out = output_within(cli, DEADLINE, "the CLI ends");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "finished\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
    let status = exit_within(&mut web.child, DEADLINE, "web01's daemon exits");
    assert!(
        status.success(),
        "daemon exit: {status}\n{}",
        web.log_text()
    );
    assert!(pids_matching(&marker).is_empty());
}

#[test]
fn a_command_started_while_stopping_is_refused() {
    let c = Company::loopback();
    let (_cm, mut web, _lap) = c.start_synced("allow_from = \"laptop\"", "", "");

    // A long command keeps the daemon draining while the late one arrives.
    let marker = format!("sleep {}", sleep_secs(6));
    let cli = c
        .laptop
        .malai(&["web01.company", "sh", "-c", &format!("{marker}; echo done")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the remote sleep runs", || {
        !pids_matching(&marker).is_empty()
    });
    web.signal(Signal::SIGTERM);
    web.wait_notify("STOPPING=1");

    let late = c.laptop.run(&["web01.company", "echo", "late"]);
    let err = String::from_utf8_lossy(&late.stderr);
    assert!(
        !String::from_utf8_lossy(&late.stdout).contains("late"),
        "a command started after STOPPING=1 ran:\n{err}"
    );
    assert_eq!(late.status.code(), Some(255), "{err}");

    let out = output_within(cli, DEADLINE, "the first CLI ends");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
    let status = exit_within(&mut web.child, DEADLINE, "web01's daemon exits");
    assert!(status.success());
}

#[test]
fn a_peer_may_run_16_commands_at_once_and_no_more() {
    let c = Company::loopback();
    let (_cm, web, _lap) = c.start_synced("allow_from = \"laptop\"", "", "");

    let secs = sleep_secs(30);
    let marker = format!("sleep {secs}");
    let mut clis: Vec<Child> = (0..16)
        .map(|_| {
            c.laptop
                .malai(&["web01.company", "sleep", &secs])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    wait_until("16 remote sleeps run", || {
        pids_matching(&marker).len() == 16
    });

    let child = c
        .laptop
        .malai(&["web01.company", "sleep", &secs])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = output_within(child, DEADLINE, "the 17th command is refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains("16 commands of this peer are already running"),
        "{err}"
    );
    assert_eq!(pids_matching(&marker).len(), 16, "no 17th sleep started");
    wait_until("web01 logs the refusal", || {
        web.log_text().contains("refused: 16 commands")
    });

    for cli in &mut clis {
        cli.kill().unwrap();
    }
    for cli in &mut clis {
        let _ = cli.wait();
    }
    wait_until("the abandoned sleeps are killed", || {
        pids_matching(&marker).is_empty()
    });
}

#[test]
#[ignore = "needs root: runs commands as other users"]
fn commands_run_as_the_configured_user() {
    let c = Company::loopback();
    let (_cm, _web, _lap) = c.start_synced("allow_from = \"laptop\"\nusername = \"nobody\"\n\
         [machine.web01.command.as-root]\ncommand = \"id -un\"\nallow_from = \"laptop\"\nusername = \"root\"\n\
         [machine.web01.command.as-ghost]\ncommand = \"id -un\"\nallow_from = \"laptop\"\nusername = \"nosuchuser\"",
        "",
        "",);

    let out = c.laptop.run(&["web01.company", "id", "-un"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "nobody\n", "{err}");
    assert_eq!(out.status.code(), Some(0));

    let out = c.laptop.run(&["web01.company", "as-root"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "root\n", "{err}");
    assert_eq!(out.status.code(), Some(0));

    let out = c.laptop.run(&["web01.company", "as-ghost"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(out.stdout.is_empty());
    assert!(err.contains("nosuchuser"), "names the user:\n{err}");
    assert!(err.contains("no user"), "says it does not exist:\n{err}");
}

/// The version in a CM's state.json.
fn state_version(path: &std::path::Path) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    v["version"].as_u64().expect("version in state.json")
}

/// Waits (polling) for a child to exit; kills it and fails after `limit`.
fn exit_within(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("timed out waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(20)); // poll for exit
    }
}

/// The output of a child with piped stdout/stderr, which must exit within
/// `limit` (its output is small enough for the pipes' buffers).
fn output_within(mut child: Child, limit: Duration, what: &str) -> Output {
    exit_within(&mut child, limit, what);
    child.wait_with_output().unwrap()
}
