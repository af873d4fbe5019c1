//! Session recording (real daemons on loopback, a real terminal through
//! tmux): with `record = "on"` on web01, a shell in which the laptop types
//! `echo marker-42` yields one recording on the CM (the recorder) whose
//! header names the laptop and whose events hold the marker; `malai
//! recordings play` replays it and Debian's asciinema plays the file; a
//! command's stdout and stderr are `o` and `e` events; web01's audit line
//! carries the recording's id. With `record = "required"` and the recorder
//! down, the shell is refused and logged.

mod common;

use std::path::Path;

use common::net::{Company, wait_until};
use common::tmux::Tmux;

fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The events of a recording file: (kind, text).
fn events(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let (_, kind, text): (f64, String, String) = serde_json::from_str(l).unwrap();
            (kind, text)
        })
        .collect()
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one recorder: a shell, a command, then keystrokes"
)]
fn a_recorded_shell_lands_on_the_cm_and_plays() {
    let c = Company::loopback();
    let (_cm, web, _lap) = c.start_synced("allow_from = \"laptop\"\nrecord = \"on\"", "", "");
    let scratch = tempfile::tempdir().unwrap();
    let exit_file = scratch.path().join("exit");
    let command = format!(
        "env -u MALAI_LOG MALAI_DBUS_ADDRESS=disabled MALAI_HOME={} {} web01.company; echo EXIT=$? > {}; sleep 600",
        quote(&c.laptop.home.path().display().to_string()),
        quote(common::malai_bin()),
        quote(&exit_file.display().to_string()),
    );
    let term = Tmux::start(100, 30, &command);
    term.wait_screen("a prompt", |s| !s.trim().is_empty());
    term.type_line("echo marker-$((6*7))");
    term.wait_screen("the marker", |s| s.contains("marker-42"));
    term.type_line("exit");
    wait_until("the shell to end", || {
        std::fs::read_to_string(&exit_file).is_ok_and(|t| t.trim() == "EXIT=0")
    });

    // Stored on the CM, whole, before the laptop's malai returned.
    let listed = c.cm.json(&["recordings", "list", "--json"]);
    let all = listed["recordings"].as_array().unwrap();
    assert_eq!(all.len(), 1, "{listed}");
    let rec = &all[0];
    let session = &rec["header"]["malai"];
    assert_eq!(session["peer"], c.laptop_id.as_str());
    assert_eq!(session["machine"], "web01");
    assert_eq!(session["cluster"], "company");
    assert_eq!(session["config_version"], 2);
    assert_eq!(session["argv"], serde_json::json!([]));
    assert_eq!(session["pty"], true);
    assert_eq!(rec["header"]["version"], 2);
    assert_eq!(rec["header"]["width"], 100);
    let id = rec["id"].as_str().unwrap();
    let path = Path::new(rec["path"].as_str().unwrap());
    assert!(
        path.starts_with(c.cm.home.path()),
        "on the CM: {}",
        path.display()
    );
    let evs = events(path);
    let output: String = evs
        .iter()
        .filter(|(k, _)| k == "o")
        .map(|(_, t)| t.as_str())
        .collect();
    assert!(output.contains("marker-42"), "{output}");
    assert!(
        evs.iter().all(|(k, _)| k != "i"),
        "no keystrokes without record_input"
    );
    let logged = web.log_text();
    assert!(
        logged.contains(&format!("malai_recording=\"{id}\"")),
        "{logged}"
    );

    let played = c.cm.ok(&["recordings", "play", id]);
    assert!(played.contains("marker-42"), "{played}");
    // asciinema plays it (on a terminal: `script` gives it one).
    let play = format!(
        "asciinema play -i 0.1 {}",
        quote(&path.display().to_string())
    );
    let played = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &play, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect(
            "script (bsdutils) and asciinema (apt-get install asciinema): .ci/run installs them",
        );
    assert!(played.status.success(), "{}", common::stderr(&played));
    assert!(
        String::from_utf8_lossy(&played.stdout).contains("marker-42"),
        "{}",
        String::from_utf8_lossy(&played.stdout)
    );

    // A command without a PTY: stdout and stderr as o and e.
    let out = c
        .laptop
        .run(&["web01.company", "sh", "-c", "echo to-out; echo to-err >&2"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let listed = c.cm.json(&["recordings", "list", "--json"]);
    let all = listed["recordings"].as_array().unwrap();
    assert_eq!(all.len(), 2, "{listed}\n{}", web.log_text());
    let rec = &all[1];
    assert_eq!(rec["header"]["malai"]["pty"], false);
    assert_eq!(
        rec["header"]["malai"]["argv"],
        serde_json::json!(["sh", "-c", "echo to-out; echo to-err >&2"])
    );
    let evs = events(Path::new(rec["path"].as_str().unwrap()));
    assert!(evs.contains(&("o".into(), "to-out\n".into())), "{evs:?}");
    assert!(evs.contains(&("e".into(), "to-err\n".into())), "{evs:?}");
    assert!(evs.iter().all(|(k, _)| k != "i"), "{evs:?}");

    // With record_input, what is typed is recorded too.
    c.write_cluster_toml(
        "allow_from = \"laptop\"\nrecord = \"on\"\nrecord_input = true",
        "",
        "",
    );
    c.cm.ok(&["rescan"]);
    let mut web = web;
    web.wait_status("company: machine v3");
    let mut child = c
        .laptop
        .malai(&["web01.company", "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"typed-line\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.stdout, b"typed-line\n");
    let listed = c.cm.json(&["recordings", "list", "--json"]);
    let rec = &listed["recordings"].as_array().unwrap()[2];
    assert_eq!(rec["header"]["malai"]["input"], true);
    let evs = events(Path::new(rec["path"].as_str().unwrap()));
    assert!(
        evs.contains(&("i".into(), "typed-line\n".into())),
        "{evs:?}"
    );
}

#[test]
fn required_recording_with_the_recorder_down_refuses_the_session() {
    let c = Company::loopback();
    let (cm, web, _lap) = c.start_synced("allow_from = \"laptop\"\nrecord = \"required\"", "", "");
    // Recorded while the recorder is up.
    assert_eq!(
        c.laptop.ok(&["web01.company", "echo", "recorded"]),
        "recorded\n"
    );
    assert_eq!(
        c.cm.json(&["recordings", "list", "--json"])["recordings"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    cm.stop();
    let out = c.laptop.run(&["-tt", "web01.company"]);
    assert_eq!(out.status.code(), Some(255), "{}", common::stderr(&out));
    let said = common::stderr(&out);
    assert!(said.contains("must be recorded"), "{said}");
    let out = c.laptop.run(&["web01.company", "echo", "unrecorded"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(out.stdout.is_empty(), "nothing ran");
    let logged = web.log_text();
    assert!(
        logged.contains("malai_decision=\"denied\"") && logged.contains("must be recorded"),
        "{logged}"
    );
}

#[test]
fn a_machine_cannot_file_a_recording_in_another_machines_name() {
    use malai::record::{FromRecorder, Header, Session, ToRecorder};
    let c = Company::loopback();
    let (_cm, _web, _lap) = c.start_synced("allow_from = \"laptop\"\nrecord = \"on\"", "", "");
    let laptop =
        malai::identity::Identity::load(&c.laptop.cluster_dir("company").join("identity.key"))
            .unwrap();
    let cm: malai::identity::Id52 = c.cm_id.parse().unwrap();
    let addr = c.cm.socket_addr().parse().unwrap();
    let begin = |machine: &str, cluster: &str| ToRecorder::Begin {
        header: Header {
            version: 2,
            width: 80,
            height: 24,
            timestamp: 1,
            title: None,
            malai: Session {
                cluster: cluster.into(),
                machine: machine.into(),
                peer: c.laptop_id.clone(),
                config_version: 2,
                argv: vec!["rm".into(), "-rf".into(), "/".into()],
                pty: false,
                input: false,
            },
        },
    };
    for (machine, cluster) in [("web01", "company"), ("laptop", "other")] {
        let answer: FromRecorder = common::raw::try_request(
            &laptop,
            &cm,
            addr,
            malai::p2p::RECORD_ALPN,
            &begin(machine, cluster),
        )
        .unwrap();
        match answer {
            FromRecorder::Refused { reason } => {
                assert!(reason.contains("its own sessions only"), "{reason}");
            }
            FromRecorder::Accepted { id } => panic!("a forged recording was accepted: {id}"),
        }
    }
    let listed = c.cm.json(&["recordings", "list", "--json"]);
    assert_eq!(
        listed["recordings"],
        serde_json::json!([]),
        "nothing stored"
    );
}
