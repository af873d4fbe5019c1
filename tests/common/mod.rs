//! Helpers shared by the integration tests: temporary homes and running the
//! real `malai` binary in them.

#![allow(dead_code)]

pub mod bus;
pub mod lab;
pub mod net;
pub mod raw;
pub mod tmux;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub fn malai_bin() -> &'static str {
    env!("CARGO_BIN_EXE_malai")
}

/// A MALAI_HOME in a temporary directory, deleted when dropped.
pub struct TestHome {
    pub dir: tempfile::TempDir,
}

impl TestHome {
    pub fn new() -> Self {
        TestHome {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn cluster_dir(&self, alias: &str) -> PathBuf {
        self.path().join("clusters").join(alias)
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(malai_bin());
        c.env("MALAI_HOME", self.path()).env_remove("RUST_LOG");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run malai")
    }

    /// Runs and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "malai {args:?} failed ({:?}):\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).expect("stdout is one JSON object")
    }

    /// Offline network settings on loopback, then `malai cluster init
    /// ALIAS`; returns what init printed (`--json`).
    pub fn init_loopback_cluster(&self, alias: &str) -> serde_json::Value {
        std::fs::write(
            self.path().join("malai.toml"),
            "[network]\nrelay = \"disabled\"\ndiscovery = false\nbind = \"127.0.0.1\"\n",
        )
        .unwrap();
        self.json(&["cluster", "init", alias, "--json"])
    }
}

/// Reads NOTIFY_SOCKET datagrams until one contains `what` (30 s at most);
/// returns everything read.
pub fn read_notify_until(sock: &UnixDatagram, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = String::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {what:?} within 30 s; got:\n{seen}");
        sock.set_read_timeout(Some(left)).unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            seen.push_str(&msg);
            seen.push('\n');
            if msg.contains(what) {
                return seen;
            }
        }
    }
}

/// Whether `tool` is a program on PATH (or, with a slash, a file).
pub fn have(tool: &str) -> bool {
    if tool.contains('/') {
        return Path::new(tool).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

/// Fails the calling test, naming the Debian package to install, when
/// `tool` is missing: a test that cannot run must not pass.
pub fn require_tool(tool: &str, package: &str) {
    assert!(
        have(tool),
        "{tool} is not installed: apt-get install {package} (.ci/run installs it)"
    );
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A line of /proc/PID/status in KiB (e.g. `VmRSS:`).
fn proc_status_kib(pid: i32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text.lines().find(|l| l.starts_with(key)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The resident memory of `pid` now, in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

/// The peak resident memory of `pid`, in KiB.
pub fn hwm_kib(pid: i32) -> u64 {
    proc_status_kib(pid, "VmHWM:")
}

/// The anonymous resident memory of `pid` now (heap and stacks, without the
/// binary's code pages, which a debug build has 30 MB of and faults in as
/// new paths run), in KiB.
pub fn rss_anon_kib(pid: i32) -> u64 {
    proc_status_kib(pid, "RssAnon:")
}
