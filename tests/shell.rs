//! The interactive shell through a real terminal: `malai web01.company` run
//! in a tmux pane (as root, in the laptop's namespace) gets a login shell on
//! a PTY on web01 (in web01's namespace), with the pane's window size, later
//! window changes, Ctrl-C as a keystroke, the shell's exit code and the
//! local terminal restored. On loopback: a peer outside `allow_shell` gets
//! no shell but may still run commands, and leaving a shell with a job in
//! the background returns at once.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::bus::PrivateBus;
use common::net::{Company, Daemon, pids_matching, sleep_secs, wait_until};
use common::tmux::Tmux;

#[test]
#[ignore = "needs root: network namespaces (the shell must run in web01's)"]
fn shell_runs_on_a_pty_with_the_window_size_and_exit_code() {
    shell_on_a_pty("shpty", None);
}

/// The same through the laptop's daemon on D-Bus: the CLI passes its
/// terminal, window changes go as Resize calls.
#[test]
#[ignore = "needs root: network namespaces (the shell must run in web01's)"]
fn shell_through_the_daemon_runs_on_a_pty_with_the_window_size_and_exit_code() {
    let bus = PrivateBus::start();
    shell_on_a_pty("shbus", Some(&bus));
}

fn shell_on_a_pty(tag: &str, bus: Option<&PrivateBus>) {
    let bus_address = bus.map_or("disabled", |b| b.address.as_str());
    let c = Company::new(tag);
    let (_cm, web, lap) = c.start_synced_with(
        "allow_from = \"admins\"",
        "",
        "[group.admins]\nmembers = \"laptop\"",
        &[("MALAI_DBUS_ADDRESS", bus_address)],
    );
    let shell = Shell::open_via(&c, 100, 30, bus_address);
    let term = &shell.term;
    let pane_tty = term.pane_tty();

    // A PTY on web01, not the pane's own terminal.
    term.type_line("tty");
    let screen = term.wait_screen("tty to print a PTY", |s| remote_tty(s).is_some());
    let tty = remote_tty(&screen).unwrap();
    assert_ne!(tty, pane_tty, "the shell runs on the pane's own terminal");

    // In web01's network namespace.
    term.type_line("echo NET=$(ip -4 -o addr show dev eth0 | awk '{print $4}')");
    let web_net = format!("NET={}/24", c.web01.addr);
    term.wait_screen("the shell's address", |s| s.contains(&web_net));

    // The pane's window size, passed on when the PTY is made.
    term.type_line("echo SIZE=$(stty size)");
    term.wait_screen("the initial window size", |s| s.contains("SIZE=30 100"));

    // A window change is forwarded: wait until the remote PTY has the new
    // size (the Resize message and the keys travel separately), then ask the
    // shell too.
    term.resize(120, 40);
    wait_until("the remote PTY is resized", || {
        tty_size(&tty).as_deref() == Some("40 120")
    });
    term.type_line("echo RESIZED=$(stty size)");
    term.wait_screen("the new window size", |s| s.contains("RESIZED=40 120"));

    // The local terminal is raw: Ctrl-C is a byte for the remote PTY, which
    // interrupts the remote foreground job, not malai.
    let marker = sleep_secs(1000);
    term.type_line(&format!("sleep {marker}"));
    wait_until("the remote sleep starts", || {
        !pids_matching(&format!("sleep {marker}")).is_empty()
    });
    term.keys(&["C-c"]);
    wait_until("Ctrl-C ends the remote sleep", || {
        pids_matching(&format!("sleep {marker}")).is_empty()
    });
    term.type_line("echo STILL-$((6*9))");
    term.wait_screen("the shell after Ctrl-C", |s| s.contains("STILL-54"));

    // The shell's exit code is malai's.
    term.type_line("exit 3");
    wait_until("malai exits with the shell's code", || {
        shell.exit_code().as_deref() == Some("3")
    });
    wait_until("web01 logs the shell's exit", || {
        web.log_text().contains("exited with 3")
    });
    assert_eq!(
        lap.log_text().contains("through the daemon"),
        bus.is_some(),
        "the route taken: {}",
        lap.log_text()
    );

    // The local terminal is out of raw mode again.
    let modes = stty(&["-F", &pane_tty, "-a"]);
    let modes: Vec<&str> = modes.split_whitespace().collect();
    for mode in ["icanon", "echo", "isig", "opost", "icrnl"] {
        assert!(
            modes.contains(&mode),
            "the pane's terminal lacks {mode} after malai exited: {modes:?}"
        );
    }
}

