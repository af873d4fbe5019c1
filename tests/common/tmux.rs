//! A terminal for tests: a tmux server of its own, whose one pane runs a
//! command (a remote shell), typed into and read like a person would.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::net::DEADLINE;

/// A tmux server of its own (its socket in a temporary directory), one
/// detached session whose only pane runs a command; the server is killed
/// and its socket deleted when dropped.
pub struct Tmux {
    dir: tempfile::TempDir,
}

impl Tmux {
    pub fn start(cols: u16, rows: u16, command: &str) -> Tmux {
        let term = Tmux {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        let (x, y) = (cols.to_string(), rows.to_string());
        term.ok(&[
            "new-session",
            "-d",
            "-s",
            "main",
            "-x",
            &x,
            "-y",
            &y,
            command,
        ]);
        term
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(self.dir.path().join("tmux"))
            .args(["-f", "/dev/null"])
            .args(args)
            .env_remove("TMUX")
            .output()
            .expect("run tmux (apt-get install tmux)")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            super::stderr(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `text` literally, then Enter.
    pub fn type_line(&self, text: &str) {
        self.ok(&["send-keys", "-t", "main", "-l", text]);
        self.keys(&["Enter"]);
    }

    /// Presses keys by tmux name (`Enter`, `C-c`).
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "main"];
        args.extend_from_slice(keys);
        self.ok(&args);
    }

    /// The visible screen, wrapped lines joined.
    pub fn screen(&self) -> String {
        self.ok(&["capture-pane", "-p", "-J", "-t", "main"])
    }

    /// Polls the screen until `cond` holds; returns that screen.
    pub fn wait_screen(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let screen = self.screen();
            if cond(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50)); // poll interval
        }
    }

    pub fn resize(&self, cols: u16, rows: u16) {
        let (x, y) = (cols.to_string(), rows.to_string());
        self.ok(&["resize-window", "-t", "main", "-x", &x, "-y", &y]);
    }

    /// The terminal the pane's command runs on.
    pub fn pane_tty(&self) -> String {
        self.ok(&["display-message", "-p", "-t", "main", "#{pane_tty}"])
            .trim()
            .to_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}
