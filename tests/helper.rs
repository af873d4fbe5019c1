//! Privilege separation without systemd: web01's daemon runs as `nobody`
//! and asks a root `malai helper serve` (no systemd here: plain children; the
//! control groups and units are tested on a booted systemd by tests/deb/run) to start its
//! commands. The helper decides again from the CM-signed envelope on disk
//! and the pinned CM key. The attacker here is another local user, and the
//! daemon's own user turned hostile (tests/fixtures/helper_client.py speaks
//! the helper's protocol as a compromised daemon would). A command, a
//! shell on a PTY and a disconnect go through the helper too.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::net::{Company, pids_matching, sleep_secs, wait_until};

/// A running helper, killed by pid on drop.
struct Helper {
    child: Child,
    log: PathBuf,
    socket: PathBuf,
}

impl Helper {
    fn start(home: &Path, pins: &Path, dir: &Path) -> Helper {
        let socket = dir.join("helper.sock");
        let log = dir.join("helper.log");
        let child = Command::new(common::malai_bin())
            .args(["helper", "serve", "--daemon-user", "nobody", "--socket"])
            .arg(&socket)
            .env("MALAI_HOME", home)
            .env("MALAI_HELPER_PINS", pins)
            .env_remove("MALAI_LOG")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the helper");
        wait_until("the helper listens", || socket.exists());
        Helper { child, log, socket }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The helper's first answer to `request` from local user `uid` (the
    /// daemon's protocol, three pipes attached), or "closed".
    fn ask_as(&self, uid: u32, request: &serde_json::Value) -> String {
        let out = Command::new("setpriv")
            .args([
                "--reuid",
                &uid.to_string(),
                "--regid",
                &uid.to_string(),
                "--clear-groups",
            ])
            .arg("/usr/bin/python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/helper_client.py"
            ))
            .arg(&self.socket)
            .arg(request.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn uid_of(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn chown_to_nobody(path: &Path) {
    let ok = Command::new("chown")
        .args(["-R", "nobody:nogroup"])
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "chown -R nobody {}", path.display());
}

#[test]
#[ignore = "needs root: runs web01's daemon as nobody and the helper as root (./test.sh runs it as root)"]
#[expect(clippy::too_many_lines, reason = "one scenario, attack by attack")]
fn an_unprivileged_daemon_runs_commands_only_through_the_helper_and_only_what_the_signed_config_allows()
 {
    const NOBODY: u32 = 65534;
    let c = Company::loopback();
    let pins = tempfile::tempdir().unwrap();
    let run_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        run_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // Root pins web01's cluster (what `machine init` as root does on a
    // device with the package), then hands web01's home to its daemon.
    let pinned = c
        .web01
        .malai(&["helper", "pin", "company"])
        .env("MALAI_HELPER_PINS", pins.path())
        .output()
        .unwrap();
    assert!(
        pinned.status.success(),
        "{}",
        String::from_utf8_lossy(&pinned.stderr)
    );
    chown_to_nobody(c.web01.home.path());
    let helper = Helper::start(c.web01.home.path(), pins.path(), run_dir.path());
    let socket = helper.socket.display().to_string();

    let mut cm = c.cm.start_daemon();
    let mut web = c
        .web01
        .start_daemon_as(Some("nobody"), &[("MALAI_HELPER", &socket)]);
    let _lap = c.laptop.start_daemon();
    assert_eq!(uid_of(web.pid()), NOBODY, "web01's daemon runs as nobody");
    c.write_cluster_toml(
        "allow_shell = \"laptop\"\n[machine.web01.command.id]\ncommand = \"id\"\nallow_from = \"laptop\"\nallow_args = true\n\
         [machine.web01.command.sleep]\ncommand = \"sleep\"\nallow_from = \"laptop\"\nallow_args = true\n\
         [machine.web01.command.grep]\ncommand = \"grep\"\nallow_from = \"laptop\"\nallow_args = true",
        "",
        "",
    );
    c.cm.ok(&["rescan"]);
    cm.wait_status("2/2 machines in sync");
    web.wait_status("company: machine v2");

    // The grant runs as root (no username: the system service's user), so
    // the helper, not the daemon, started it.
    assert_eq!(c.laptop.ok(&["web01.company", "id", "-u"]), "0\n");
    assert!(
        helper.log_text().contains("started pid"),
        "{}",
        helper.log_text()
    );
    // It starts with every signal at its default (the helper, a Rust
    // program, ignores SIGPIPE) and none blocked: a pipeline behaves.
    let status = c
        .laptop
        .ok(&["web01.company", "grep", "^Sig[IB]", "/proc/self/status"]);
    assert_eq!(
        status, "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n",
        "{status}"
    );

    // A disconnect kills the command the helper started.
    let marker = sleep_secs(4243);
    let mut cli = c
        .laptop
        .malai(&["web01.company", "sleep", &marker])
        .spawn()
        .unwrap();
    let needle = format!("sleep {marker}");
    wait_until("the remote sleep runs", || {
        !pids_matching(&needle).is_empty()
    });
    assert_eq!(uid_of(pids_matching(&needle)[0]), 0);
    cli.kill().unwrap();
    let _ = cli.wait();
    wait_until("the helper killed the abandoned sleep", || {
        pids_matching(&needle).is_empty()
    });

    // A shell on a PTY the helper made: root's, its terminal root's too.
    let scratch = tempfile::tempdir().unwrap();
    let exit_file = scratch.path().join("exit");
    let term = common::tmux::Tmux::start(
        100,
        30,
        &format!(
            "env -u MALAI_LOG MALAI_DBUS_ADDRESS=disabled MALAI_HOME={} {} web01.company; echo EXIT=$? > {}; sleep 600",
            c.laptop.home.path().display(),
            common::malai_bin(),
            exit_file.display()
        ),
    );
    term.wait_screen("the remote shell's prompt", |s| !s.trim().is_empty());
    term.type_line("echo ID-$(id -u)-$(stat -c %u $(tty))-$((6*7))");
    term.wait_screen("the shell to answer", |s| s.contains("ID-0-0-42"));
    term.type_line("exit 3");
    wait_until("the shell's exit code reaches the client", || {
        std::fs::read_to_string(&exit_file).is_ok_and(|t| t.trim() == "EXIT=3")
    });

    // Another local user: refused before anything is read.
    let request = |peer: &str, argv: &[&str]| {
        serde_json::json!({
            "cluster": "company", "config_version": 2, "peer": peer,
            "argv": argv, "pty": null, "env": [], "local_uid": null,
        })
    };
    let planted = run_dir.path().join("pwned");
    let touch = ["touch", planted.to_str().unwrap()];
    assert_eq!(
        helper.ask_as(4242, &request(&c.laptop_id, &["id"])),
        "closed"
    );
    assert!(
        helper
            .log_text()
            .contains("refused a connection from uid 4242"),
        "{}",
        helper.log_text()
    );

    // The daemon's own user, compromised: an argv the config allows the
    // laptop only as rules (id, sleep) is refused and logged, for the
    // laptop and for the CM (allowed nothing here).
    for peer in [&c.laptop_id, &c.cm_id] {
        let answer = helper.ask_as(NOBODY, &request(peer, &touch));
        assert!(answer.contains("\"refused\""), "{answer}");
    }
    assert!(
        !planted.exists(),
        "the helper ran a command the config does not allow"
    );
    assert!(
        helper
            .log_text()
            .contains("refused a request of the daemon (the signed config does not allow it)"),
        "{}",
        helper.log_text()
    );
    // No path outside the home through the cluster name.
    let mut escape = request(&c.laptop_id, &["id"]);
    escape["cluster"] = "../../etc".into();
    assert!(
        helper
            .ask_as(NOBODY, &escape)
            .contains("invalid cluster name")
    );

    // The daemon's user owns machine.envelope: a config it rewrote (here
    // granting the laptop anything) fails the CM's signature, and the
    // helper then runs nothing, not even what the real config allows.
    let envelope_path = c.web01.cluster_dir("company").join("machine.envelope");
    let genuine = std::fs::read_to_string(&envelope_path).unwrap();
    let mut forged: serde_json::Value = serde_json::from_str(&genuine).unwrap();
    let text = forged["config"].as_str().unwrap().replace(
        "[machine.web01]\n",
        "[machine.web01]\nallow_from = \"laptop\"\n",
    );
    forged["config"] = text.into();
    std::fs::write(&envelope_path, forged.to_string()).unwrap();
    let answer = helper.ask_as(NOBODY, &request(&c.laptop_id, &touch));
    assert!(answer.contains("\"refused\""), "{answer}");
    assert!(!planted.exists());
    let answer = helper.ask_as(NOBODY, &request(&c.laptop_id, &["id"]));
    assert!(
        answer.contains("\"refused\"") && answer.contains("hash"),
        "{answer}"
    );
    std::fs::write(&envelope_path, genuine).unwrap();
    assert!(
        helper
            .ask_as(NOBODY, &request(&c.laptop_id, &["id"]))
            .contains("\"started\"")
    );
}