#[test]
fn shell_outside_allow_shell_is_denied_but_commands_run() {
    let (c, [_cm, web, _lap]) = company_in_sync(
        "allow_from = \"admins\"\nallow_shell = \"nobody\"",
        "[group.admins]\nmembers = \"laptop\"\n\n[group.nobody]\nmembers = \"\"",
    );

    // No terminal: still a shell request (no argv), refused.
    let out = c.laptop.run(&["web01.company"]);
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(255), "stderr: {err}");
    assert!(err.contains("denied"), "stderr: {err}");
    assert!(err.contains("allow_shell"), "stderr: {err}");
    assert!(
        out.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_until("web01 logs the refusal", || {
        web.log_text().contains("may not open a shell")
    });

    // On a terminal too, and the terminal is left as it was.
    let shell = Shell::start(&c, 100, 30);
    wait_until("malai exits refused", || {
        shell.exit_code().as_deref() == Some("255")
    });
    shell
        .term
        .wait_screen("the refusal on the terminal", |s| s.contains("denied"));
    let modes = stty(&["-F", &shell.term.pane_tty(), "-a"]);
    assert!(
        modes.split_whitespace().any(|m| m == "icanon"),
        "the pane's terminal was left raw: {modes}"
    );

    // allow_from still grants commands.
    let out = c.laptop.run(&["web01.company", "echo", "ok"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        common::stderr(&out)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}

/// Like ssh, leaving a shell that started a background job ends the session
/// at once; and the job does not keep the host's command slot.
#[test]
fn shell_exit_with_a_background_job_returns() {
    let (c, [_cm, web, _lap]) = company_in_sync(
        "allow_from = \"admins\"",
        "[group.admins]\nmembers = \"laptop\"",
    );
    let marker = sleep_secs(1001);
    let _reap = KillOnDrop(format!("sleep {marker}"));
    let shell = Shell::open(&c, 100, 30);
    shell.term.type_line(&format!("sleep {marker} &"));
    wait_until("the background sleep starts", || {
        !pids_matching(&format!("sleep {marker}")).is_empty()
    });
    shell.term.type_line("exit 3");
    wait_until("malai exits with the shell's code", || {
        shell.exit_code().as_deref() == Some("3")
    });
    wait_until("web01 logs the shell's exit", || {
        web.log_text().contains("exited with 3")
    });
    // Nothing of web01's daemon waits on the PTY the job still holds: no
    // reader, no descriptor of its master side.
    let ptmx = || {
        std::fs::read_dir(format!("/proc/{}/fd", web.pid()))
            .unwrap()
            .flatten()
            .filter(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|target| target.to_string_lossy().ends_with("ptmx"))
            })
            .count()
    };
    wait_until("web01 let go of the shell's PTY", || ptmx() == 0);
}

/// Brings up the company on loopback with `web_rules` for web01 and
/// `extra` appended, and waits until web01 holds the pushed config. Returns
/// the daemons (cm, web01, laptop), which stop when dropped.
fn company_in_sync(web_rules: &str, extra: &str) -> (Company, [Daemon; 3]) {
    let c = Company::loopback();
    let (cm, web, lap) = c.start_synced(web_rules, "", extra);
    (c, [cm, web, lap])
}

/// `malai web01.company` on the laptop, in a tmux pane of `cols` x `rows`;
/// its exit code goes to a file.
struct Shell {
    term: Tmux,
    exit_file: PathBuf,
    _scratch: tempfile::TempDir,
}

impl Shell {
    fn start(c: &Company, cols: u16, rows: u16) -> Shell {
        Shell::start_via(c, cols, rows, "disabled")
    }

