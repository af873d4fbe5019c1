//! Remote config editing end to end, with real daemons on loopback: `malai config download|upload|edit` from editors' devices,
//! compare-and-swap on the base hash, refusals of non-editors and of invalid
//! files, `--force`, `kill -9` of the CM during uploads, the three-way merge
//! of `edit`, and a download into a directory where another user planted
//! symlinks.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Instant;

use common::net::{Company, DEADLINE, Host, path_str, wait_until};
use common::{TestHome, malai_bin, stderr};
use malai::home::hash_hex;

/// A company whose cluster.toml lets `editors` edit it and `laptop` run
/// commands on web01, with the CM daemon running at version 2 (no machine
/// daemons: an editor's CLI dials the CM directly).
fn company(editors: &str) -> (Company, common::net::Daemon) {
    let c = Company::loopback();
    let mut cm = c.cm.start_daemon();
    write_cluster(&c, editors);
    c.cm.ok(&["rescan"]);
    cm.wait_status("company: cluster-manager v2,");
    (c, cm)
}

/// cluster.toml with web01 `allow_from = "laptop"` (the only `allow_from`
/// line) and `config_editors = editors`.
fn write_cluster(c: &Company, editors: &str) {
    c.write_cluster_toml("allow_from = \"laptop\"", "", "");
    let path = cluster_toml(c);
    let text = read(&path);
    let line = "config_editors = \"laptop\"";
    assert!(text.contains(line), "the harness writes {line}:\n{text}");
    let edited = text.replace(line, &format!("config_editors = \"{editors}\""));
    fs::write(&path, edited).unwrap();
}

