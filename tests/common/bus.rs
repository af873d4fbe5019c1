//! A private `dbus-daemon` for tests, on a socket path (reachable from
//! every network namespace), killed by its pid when dropped.

use std::process::{Command, Stdio};

/// A private session-type bus, killed (by its pid) when dropped.
pub struct PrivateBus {
    pub address: String,
    pub pid: i32,
    /// Holds the bus socket: a path, reachable from every network
    /// namespace (an abstract socket is not).
    pub socket_dir: Option<tempfile::TempDir>,
}

impl PrivateBus {
    /// Fails the test, naming the package, when dbus-daemon or busctl is
    /// missing.
    pub fn start() -> PrivateBus {
        super::require_tool("dbus-daemon", "dbus");
        super::require_tool("busctl", "systemd");
        let dir = tempfile::tempdir().expect("temp dir");
        let address = format!("--address=unix:path={}", dir.path().join("bus").display());
        PrivateBus::spawn(&[&address, "--session"], Some(dir))
    }

    /// Runs `dbus-daemon ARGS`, forking, and reads its address and pid.
    pub fn spawn(args: &[&str], socket_dir: Option<tempfile::TempDir>) -> PrivateBus {
        let out = Command::new("dbus-daemon")
            .args(args)
            .args([
                "--print-address=1",
                "--print-pid=1",
                "--fork",
                "--nopidfile",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run dbus-daemon");
        assert!(out.status.success(), "dbus-daemon: {}", super::stderr(&out));
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let mut lines = text.lines();
        let address = lines.next().expect("an address line").trim().to_owned();
        let pid = lines
            .next()
            .expect("a pid line")
            .trim()
            .parse()
            .expect("a pid");
        PrivateBus {
            address,
            pid,
            socket_dir,
        }
    }

    pub fn busctl(&self, args: &[&str]) -> String {
        let out = Command::new("busctl")
            .arg(format!("--address={}", self.address))
            .args(args)
            .output()
            .expect("run busctl");
        assert!(
            out.status.success(),
            "busctl {args:?}: {}",
            super::stderr(&out)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}