    /// With `MALAI_DBUS_ADDRESS` set to `bus` (`disabled`: direct).
    fn start_via(c: &Company, cols: u16, rows: u16, bus: &str) -> Shell {
        let scratch = tempfile::tempdir().expect("temp dir");
        let exit_file = scratch.path().join("exit");
        let netns = if c.laptop.ns.is_empty() {
            String::new()
        } else {
            format!("ip netns exec {} ", quote(&c.laptop.ns))
        };
        let command = format!(
            "{netns}env -u MALAI_LOG MALAI_DBUS_ADDRESS={} MALAI_HOME={} {} web01.company; echo EXIT=$? > {}; sleep 600",
            quote(bus),
            quote_path(c.laptop.home.path()),
            quote(common::malai_bin()),
            quote_path(&exit_file),
        );
        Shell {
            term: Tmux::start(cols, rows, &command),
            exit_file,
            _scratch: scratch,
        }
    }

    /// Starts the shell and waits until it reads what is typed.
    fn open(c: &Company, cols: u16, rows: u16) -> Shell {
        Shell::open_via(c, cols, rows, "disabled")
    }

    fn open_via(c: &Company, cols: u16, rows: u16, bus: &str) -> Shell {
        let shell = Shell::start_via(c, cols, rows, bus);
        // The login shell has started once anything reaches the screen (the
        // prompt); typing is then read by the shell, not lost.
        shell
            .term
            .wait_screen("the remote shell's first output", |s| !s.trim().is_empty());
        shell.term.type_line("echo READY-$((6*7))");
        shell
            .term
            .wait_screen("the shell to answer", |s| s.contains("READY-42"));
        shell
    }

    /// malai's exit code, once it has exited.
    fn exit_code(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.exit_file).ok()?;
        text.trim().strip_prefix("EXIT=").map(str::to_owned)
    }
}

/// SIGKILLs, when dropped, the processes whose command line starts with
/// the string (what a failed test may leave running).
struct KillOnDrop(String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in pids_matching(&self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The first `/dev/pts/N` printed on its own line.
fn remote_tty(screen: &str) -> Option<String> {
    screen.lines().map(str::trim).find_map(|l| {
        let n = l.strip_prefix("/dev/pts/")?;
        (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then(|| l.to_owned())
    })
}

/// `stty size` of a terminal, as "ROWS COLS".
fn tty_size(tty: &str) -> Option<String> {
    let out = Command::new("stty")
        .args(["-F", tty, "size"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn stty(args: &[&str]) -> String {
    let out = Command::new("stty").args(args).output().expect("run stty");
    assert!(
        out.status.success(),
        "stty {args:?}: {}",
        common::stderr(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Single-quotes a word for `sh`.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn quote_path(path: &Path) -> String {
    quote(&path.display().to_string())
}

#[test]
fn a_command_with_t_runs_on_a_pty_where_a_password_prompt_reads_the_terminal() {
    let rules = "allow_from = \"laptop\"\n[machine.web01.command.check]\ncommand = \"tty\"\nallow_from = \"laptop\"";
    let (c, _daemons) = company_in_sync(rules, "");
    // Without -t a command has no terminal; -tt asks for one even here.
    let out = c.laptop.run(&["web01.company", "tty"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "not a tty\n");
    let out = c.laptop.run(&["-tt", "web01.company", "tty"]);
    assert!(
        remote_tty(&String::from_utf8_lossy(&out.stdout)).is_some(),
        "{out:?}"
    );
    // A rule without allow_pty does not run on a PTY.
    let out = c.laptop.run(&["-tt", "web01.company", "check"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        common::stderr(&out).contains("may not run on a PTY"),
        "{}",
        common::stderr(&out)
    );
    // A prompt that reads the terminal, as sudo's does, typed into.
    let scratch = tempfile::tempdir().unwrap();
    let exit_file = scratch.path().join("exit");
    let command = format!(
        "env -u MALAI_LOG MALAI_DBUS_ADDRESS=disabled MALAI_HOME={} {} -t web01.company sh -c {}; echo EXIT=$? > {}; sleep 600",
        quote_path(c.laptop.home.path()),
        quote(common::malai_bin()),
        quote("tty; printf 'Password: '; read x < /dev/tty; echo got:$x"),
        quote_path(&exit_file),
    );
    let term = Tmux::start(80, 24, &command);
    let screen = term.wait_screen("the prompt", |s| s.contains("Password: "));
    assert!(remote_tty(&screen).is_some(), "{screen}");
    term.type_line("sekrit");
    term.wait_screen("the answer", |s| s.contains("got:sekrit"));
    wait_until("malai to exit", || {
        std::fs::read_to_string(&exit_file).is_ok_and(|t| t.trim() == "EXIT=0")
    });
}