fn cluster_toml(c: &Company) -> PathBuf {
    c.cm.cluster_dir("company").join("cluster.toml")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Appends `more` to a file.
fn append(path: &Path, more: &str) {
    let text = read(path);
    fs::write(path, format!("{text}{more}")).unwrap();
}

/// A cluster's `config_version` in `malai status --json` of `host`.
fn version_of(host: &Host) -> u64 {
    host.json(&["status", "--json"])["clusters"][0]["config_version"]
        .as_u64()
        .unwrap_or_else(|| panic!("{}: no config_version in status", host.name))
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

/// `malai config ARGS` on `host`, with its output.
fn config(host: &Host, args: &[&str]) -> Output {
    let mut all = vec!["config"];
    all.extend_from_slice(args);
    host.run(&all)
}

fn config_ok(host: &Host, args: &[&str]) -> Output {
    let out = config(host, args);
    assert!(
        out.status.success(),
        "{}: malai config {args:?} failed ({:?}):\n{}",
        host.name,
        code(&out),
        stderr(&out)
    );
    out
}

/// The 1-based number of the line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in:\n{text}"))
        + 1
}

/// Whether `err` has `prefix` followed by `COLUMN: `.
fn has_position(err: &str, prefix: &str) -> bool {
    err.match_indices(prefix).any(|(i, _)| {
        let rest = &err[i + prefix.len()..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        digits > 0 && rest[digits..].starts_with(": ")
    })
}

#[test]
fn two_editors_compare_and_swap_then_every_machine_converges() {
    let c = Company::loopback();
    let mut cm = c.cm.start_daemon();
    let mut web = c.web01.start_daemon();
    let mut lap = c.laptop.start_daemon();
    write_cluster(&c, "laptop,web01");
    c.cm.ok(&["rescan"]);
    cm.wait_status("cluster-manager v2, 2/2 machines in sync");
    web.wait_status("company: machine v2");
    lap.wait_status("company: machine v2");

    let work = tempfile::tempdir().unwrap();
    let lap_file = work.path().join("laptop.toml");
    let web_file = work.path().join("web01.toml");
    let out = config_ok(
        &c.laptop,
        &["download", "company", "-o", &path_str(&lap_file)],
    );
    assert!(stderr(&out).contains("version 2"), "{}", stderr(&out));
    config_ok(
        &c.web01,
        &["download", "company", "-o", &path_str(&web_file)],
    );
    let original = read(&cluster_toml(&c));
    assert_eq!(read(&lap_file), original);
    assert_eq!(read(&web_file), original);
    let base: serde_json::Value =
        serde_json::from_str(&read(&work.path().join("laptop.toml.base"))).unwrap();
    assert_eq!(base["cluster"], "company");
    assert_eq!(base["hash"], hash_hex(original.as_bytes()));
    assert_eq!(base["version"], 2);

    // The first editor's upload is accepted.
    append(&lap_file, "\n[group.ops]\nmembers = \"laptop\"\n");
    let out = config_ok(&c.laptop, &["upload", &path_str(&lap_file)]);
    assert!(stderr(&out).contains("version 3"), "{}", stderr(&out));
    let after_first = read(&cluster_toml(&c));
    assert_eq!(after_first, read(&lap_file));
    assert_eq!(version_of(&c.cm), 3);

    // The second's, based on version 2, is stale: refused, nothing changes.
    append(&web_file, "\n[group.devs]\nmembers = \"web01\"\n");
    let out = config(&c.web01, &["upload", &path_str(&web_file)]);
    let err = stderr(&out);
    assert_eq!(code(&out), Some(1), "{err}");
    assert!(err.contains(&hash_hex(after_first.as_bytes())), "{err}");
    assert!(err.contains("version 3"), "{err}");
    assert_eq!(read(&cluster_toml(&c)), after_first);
    assert_eq!(version_of(&c.cm), 3);

    // After a fresh download the same change goes through.
    config_ok(
        &c.web01,
        &["download", "company", "-o", &path_str(&web_file)],
    );
    assert_eq!(read(&web_file), after_first);
    append(&web_file, "\n[group.devs]\nmembers = \"web01\"\n");
    let out = config_ok(&c.web01, &["upload", &path_str(&web_file)]);
    assert!(stderr(&out).contains("version 4"), "{}", stderr(&out));

    let text = read(&cluster_toml(&c));
    assert!(text.contains("[group.ops]"), "{text}");
    assert!(text.contains("[group.devs]"), "{text}");
    cm.wait_status("cluster-manager v4, 2/2 machines in sync");
    web.wait_status("company: machine v4");
    lap.wait_status("company: machine v4");
    assert_eq!(version_of(&c.cm), 4);
    assert_eq!(version_of(&c.web01), 4);
    assert_eq!(version_of(&c.laptop), 4);
    let status = c.cm.json(&["status", "--json"]);
    assert_eq!(
        status["clusters"][0]["config_hash"],
        hash_hex(text.as_bytes())
    );
    for m in status["clusters"][0]["machines"].as_array().unwrap() {
        assert_eq!(m["acked_version"], 4, "{m}");
        assert_eq!(m["sync"], "in-sync", "{m}");
    }
    // The audit log names both editors.
    let log = cm.log_text();
    assert!(
        log.contains(&format!("{} uploaded cluster.toml", c.laptop_id)),
        "{log}"
    );
    assert!(
        log.contains(&format!("{} uploaded cluster.toml", c.web_id)),
        "{log}"
    );
}

#[test]
fn a_peer_not_in_config_editors_may_neither_download_nor_upload() {
    let (c, cm) = company("laptop");
    let work = tempfile::tempdir().unwrap();
    let original = read(&cluster_toml(&c));

    let web_file = work.path().join("web01.toml");
    let out = config(
        &c.web01,
        &["download", "company", "-o", &path_str(&web_file)],
    );
    assert_eq!(code(&out), Some(77), "{}", stderr(&out));
    assert!(stderr(&out).contains("denied"), "{}", stderr(&out));
    assert!(!web_file.exists(), "a refused download writes nothing");

    // With a valid file and base (the laptop's download), still refused.
    let lap_file = work.path().join("laptop.toml");
    config_ok(
        &c.laptop,
        &["download", "company", "-o", &path_str(&lap_file)],
    );
    fs::copy(&lap_file, &web_file).unwrap();
    fs::copy(
        work.path().join("laptop.toml.base"),
        work.path().join("web01.toml.base"),
    )
    .unwrap();
    append(&web_file, "\n[group.devs]\nmembers = \"web01\"\n");
    let out = config(&c.web01, &["upload", &path_str(&web_file)]);
    assert_eq!(code(&out), Some(77), "{}", stderr(&out));
    assert!(stderr(&out).contains("config_editors"), "{}", stderr(&out));
    assert_eq!(read(&cluster_toml(&c)), original);
    assert_eq!(version_of(&c.cm), 2);

    // Both refusals are in the CM's log with web01's id52.
    for what in ["download", "upload"] {
        let line = format!("refused config {what} by {}", c.web_id);
        wait_until(&format!("the CM logs {line:?}"), || {
            cm.log_text().contains(&line)
        });
    }
}

#[test]
fn an_invalid_upload_is_refused_with_every_error_and_changes_nothing() {
    let c = Company::loopback();
    let mut cm = c.cm.start_daemon();
    let mut web = c.web01.start_daemon();
    let _lap = c.laptop.start_daemon();
    write_cluster(&c, "laptop");
    c.cm.ok(&["rescan"]);
    cm.wait_status("cluster-manager v2, 2/2 machines in sync");
    web.wait_status("company: machine v2");

    let cluster_path = cluster_toml(&c);
    let machine_toml = c.web01.cluster_dir("company").join("machine.toml");
    let cluster_before = fs::read(&cluster_path).unwrap();
    let machine_before = fs::read(&machine_toml).unwrap();

    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("company.toml");
    config_ok(&c.laptop, &["download", "company", "-o", &path_str(&file)]);
    // Two errors: an unknown principal and a malformed username.
    let bad = read(&file)
        .replace("allow_from = \"laptop\"", "allow_from = \"laptop,ghost\"")
        .replace(
            "[machine.laptop]\n",
            "[machine.laptop]\nusername = \"Bad User\"\n",
        );
    fs::write(&file, &bad).unwrap();
    let out = config(&c.laptop, &["upload", &path_str(&file)]);
    let err = stderr(&out);
    assert_eq!(code(&out), Some(78), "{err}");
    assert!(err.contains("unknown principal \"ghost\""), "{err}");
    assert!(err.contains("Bad User"), "{err}");
    for needle in ["ghost", "Bad User"] {
        let prefix = format!("cluster.toml:{}:", line_of(&bad, needle));
        assert!(has_position(&err, &prefix), "no {prefix}COL: in:\n{err}");
    }

    assert_eq!(fs::read(&cluster_path).unwrap(), cluster_before);
    assert_eq!(version_of(&c.cm), 2);
    assert_eq!(fs::read(&machine_toml).unwrap(), machine_before);
    assert_eq!(version_of(&c.web01), 2);
    let status = c.cm.json(&["status", "--json"]);
    assert_eq!(
        status["clusters"][0]["config_hash"],
        hash_hex(&cluster_before)
    );
    assert!(cm.status.contains("cluster-manager v2,"), "{}", cm.status);
}

#[test]
fn force_overwrites_a_newer_config_but_never_an_invalid_one() {
    let (c, _cm) = company("laptop,web01");
    let work = tempfile::tempdir().unwrap();
    let lap_file = work.path().join("laptop.toml");
    let web_file = work.path().join("web01.toml");
    config_ok(
        &c.laptop,
        &["download", "company", "-o", &path_str(&lap_file)],
    );
    config_ok(
        &c.web01,
        &["download", "company", "-o", &path_str(&web_file)],
    );

    // web01 uploads first: the laptop's base is now stale.
    append(&web_file, "\n[group.devs]\nmembers = \"web01\"\n");
    config_ok(&c.web01, &["upload", &path_str(&web_file)]);
    assert_eq!(version_of(&c.cm), 3);
    append(&lap_file, "\n[group.ops]\nmembers = \"laptop\"\n");
    let out = config(&c.laptop, &["upload", &path_str(&lap_file)]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert_eq!(read(&cluster_toml(&c)), read(&web_file));

    // --force overwrites it.
    let out = config_ok(&c.laptop, &["upload", "--force", &path_str(&lap_file)]);
    assert!(stderr(&out).contains("version 4"), "{}", stderr(&out));
    let text = read(&cluster_toml(&c));
    assert_eq!(text, read(&lap_file));
    assert!(!text.contains("[group.devs]"), "{text}");
    assert_eq!(version_of(&c.cm), 4);

    // --force still validates, stale base or not.
    config_ok(
        &c.web01,
        &["download", "company", "-o", &path_str(&web_file)],
    );
    config_ok(
        &c.laptop,
        &["download", "company", "-o", &path_str(&lap_file)],
    );
    append(&web_file, "\n[group.devs]\nmembers = \"web01\"\n");
    config_ok(&c.web01, &["upload", &path_str(&web_file)]);
    let current = fs::read(cluster_toml(&c)).unwrap();
    // The laptop's base is stale again; then a fresh one: both refused.
    append(&lap_file, "\n[group.bad]\nmembers = \"ghost\"\n");
    for fresh in [false, true] {
        if fresh {
            config_ok(
                &c.laptop,
                &["download", "company", "-o", &path_str(&lap_file)],
            );
            append(&lap_file, "\n[group.bad]\nmembers = \"ghost\"\n");
        }
        let out = config(&c.laptop, &["upload", "--force", &path_str(&lap_file)]);
        let err = stderr(&out);
        assert_eq!(code(&out), Some(78), "fresh base {fresh}: {err}");
        assert!(err.contains("unknown principal \"ghost\""), "{err}");
    }
    assert_eq!(fs::read(cluster_toml(&c)).unwrap(), current);
    assert_eq!(version_of(&c.cm), 5);
}

#[test]
fn kill_9_of_the_cm_during_uploads_leaves_the_old_or_the_new_file() {
    let (c, cm) = company("laptop");
    let mut cm = Some(cm);
    let path = cluster_toml(&c);
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("company.toml");
    let mut version = version_of(&c.cm);
    let mut landed = 0;
    for round in 0..5 {
        config_ok(&c.laptop, &["download", "company", "-o", &path_str(&file)]);
        let old = fs::read(&path).unwrap();
        append(
            &file,
            &format!("\n[group.round{round}]\nmembers = \"laptop\"\n"),
        );
        let new = fs::read(&file).unwrap();
        let mut upload = c
            .laptop
            .malai(&["config", "upload", &path_str(&file)])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Round 0 kills the CM at once, before the upload reaches it; the
        // others as soon as cluster.toml changed (the file written, the
        // version maybe not yet) or the CLI ended.
        if round > 0 {
            let deadline = Instant::now() + DEADLINE;
            while fs::read(&path).unwrap() == old && upload.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "round {round}: upload hangs");
                std::thread::yield_now();
            }
        }
        cm.take().unwrap().kill9();
        let out = upload.wait_with_output().unwrap();

        let now = fs::read(&path).unwrap();
        assert!(
            now == old || now == new,
            "round {round}: cluster.toml is neither the old nor the new file:\n{}",
            String::from_utf8_lossy(&now)
        );
        if out.status.success() {
            assert_eq!(now, new, "round {round}: accepted but not written");
        }
        cm = Some(c.cm.start_daemon());
        let status = c.cm.json(&["status", "--json"]);
        let s = &status["clusters"][0];
        assert_eq!(
            s["config_hash"].as_str().unwrap(),
            hash_hex(&now),
            "round {round}: the version does not name cluster.toml's content"
        );
        assert_eq!(s["pending_rescan"], serde_json::Value::Null, "{s}");
        let v = s["config_version"].as_u64().unwrap();
        let expected = version + u64::from(now == new);
        assert_eq!(
            v,
            expected,
            "round {round}: version {v}, expected {expected} (CLI: {:?} {})",
            code(&out),
            stderr(&out)
        );
        version = v;
        landed += usize::from(now == new);
    }
    assert!(landed > 0, "no upload ever landed");
    let mut cm = cm.unwrap();
    cm.wait_status(&format!("company: cluster-manager v{version},"));
}

/// Writes an executable shell script.
fn script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\nset -e\n{body}")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// The shell words that run web01's `malai` (from a script the laptop's
/// `malai config edit` runs).
fn web01_malai(c: &Company) -> String {
    format!(
        "env MALAI_HOME={} {}",
        path_str(c.web01.home.path()),
        malai_bin()
    )
}

/// `malai config edit company` on the laptop with `editor`, run in `cwd`.
fn edit(c: &Company, editor: &Path, cwd: &Path) -> Output {
    c.laptop
        .malai(&["config", "edit", "company"])
        .env("EDITOR", editor)
        .env_remove("VISUAL")
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// An editor script that also makes web01 upload `web01_sed` (a sed
/// program) meanwhile, and applies `laptop_cmd` to the file being edited.
fn racing_editor(c: &Company, dir: &Path, laptop_cmd: &str, web01_sed: &str) -> PathBuf {
    let editor = dir.join("editor.sh");
    let web = dir.join("web01.toml");
    let log = dir.join("web01.log");
    let m = web01_malai(c);
    script(
        &editor,
        &format!(
            "{laptop_cmd}\n\
             {m} config download company -o {web} >>{log} 2>&1\n\
             sed -i '{web01_sed}' {web}\n\
             {m} config upload {web} >>{log} 2>&1\n",
            web = path_str(&web),
            log = path_str(&log),
        ),
    );
    editor
}

#[test]
fn edit_merges_a_concurrent_change_cleanly_and_uploads_it() {
    let (c, _cm) = company("laptop,web01");
    let work = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let editor = racing_editor(
        &c,
        work.path(),
        "printf '[group.ops]\\nmembers = \"laptop\"\\n' >> \"$1\"",
        "1i # changed by web01",
    );
    let out = edit(&c, &editor, cwd.path());
    let err = stderr(&out);
    let web_log = fs::read_to_string(work.path().join("web01.log")).unwrap_or_default();
    assert_eq!(code(&out), Some(0), "{err}\nweb01:\n{web_log}");
    assert!(web_log.contains("version 3"), "{web_log}");
    assert!(err.contains("merges cleanly"), "{err}");
    assert!(
        err.contains("+members = \"laptop\""),
        "the merge is shown:\n{err}"
    );
    assert!(err.contains("version 4"), "{err}");

    let text = read(&cluster_toml(&c));
    assert!(text.starts_with("# changed by web01\n"), "{text}");
    assert!(
        text.ends_with("[group.ops]\nmembers = \"laptop\"\n"),
        "{text}"
    );
    assert_eq!(version_of(&c.cm), 4);
    assert!(
        fs::read_dir(cwd.path()).unwrap().next().is_none(),
        "a clean merge leaves nothing in the current directory"
    );
}

#[test]
fn edit_that_conflicts_leaves_markers_and_uploads_nothing() {
    let (c, _cm) = company("laptop,web01");
    let work = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let editor = racing_editor(
        &c,
        work.path(),
        "sed -i 's/^allow_from = \"laptop\"$/allow_from = \"laptop, web01\"/' \"$1\"",
        "s/^allow_from = \"laptop\"$/allow_from = \"*\"/",
    );
    let out = edit(&c, &editor, cwd.path());
    let err = stderr(&out);
    let web_log = fs::read_to_string(work.path().join("web01.log")).unwrap_or_default();
    assert_eq!(code(&out), Some(1), "{err}\nweb01:\n{web_log}");
    assert!(err.contains("conflict"), "{err}");
    assert!(err.contains("nothing was uploaded"), "{err}");

    // cluster.toml is web01's upload, untouched by the laptop.
    let theirs = read(&work.path().join("web01.toml"));
    assert!(theirs.contains("allow_from = \"*\""), "{theirs}");
    assert_eq!(read(&cluster_toml(&c)), theirs);
    assert_eq!(version_of(&c.cm), 3);

    // The laptop's current directory holds the merge with its markers.
    let merged = read(&cwd.path().join("company.toml"));
    assert!(merged.contains("<<<<<<<"), "{merged}");
    assert!(merged.contains(">>>>>>>"), "{merged}");
    assert!(
        merged.contains("allow_from = \"laptop, web01\""),
        "{merged}"
    );
    assert!(merged.contains("allow_from = \"*\""), "{merged}");
    let base: serde_json::Value =
        serde_json::from_str(&read(&cwd.path().join("company.toml.base"))).unwrap();
    assert_eq!(base["hash"], hash_hex(theirs.as_bytes()));
    assert_eq!(base["version"], 3);
}

#[test]
fn edit_whose_clean_merge_does_not_validate_keeps_the_edit() {
    let (c, _cm) = company("laptop,web01");
    let work = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    // Both add a [group.ops], far apart: the text merges cleanly, but the
    // result defines the table twice.
    let editor = racing_editor(
        &c,
        work.path(),
        "printf '[group.ops]\\nmembers = \"laptop\"\\n' >> \"$1\"",
        "1i [group.ops]\\nmembers = \"web01\"\\n",
    );
    let out = edit(&c, &editor, cwd.path());
    let err = stderr(&out);
    let web_log = fs::read_to_string(work.path().join("web01.log")).unwrap_or_default();
    assert!(web_log.contains("version 3"), "{web_log}");
    assert_eq!(code(&out), Some(78), "{err}");
    let theirs = read(&work.path().join("web01.toml"));
    assert_eq!(read(&cluster_toml(&c)), theirs, "nothing was uploaded");
    assert_eq!(version_of(&c.cm), 3);

    // The laptop's edit survives: as the merge in the current directory,
    // with the base it is on, ready for `malai config upload` once fixed.
    let kept = fs::read_to_string(cwd.path().join("company.toml")).unwrap_or_else(|e| {
        panic!("the edit is lost: no company.toml in the current directory ({e}); stderr:\n{err}")
    });
    assert!(kept.contains("members = \"laptop\""), "{kept}");
    let base: serde_json::Value =
        serde_json::from_str(&read(&cwd.path().join("company.toml.base"))).unwrap();
    assert_eq!(base["hash"], hash_hex(theirs.as_bytes()));
}

#[test]
fn edit_reopens_an_invalid_file_with_its_errors_until_it_validates() {
    let (c, _cm) = company("laptop");
    let work = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let editor = work.path().join("editor.sh");
    let count = path_str(&work.path().join("count"));
    let second = path_str(&work.path().join("second.toml"));
    let mode = path_str(&work.path().join("mode"));
    script(
        &editor,
        &format!(
            "n=$(cat {count} 2>/dev/null || echo 0)\n\
             echo $((n + 1)) > {count}\n\
             if [ \"$n\" = 0 ]; then\n\
             stat -c %a \"$(dirname \"$1\")\" > {mode}\n\
             printf '[group.ops]\\nmembers = \"ghost\"\\n' >> \"$1\"\n\
             else\n\
             cp \"$1\" {second}\n\
             sed -i 's/^members = \"ghost\"$/members = \"laptop\"/' \"$1\"\n\
             fi\n"
        ),
    );
    let original = read(&cluster_toml(&c));
    let out = edit(&c, &editor, cwd.path());
    let err = stderr(&out);
    assert_eq!(code(&out), Some(0), "{err}");
    assert!(err.contains("reopening the editor"), "{err}");
    assert_eq!(read(&work.path().join("count")).trim(), "2");
    // The file the editor opens sits in a directory only its owner can read.
    assert_eq!(read(Path::new(&mode)).trim(), "700");

    // The second opening showed the errors above the first edit.
    let shown = read(Path::new(&second));
    assert!(shown.starts_with("# malai: "), "{shown}");
    let first_edit = format!("{original}[group.ops]\nmembers = \"ghost\"\n");
    let (errors, rest) = shown.split_at(shown.find("\n[cluster-manager]").unwrap() + 1);
    assert!(
        errors.lines().all(|l| l.starts_with("# malai: ")),
        "{errors}"
    );
    assert!(errors.contains("unknown principal \"ghost\""), "{errors}");
    let line = line_of(&first_edit, "members = \"ghost\"");
    assert!(
        has_position(errors, &format!("cluster.toml:{line}:")),
        "{errors}"
    );
    assert_eq!(rest, first_edit);

    let text = read(&cluster_toml(&c));
    assert_eq!(
        text,
        format!("{original}[group.ops]\nmembers = \"laptop\"\n")
    );
    assert_eq!(version_of(&c.cm), 3);
}

#[test]
fn validate_checks_locally_and_show_on_the_cm_prints_cluster_toml() {
    let home = TestHome::new();
    home.ok(&["cluster", "init", "company"]);
    let good = home.cluster_dir("company").join("cluster.toml");
    let out = home.run(&["config", "validate", &path_str(&good)]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text = format!("{}\n[group.ops]\nmembers = \"ghost\"\n", read(&good));
    fs::write(&bad, &text).unwrap();
    let out = home.run(&["config", "validate", &path_str(&bad)]);
    let err = stderr(&out);
    assert_eq!(code(&out), Some(78), "{err}");
    let prefix = format!("{}:{}:", bad.display(), line_of(&text, "ghost"));
    assert!(has_position(&err, &prefix), "no {prefix}COL: in:\n{err}");
    assert!(err.contains("unknown principal \"ghost\""), "{err}");

    // On the CM itself, show reads its own file.
    let out = home.run(&["config", "show", "company"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), read(&good));
}

/// `malai config download` run by root into a directory every user may write
/// to (0777, not sticky: `fs.protected_symlinks` does not protect it), where
/// another user planted symlinks to a victim file at both names the download
/// writes and at the temp names the old code used (`.NAME.tmp.PID`). Nothing
/// may follow them: the victim keeps its bytes and mode, the download and its
/// base file are regular files of mode 0600.
#[test]
fn download_into_a_shared_directory_follows_no_planted_symlink() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::fs::{lchown, symlink};

    let home = TestHome::new();
    home.ok(&["cluster", "init", "company"]);
    let cluster_text = read(&home.cluster_dir("company").join("cluster.toml"));
    let shared = tempfile::tempdir().unwrap();
    fs::set_permissions(shared.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let victim_dir = tempfile::tempdir().unwrap();
    let victim = victim_dir.path().join("victim");
    fs::write(&victim, "precious").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o640)).unwrap();
    let file = shared.path().join("company.toml");

    // `sh` prints its PID, waits for a line, then execs malai under that PID,
    // so the attacker knows it exactly (a real one plants a few thousand
    // names past /proc/sys/kernel/ns_last_pid).
    let mut child = std::process::Command::new("sh")
        .args(["-c", "echo $$; read go; exec \"$0\" \"$@\""])
        .arg(malai_bin())
        .args(["config", "download", "company", "-o", &path_str(&file)])
        .env("MALAI_HOME", home.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pid = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut pid)
        .unwrap();
    let pid = pid.trim();
    let old_temps = [
        format!(".company.toml.tmp.{pid}"),
        format!(".company.toml.base.tmp.{pid}"),
    ];
    let planted = old_temps
        .iter()
        .cloned()
        .chain(["company.toml".into(), "company.toml.base".into()]);
    for name in planted {
        let link = shared.path().join(name);
        symlink(&victim, &link).unwrap();
        if common::net::is_root() {
            // Planted by another user, as in the attack.
            lchown(&link, Some(65534), Some(65534)).unwrap();
        }
    }
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "go").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));

    assert_eq!(
        read(&victim),
        "precious",
        "the victim's bytes are unchanged"
    );
    let victim_mode = fs::metadata(&victim).unwrap().permissions().mode() & 0o7777;
    assert_eq!(victim_mode, 0o640, "the victim's mode is unchanged");
    let regular_0600 = |path: &Path| {
        let meta = fs::symlink_metadata(path).unwrap();
        assert!(
            meta.file_type().is_file(),
            "{} is a regular file",
            path.display()
        );
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            0o600,
            "{}",
            path.display()
        );
        read(path)
    };
    assert_eq!(regular_0600(&file), cluster_text);
    let base: serde_json::Value =
        serde_json::from_str(&regular_0600(&shared.path().join("company.toml.base"))).unwrap();
    assert_eq!(base["hash"], hash_hex(cluster_text.as_bytes()));
    for name in &old_temps {
        let meta = fs::symlink_metadata(shared.path().join(name)).unwrap();
        assert!(meta.file_type().is_symlink(), "{name} was left alone");
    }
    let entries = fs::read_dir(shared.path()).unwrap().count();
    assert_eq!(entries, 4, "no temp file is left behind");
}
