//! The cluster manager's one commit path under a race: a rescan that read
//! cluster.toml just before an upload changed it must never put the older
//! text back in force under a newer version. A fault point compiled into
//! debug builds (`MALAI_TEST_FAULTS`) holds the rescan between reading the
//! cluster directory and committing, while the upload lands. All on
//! 127.0.0.1: no root.

mod common;

use common::net::{Company, wait_until};

#[test]
fn a_rescan_that_read_an_older_file_never_commits_it_over_an_upload() {
    let faults = tempfile::tempdir().unwrap();
    let faults_dir = faults.path().display().to_string();
    let c = Company::loopback();
    let mut cm =
        c.cm.start_daemon_with(&[("MALAI_TEST_FAULTS", &faults_dir)]);
    let mut web = c.web01.start_daemon();
    let _lap = c.laptop.start_daemon();
    c.write_cluster_toml("allow_from = \"laptop\"", "", "");
    let path = c.cm.cluster_dir("company").join("cluster.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(
            "config_editors = \"laptop\"",
            "config_editors = \"laptop\"\n# A",
        ),
    )
    .unwrap();
    c.cm.ok(&["rescan"]);
    cm.wait_status("cluster-manager v2, 2/2 machines in sync");

    // A rescan reads cluster.toml (text A) and is held there.
    let held = faults.path().join("rescan-loaded");
    std::fs::write(&held, b"").unwrap();
    c.cm.ok(&["rescan"]);
    let reached = faults.path().join("rescan-loaded.reached");
    wait_until("the rescan read cluster.toml", || reached.exists());

    // Meanwhile an editor uploads text B, which adds a rule on web01.
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("company.toml");
    let file_arg = file.display().to_string();
    c.laptop
        .ok(&["config", "download", "company", "-o", &file_arg]);
    let mut b = std::fs::read_to_string(&file).unwrap();
    b.push_str(
        "\n[machine.web01.command.hi]\ncommand = \"echo from B\"\nallow_from = \"laptop\"\n",
    );
    std::fs::write(&file, &b).unwrap();
    c.laptop.ok(&["config", "upload", &file_arg]);
    // (The CM's main loop is held in the rescan: its STATUS= waits too.)
    web.wait_status("company: machine v3");

    // The rescan goes on with what it read before the upload.
    std::fs::remove_file(&held).unwrap();
    cm.wait_notify("READY=1");
    cm.wait_status("2/2 machines in sync");

    // B is in force, under the version it was given; A never came back.
    assert_eq!(std::fs::read_to_string(&path).unwrap(), b);
    let status = c.cm.json(&["status", "--json"]);
    let cluster = &status["clusters"][0];
    assert_eq!(cluster["config_version"], 3, "{status}");
    assert_eq!(
        cluster["config_hash"].as_str().unwrap(),
        blake3::hash(b.as_bytes()).to_hex().as_str(),
        "{status}"
    );
    assert_eq!(
        cluster["pending_rescan"],
        serde_json::Value::Null,
        "{status}"
    );
    web.wait_status("company: machine v3");
    let out = c.laptop.run(&["web01.company", "hi"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "from B\n",
        "{}",
        common::stderr(&out)
    );
}
