//! Three hosts on loopback (cm, web01, laptop), each with its own
//! MALAI_HOME, UDP port and daemon, relays and discovery off: config push,
//! remote exec, streaming, stdin, exit codes and cleanup of abandoned
//! commands (the whole process group of a command whose client went away).

mod common;

use std::io::Read;
use std::process::Stdio;

use common::net::{Company, pids_matching, sleep_secs, wait_until};

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario, step by step, with its assertions"
)]
fn config_push_then_exec_streams_and_exits_like_ssh() {
    let c = Company::loopback();
    let (cm, web, _lap) = c.start_synced(
        "allow_from = \"admins\"",
        "",
        "[group.admins]\nmembers = \"laptop\"",
    );

    // Nobody touched web01: it holds the pushed machine.toml.
    let status = c.web01.json(&["status", "--json"]);
    assert_eq!(status["clusters"][0]["role"], "machine");
    assert_eq!(status["clusters"][0]["config_version"], 2);
    let cm_status = c.cm.json(&["status", "--json"]);
    for m in cm_status["clusters"][0]["machines"].as_array().unwrap() {
        assert_eq!(m["acked_version"], 2, "{m}");
        assert_eq!(m["sync"], "in-sync");
    }

    // Killing the CLI during a long command leaves nothing behind on web01,
    // nor anything the command started: its whole process group goes, a
    // shell and the job it put in the background alike. (Both CLIs are
    // killed now and checked at the end: web01 notices a killed client at
    // its idle timeout, while the other checks run.)
    let marker = sleep_secs(1000);
    let mut child = c
        .laptop
        .malai(&["web01.company", "sleep", &marker])
        .spawn()
        .unwrap();
    let (job, fg) = (sleep_secs(1001), sleep_secs(1002));
    let script = format!("sleep {job} & sleep {fg}; wait");
    let mut group = c
        .laptop
        .malai(&["web01.company", "sh", "-c", &script])
        .spawn()
        .unwrap();
    let shell = format!("sh -c {script}");
    let running = || {
        [format!("sleep {job}"), format!("sleep {fg}"), shell.clone()]
            .map(|needle| pids_matching(&needle).len())
    };
    wait_until("the remote sleep starts", || {
        !pids_matching(&format!("sleep {marker}")).is_empty()
    });
    wait_until("the remote shell and both sleeps run", || {
        running() == [1, 1, 1]
    });
    for cli in [&mut child, &mut group] {
        cli.kill().unwrap();
        let _ = cli.wait();
    }

    // stdout, stderr and the exit code, each where it belongs.
    let out = c.laptop.run(&[
        "web01.company",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(out.status.code(), Some(7));
    // The audit line carries the fields journald gets (MALAI_*).
    let log = web.log_text();
    let exit_line = log
        .lines()
        .find(|l| l.contains("malai_exit=7"))
        .unwrap_or_else(|| panic!("no audit line with the exit code:\n{log}"));
    for field in [
        "malai_cluster=company",
        &format!("malai_peer={}", c.laptop_id),
        "malai_config_version=2",
        "malai_argv=",
    ] {
        assert!(exit_line.contains(field), "{field} missing: {exit_line}");
    }

    // A signal death is 128+N.
    let out = c
        .laptop
        .run(&["web01.company", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(128 + 15));

    // stdin streams, with EOF.
    let mut child = c
        .laptop
        .malai(&["web01.company", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"hi\n").unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.stdout, b"hi\n");
    assert!(out.status.success());

    // The environment is an allow-list: LD_* and friends do not pass.
    let out = c
        .laptop
        .malai(&["web01.company", "env"])
        .env("LD_PRELOAD", "/evil.so")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap();
    let env = String::from_utf8_lossy(&out.stdout);
    assert!(env.contains("LC_ALL=C.UTF-8"), "{env}");
    assert!(!env.contains("LD_PRELOAD"), "{env}");
    assert!(!env.contains("MALAI_HOME"), "{env}");

    // 200 MB of output streams through while web01's daemon stays small.
    let rss_before = common::rss_kib(web.pid());
    let mut child = c
        .laptop
        .malai(&["web01.company", "head", "-c", "200000000", "/dev/zero"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let mut peak = rss_before;
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(buf[..n].iter().all(|b| *b == 0));
        total += n;
        if total % (16 << 20) < n {
            peak = peak.max(common::rss_kib(web.pid()));
        }
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(total, 200_000_000);
    let hwm = common::hwm_kib(web.pid());
    assert!(
        peak < rss_before + 64 * 1024 && hwm < rss_before + 64 * 1024,
        "daemon memory grew with output: before {rss_before} KiB, peak {peak} KiB, high-water {hwm} KiB"
    );

    // The abandoned commands of the start are gone, process groups and all.
    wait_until("the remote sleep is killed", || {
        pids_matching(&format!("sleep {marker}")).is_empty()
    });
    wait_until("the remote process group is killed", || {
        running() == [0, 0, 0]
    });
    wait_until("web01 logs the abandoned command", || {
        web.log_text().contains("went away")
    });

    // The daemons stop cleanly on SIGTERM.
    assert!(web.stop().success());
    assert!(cm.stop().success());
}
