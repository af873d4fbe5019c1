//! The real binary on temporary homes: init, status, rescan --check and every
//! config mistake the validator must catch, with its exit code and position.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::{TestHome, stderr};
use malai::identity::Identity;

#[test]
fn cluster_init_json_and_refuses_to_overwrite() {
    let home = TestHome::new();
    let v = home.json(&["cluster", "init", "company", "--json"]);
    assert_eq!(v["cluster"], "company");
    assert_eq!(v["role"], "cluster-manager");
    let id52 = v["id52"].as_str().unwrap();
    assert_eq!(id52.len(), 52);
    let toml = fs::read_to_string(home.cluster_dir("company").join("cluster.toml")).unwrap();
    assert!(toml.contains(id52));

    let key_before = fs::read(home.cluster_dir("company").join("identity.key")).unwrap();
    let again = home.run(&["cluster", "init", "company"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    let key_after = fs::read(home.cluster_dir("company").join("identity.key")).unwrap();
    assert_eq!(key_before, key_after, "the existing identity is untouched");
}

#[test]
fn machine_init_prints_snippet_and_json() {
    let cm = TestHome::new();
    let cm_id = cm.json(&["cluster", "init", "company", "--json"])["id52"]
        .as_str()
        .unwrap()
        .to_owned();
    let m = TestHome::new();
    let v = m.json(&[
        "machine",
        "init",
        &cm_id,
        "company",
        "--cm-addr",
        "127.0.0.1:7701",
        "--name",
        "web01",
        "--json",
    ]);
    assert_eq!(v["cluster"], "company");
    assert_eq!(v["role"], "waiting");
    let id = v["id52"].as_str().unwrap();
    let snippet = v["snippet"].as_str().unwrap();
    assert!(snippet.starts_with("[machine.web01]\n"), "{snippet}");
    assert!(snippet.contains(&format!("id52 = \"{id}\"")));

    // The snippet pasted into the CM's file validates and names the machine.
    let path = cm.cluster_dir("company").join("cluster.toml");
    let mut text = fs::read_to_string(&path).unwrap();
    text.push_str(&format!("\n{snippet}allow_from = \"web01\"\n"));
    fs::write(&path, text).unwrap();
    cm.ok(&["rescan", "--check"]);

    let human = m.ok(&["machine", "init", &cm_id, "other", "--name", "web01"]);
    assert!(human.contains("[machine.web01]"), "{human}");
}

#[test]
fn machine_init_refuses_a_name_that_looks_like_an_id52() {
    let m = TestHome::new();
    let cm = Identity::generate().id52().to_string();
    let other = Identity::generate().id52().to_string();
    let out = m.run(&["machine", "init", &cm, "company", "--name", &other]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("looks like an id52"),
        "{}",
        stderr(&out)
    );
    assert!(!m.cluster_dir("company").exists());
}

#[test]
fn machine_init_rejects_bad_cm_id52_as_usage_error() {
    let m = TestHome::new();
    let out = m.run(&["machine", "init", "nope", "company"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("52 characters"), "{}", stderr(&out));
    assert!(
        !m.cluster_dir("company").exists(),
        "nothing is created on bad input"
    );
}

#[test]
fn key_is_0600_under_umask_000_and_0644_is_refused() {
    let home = TestHome::new();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000 && exec {} cluster init company",
            common::malai_bin()
        ))
        .env("MALAI_HOME", home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let key = home.cluster_dir("company").join("identity.key");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let out = home.run(&["rescan", "--check"]);
    assert_eq!(out.status.code(), Some(78));
    let err = stderr(&out);
    assert!(err.contains(&key.display().to_string()), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn status_json_lists_roles_versions_and_machines() {
    let cm = TestHome::new();
    let cm_id = cm.json(&["cluster", "init", "company", "--json"])["id52"]
        .as_str()
        .unwrap()
        .to_owned();
    let m = TestHome::new();
    let m_id = m.json(&[
        "machine", "init", &cm_id, "company", "--name", "web01", "--json",
    ])["id52"]
        .as_str()
        .unwrap()
        .to_owned();

    let status = cm.json(&["status", "--json"]);
    let c = &status["clusters"][0];
    assert_eq!(c["alias"], "company");
    assert_eq!(c["role"], "cluster-manager");
    assert_eq!(c["id52"], cm_id.as_str());
    assert_eq!(c["config_version"], 1);
    assert_eq!(c["machines"].as_array().unwrap().len(), 0);

    let path = cm.cluster_dir("company").join("cluster.toml");
    let text = fs::read_to_string(&path).unwrap();
    fs::write(
        &path,
        format!("{text}\n[machine.web01]\nid52 = \"{m_id}\"\n"),
    )
    .unwrap();
    let pending = cm.json(&["status", "--json"]);
    assert_eq!(pending["clusters"][0]["pending_rescan"], true);
    cm.ok(&["rescan"]);
    let status = cm.json(&["status", "--json"]);
    let c = &status["clusters"][0];
    assert_eq!(
        c["config_version"], 2,
        "rescan bumps the version of a changed file"
    );
    assert!(c.get("pending_rescan").is_none());
    let machines = c["machines"].as_array().unwrap();
    assert_eq!(machines[0]["alias"], "web01");
    assert_eq!(machines[0]["id52"], m_id.as_str());
    assert_eq!(machines[0]["acked_version"], 0);
    cm.ok(&["rescan"]);
    assert_eq!(
        cm.json(&["status", "--json"])["clusters"][0]["config_version"],
        2,
        "unchanged file, same version"
    );

    let ms = m.json(&["status", "--json"]);
    assert_eq!(ms["clusters"][0]["role"], "waiting");
    assert_eq!(ms["clusters"][0]["id52"], m_id.as_str());
    assert_eq!(ms["clusters"][0]["cluster_manager"], cm_id.as_str());
}

/// Each fixture's first line is `# expect: LINE:COL | message part`; the
/// placeholders @CM@, @M1@ and @M2@ stand for real id52s.
fn expectation(text: &str) -> (String, String) {
    let first = text.lines().next().unwrap();
    let rest = first
        .strip_prefix("# expect: ")
        .expect("fixture starts with # expect:");
    let (pos, msg) = rest.split_once(" | ").unwrap();
    (pos.to_owned(), msg.to_owned())
}

fn fixtures(dir: &str) -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    let mut out: Vec<_> = fs::read_dir(root)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_bad_cluster_fixture_fails_with_78_at_its_position() {
    let m1 = Identity::generate().id52().to_string();
    let m2 = Identity::generate().id52().to_string();
    let cases = fixtures("bad-cluster");
    assert!(cases.len() >= 22);
    for (name, text) in cases {
        let home = TestHome::new();
        let cm = home.json(&["cluster", "init", "company", "--json"])["id52"]
            .as_str()
            .unwrap()
            .to_owned();
        let body = text
            .replace("@CM@", &cm)
            .replace("@M1@", &m1)
            .replace("@M2@", &m2);
        let path = home.cluster_dir("company").join("cluster.toml");
        fs::write(&path, &body).unwrap();
        let (pos, msg) = expectation(&text);
        let out = home.run(&["rescan", "--check"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(78), "{name}: {err}");
        let want = format!("{}:{pos}: ", path.display());
        assert!(err.contains(&want), "{name}: expected {want:?} in:\n{err}");
        assert!(err.contains(&msg), "{name}: expected {msg:?} in:\n{err}");
        assert!(
            err.contains("fix: "),
            "{name}: every error says how to fix it:\n{err}"
        );
        // status still works and reports the cluster as invalid
        let status = home.json(&["status", "--json"]);
        assert_eq!(status["clusters"][0]["role"], "invalid", "{name}");
    }
}

#[test]
fn every_bad_local_fixture_fails_with_78_at_its_position() {
    for (name, text) in fixtures("bad-local") {
        let home = TestHome::new();
        let path = home.path().join("malai.toml");
        fs::write(&path, &text).unwrap();
        let (pos, msg) = expectation(&text);
        let out = home.run(&["rescan", "--check"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(78), "{name}: {err}");
        let want = format!("{}:{pos}: ", path.display());
        assert!(err.contains(&want), "{name}: expected {want:?} in:\n{err}");
        assert!(err.contains(&msg), "{name}: expected {msg:?} in:\n{err}");
    }
}

#[test]
fn both_cluster_and_machine_toml_is_an_error_naming_the_directory() {
    let home = TestHome::new();
    home.ok(&["cluster", "init", "company"]);
    let dir = home.cluster_dir("company");
    fs::write(dir.join("machine.toml"), "").unwrap();
    let out = home.run(&["rescan", "--check"]);
    assert_eq!(out.status.code(), Some(78));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{}: holds both cluster.toml and machine.toml",
            dir.display()
        )),
        "{err}"
    );
}

#[test]
fn rescan_check_lists_every_error_of_every_file() {
    let home = TestHome::new();
    home.ok(&["cluster", "init", "one"]);
    home.ok(&["cluster", "init", "two"]);
    for alias in ["one", "two"] {
        let path = home.cluster_dir(alias).join("cluster.toml");
        let text = fs::read_to_string(&path).unwrap();
        let bad = format!(
            "{text}\n[machine.a]\nid52 = \"short\"\nallow_from = \"ghost\"\nusername = \"Bad User\"\n"
        );
        fs::write(&path, bad).unwrap();
    }
    fs::write(
        home.path().join("malai.toml"),
        "[aliases]\nweb = \"web01 ps aux\"\n",
    )
    .unwrap();
    let out = home.run(&["rescan", "--check"]);
    assert_eq!(out.status.code(), Some(78));
    let err = stderr(&out);
    for alias in ["one", "two"] {
        let path = home
            .cluster_dir(alias)
            .join("cluster.toml")
            .display()
            .to_string();
        assert_eq!(
            err.matches(&path).count(),
            3,
            "three errors in {alias}:\n{err}"
        );
    }
    assert!(
        err.contains("malai.toml:2:7: ") && err.contains("is not machine.cluster"),
        "{err}"
    );
    // --check changes nothing
    let state = fs::read_to_string(home.cluster_dir("one").join("state.json")).unwrap();
    assert!(state.contains("\"version\": 1"), "{state}");
}

#[test]
fn match_rules_are_checked_at_their_line() {
    let home = TestHome::new();
    home.ok(&["cluster", "init", "one"]);
    let path = home.cluster_dir("one").join("cluster.toml");
    let text = fs::read_to_string(&path).unwrap();
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("id52 = "))
        .unwrap()
        .to_owned();
    let good = format!(
        "{text}\n[machine.a]\nid52 = {id}\n[machine.a.command.repo]\nmatch = \"git-upload-pack '/srv/r.git'\"\nallow_from = \"a\"\n"
    );
    fs::write(&path, &good).unwrap();
    home.ok(&["rescan", "--check"]);
    let bad = format!(
        "{good}[machine.a.command.again]\nmatch = \"git-upload-pack /srv/r.git\"\nallow_from = \"a\"\nallow_args = true\n[machine.a.command.both]\ncommand = \"ls\"\nmatch = \"ls\"\nallow_from = \"a\"\n[machine.a.command.none]\nallow_from = \"a\"\n"
    );
    fs::write(&path, &bad).unwrap();
    let out = home.run(&["rescan", "--check"]);
    assert_eq!(out.status.code(), Some(78));
    let err = stderr(&out);
    let line_of = |needle: &str| bad.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let at = |line: usize| format!("{}:{line}:", path.display());
    for (line, what) in [
        // Rules are read in name order: "repo" is the second of the two.
        (
            line_of("match = \"git-upload-pack '"),
            "match the same argv",
        ),
        (
            line_of("match = \"git-upload-pack /srv"),
            "allow_args has no meaning",
        ),
        (line_of("match = \"ls\""), "has both command and match"),
        (line_of("command.none]"), "neither command nor match"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains(&at(line)) && l.contains(what)),
            "{what} at line {line}:\n{err}"
        );
    }
}

#[test]
fn rescan_of_one_cluster_ignores_the_others() {
    let home = TestHome::new();
    home.ok(&["cluster", "init", "good"]);
    home.ok(&["cluster", "init", "bad"]);
    fs::write(home.cluster_dir("bad").join("cluster.toml"), "garbage =").unwrap();
    home.ok(&["rescan", "--check", "good"]);
    assert_eq!(
        home.run(&["rescan", "--check", "bad"]).status.code(),
        Some(78)
    );
    assert_eq!(home.run(&["rescan", "--check"]).status.code(), Some(78));
}

/// An alias named like a subcommand (perhaps one a newer malai added after
/// the alias was written) is ignored with a warning at its line: the
/// subcommand runs, `rescan --check` passes, and the daemon starts, where
/// it used to exit 78 and stay down (RestartPreventExitStatus=78).
#[test]
fn an_alias_named_like_a_subcommand_is_a_warning_not_a_failed_start() {
    let home = TestHome::new();
    home.init_loopback_cluster("company");
    let path = home.path().join("malai.toml");
    let mut text = fs::read_to_string(&path).unwrap();
    text.push_str("[aliases]\nstatus = \"web01.company uptime\"\nls = \"web01.company ls\"\n");
    fs::write(&path, text).unwrap();

    let out = home.run(&["rescan", "--check"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    for (line, alias) in [(6, "status"), (7, "ls")] {
        let want = format!(
            "warning: {}:{line}:1: alias {alias:?} is ignored",
            path.display()
        );
        assert!(err.contains(&want), "expected {want:?} in:\n{err}");
    }
    // The subcommand runs, not the alias.
    let status = home.json(&["status", "--json"]);
    assert_eq!(status["clusters"][0]["alias"], "company");

    // The daemon starts and says why in its log.
    let sock_path = home.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    let daemon = home
        .cmd()
        .arg("daemon")
        .env("MALAI_DBUS_ADDRESS", "disabled")
        .env("NOTIFY_SOCKET", &sock_path)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::read_notify_until(&sock, "READY=1");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = daemon.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("alias \"status\" is ignored"),
        "{}",
        stderr(&out)
    );
}

/// The completion scripts the package installs offer the machines,
/// fan-out targets and aliases of this device where a target goes, in
/// bash and fish (run for real) and zsh (parsed; driving its completion
/// needs a terminal).
#[test]
fn shell_completions_offer_machines_fan_out_targets_and_aliases() {
    for (shell, package) in [("bash", "bash"), ("fish", "fish"), ("zsh", "zsh")] {
        common::require_tool(shell, package);
    }
    let home = TestHome::new();
    let cm = home.json(&["cluster", "init", "company", "--json"])["id52"]
        .as_str()
        .unwrap()
        .to_owned();
    let web = Identity::generate().id52().to_string();
    fs::write(
        home.cluster_dir("company").join("cluster.toml"),
        format!(
            "[cluster-manager]\nid52 = \"{cm}\"\n[group.web]\nmembers = \"web01\"\n[machine.web01]\nid52 = \"{web}\"\n[machine.cm]\nid52 = \"{cm}\"\n"
        ),
    )
    .unwrap();
    fs::write(
        home.path().join("malai.toml"),
        "[aliases]\nlogs = \"web01.company journalctl\"\n",
    )
    .unwrap();
    let generated = tempfile::tempdir().unwrap();
    home.ok(&["generate", generated.path().to_str().unwrap()]);
    let dir = generated.path().join("completions");
    let bin = std::path::Path::new(common::malai_bin())
        .parent()
        .unwrap()
        .to_owned();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let shell = |program: &str, script: String| {
        let out = std::process::Command::new(program)
            .args(["-c", &script])
            .env("PATH", &path)
            .env("MALAI_HOME", home.path())
            .env("MALAI_DBUS_ADDRESS", "disabled")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = |words: &str| {
        shell(
            "bash",
            format!(
                "source {}; COMP_WORDS=({words}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); _malai_targets malai; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                dir.join("malai.bash").display()
            ),
        )
    };
    let got = bash("malai we");
    assert!(got.lines().any(|l| l == "web01.company"), "{got}");
    let got = bash("malai -j 4 @");
    assert!(
        got.contains("@all.company") && got.contains("@web.company"),
        "{got}"
    );
    let got = bash("malai web01,c");
    assert!(got.lines().any(|l| l == "web01,cm.company"), "{got}");
    let got = bash("malai l");
    assert!(got.lines().any(|l| l == "logs"), "{got}");
    // A verb's own arguments are not targets.
    let got = bash("malai status we");
    assert!(!got.contains("web01.company"), "{got}");

    let fish = |line: &str| {
        shell(
            "fish",
            format!(
                "source {}; complete -C '{line}'",
                dir.join("malai.fish").display()
            ),
        )
    };
    let got = fish("malai we");
    assert!(got.lines().any(|l| l.starts_with("web01.company")), "{got}");
    let got = fish("malai @");
    assert!(got.contains("@web.company"), "{got}");

    shell("zsh", format!("zsh -n {}", dir.join("_malai").display()));
}
