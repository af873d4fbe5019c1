//! Policy you can prove (real daemons on loopback): `acl explain` names the
//! list and group chain that decide, on the CM and, for a config editor,
//! from the CM (77 for anyone else); a change that gives the laptop a shell
//! on web01 while a `[[test]]` denies it fails `rescan --check` with 78 at
//! the test's item, is refused as an upload (the version stays), and
//! `--plan` lists exactly that gain. The CM's status page, loaded by
//! headless Chromium, shows its machines in sync, a recent decision and a
//! forward.

mod common;

use std::io::Write as _;
use std::process::Stdio;

use common::net::{Company, free_tcp_ports};

const WEB: &str = "allow_from = \"\"\n\
[machine.web01.command.restart]\n\
command = \"echo restarted\"\n\
allow_from = \"on-call\"";

const GROUPS: &str = "[group.admins]\nmembers = \"laptop\"\n\
[group.on-call]\nmembers = \"admins\"\n";

/// The `[[test]]` of the cluster: the laptop restarts web01 and edits the
/// config, and has no shell or other command there.
const TEST: &str = "[[test]]\npeer = \"laptop\"\nmachine = \"web01\"\n\
allow = [\"restart\", \"edit\"]\n\
deny = [\"uptime\", \"shell\"]\n";

fn explain(host: &common::net::Host, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["acl", "explain"];
    all.extend_from_slice(args);
    let out = host.run(&all);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        common::stderr(&out),
    )
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one cluster: explain, then one change three ways"
)]
fn explain_names_the_rule_and_a_test_stops_a_change() {
    let c = Company::loopback();
    let extra = format!("{GROUPS}\n{TEST}");
    let (mut cm, mut web, _lap) = c.start_synced(WEB, "", &extra);

    // On the CM, from its file.
    let (code, out, err) = explain(&c.cm, &["laptop", "web01.company", "--", "restart"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        "allowed by machine.web01.command.restart.allow_from (on-call > admins > laptop)\n"
    );
    let (code, out, _) = explain(&c.cm, &["laptop", "web01.company", "--shell"]);
    assert_eq!(code, Some(1));
    assert!(
        out.starts_with("denied: ") && out.contains("machine.web01.allow_from"),
        "{out}"
    );
    let (code, out, _) = explain(&c.cm, &["web01", "web01.company", "--edit"]);
    assert_eq!(code, Some(1), "{out}");
    // The laptop, a config editor, asks the CM; `me` is its own key.
    let (code, out, err) = explain(&c.laptop, &["me", "web01.company", "--", "restart"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("(on-call > admins > laptop)"), "{out}");
    let (code, out, _) = explain(&c.laptop, &[&c.laptop_id, "web01.company", "--", "uptime"]);
    assert_eq!(code, Some(1), "{out}");
    // web01 may not read the config.
    let (code, _, err) = explain(&c.web01, &["laptop", "web01.company", "--shell"]);
    assert_eq!(code, Some(77), "{err}");

    // A change that gives the laptop a shell on web01, against the test.
    let path = c.cm.cluster_dir("company").join("cluster.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = text.replace(
        "allow_from = \"\"\n[machine.web01.command.restart]",
        "allow_from = \"\"\nallow_shell = \"laptop\"\n[machine.web01.command.restart]",
    );
    assert_ne!(changed, text);
    std::fs::write(&path, &changed).unwrap();
    let item = changed
        .lines()
        .position(|l| l.starts_with("deny = "))
        .unwrap()
        + 1;
    let col = changed
        .lines()
        .nth(item - 1)
        .unwrap()
        .find("\"shell\"")
        .unwrap()
        + 1;
    let out = c.cm.run(&["rescan", "--check"]);
    assert_eq!(out.status.code(), Some(78));
    let err = common::stderr(&out);
    assert!(
        err.contains(&format!("cluster.toml:{item}:{col}: test failed: laptop on web01 should be denied a shell, but is allowed by machine.web01.allow_shell (laptop)")),
        "{err}"
    );
    let out = c.cm.run(&["rescan", "--plan"]);
    assert_eq!(out.status.code(), Some(78), "the test still fails it");
    let plan = String::from_utf8_lossy(&out.stdout);
    assert_eq!(plan, "+ laptop on web01: shell\n");
    let out = c.cm.run(&["rescan", "--plan", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["changes"],
        serde_json::json!([{"peer": "laptop", "machine": "web01", "right": "shell", "gained": true}])
    );
    std::fs::write(&path, &text).unwrap();

    // The same change uploaded from the laptop: the plan, then refused.
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("company.toml");
    let file_s = file.to_str().unwrap();
    c.laptop
        .ok(&["config", "download", "company", "-o", file_s]);
    let mine = std::fs::read_to_string(&file).unwrap().replace(
        "allow_from = \"\"\n[machine.web01.command.restart]",
        "allow_from = \"\"\nallow_shell = \"laptop\"\n[machine.web01.command.restart]",
    );
    std::fs::write(&file, &mine).unwrap();
    let out = c.laptop.run(&["config", "upload", file_s, "--plan"]);
    assert_eq!(out.status.code(), Some(78));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "+ laptop on web01: shell\n"
    );
    let out = c.laptop.run(&["config", "upload", file_s]);
    assert_eq!(out.status.code(), Some(78), "{}", common::stderr(&out));
    assert!(
        common::stderr(&out).contains("test failed"),
        "{}",
        common::stderr(&out)
    );
    let status = c.cm.json(&["status", "--json"]);
    assert_eq!(status["clusters"][0]["config_version"], 2, "{status}");

    // A change the test allows goes through, and its plan says so.
    let allowed = std::fs::read_to_string(&file)
        .unwrap()
        .replace("allow_shell = \"laptop\"\n", "")
        .replace("[group.admins]", "[service.web]\nmachine = \"web01\"\nprotocol = \"tcp\"\nport = 8080\nallow_from = \"admins\"\n\n[group.admins]");
    std::fs::write(&file, &allowed).unwrap();
    let out = c.laptop.run(&["config", "upload", file_s, "--plan"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "+ laptop on web01: service web\n"
    );
    c.laptop.ok(&["config", "upload", file_s]);
    cm.wait_status("company: cluster-manager v3");
    web.wait_status("company: machine v3");
    let out = c.cm.run(&["rescan", "--plan"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(
        out.stdout.is_empty(),
        "nothing changes against the config in force"
    );
}

#[test]
fn headless_chromium_reads_the_status_page() {
    if std::process::Command::new("chromium")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("chromium is needed (apt-get install chromium): .ci/run installs it");
    }
    let c = Company::loopback();
    let [http, forward, service] = free_tcp_ports();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(c.cm.home.path().join("malai.toml"))
        .unwrap();
    writeln!(
        f,
        "\n[http]\nlisten = \"127.0.0.1:{http}\"\n[forward.web]\nlisten = \"127.0.0.1:{forward}\"\nservice = \"web.company\"\n"
    )
    .unwrap();
    let extra = format!(
        "[machine.cm]\nid52 = \"{}\"\naddrs = [\"{}\"]\nallow_from = \"laptop\"\n\n\
         [service.web]\nmachine = \"web01\"\nprotocol = \"tcp\"\nport = {service}\nallow_from = \"cm\"\n",
        c.cm_id,
        c.cm.socket_addr()
    );
    let (_cm, _web, _lap) = c.start_synced("allow_from = \"laptop\"", "", &extra);
    // (The CM is a machine of its own cluster too, but pushes to none but
    // the two others.)
    assert_eq!(
        c.laptop.ok(&["cm.company", "echo", "marker-on-the-page"]),
        "marker-on-the-page\n"
    );

    let url = format!("http://malai.localhost:{http}/");
    let profile = tempfile::tempdir().unwrap();
    let chromium = |args: &[&str]| {
        std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = chromium(&["--dump-dom", &url]);
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        dom.contains("<title>malai: status</title>"),
        "chromium's DOM:\n{dom}\nstderr:\n{}",
        common::stderr(&out)
    );
    assert!(dom.contains("<h2>company: cluster-manager</h2>"), "{dom}");
    for machine in ["web01", "laptop"] {
        assert!(
            dom.contains(&format!("<tr><td>{machine}</td><td>"))
                && dom.contains("<td>in-sync</td>"),
            "{machine} in sync: {dom}"
        );
    }
    let machines = &dom[dom.find("<table class=\"machines\">").unwrap()..];
    let machines = &machines[..machines.find("</table>").unwrap()];
    assert_eq!(
        machines.matches("<td>v2</td><td>in-sync</td>").count(),
        2,
        "{machines}"
    );
    assert!(
        dom.contains("<td>company</td><td>laptop</td><td>echo marker-on-the-page</td><td>allowed: machine.cm.allow_from allows laptop</td>"),
        "the decision is listed: {dom}"
    );
    assert!(
        dom.contains("<td>web.company</td><td>listening</td>"),
        "{dom}"
    );
    assert!(!dom.contains("<script"), "plain HTML");
    assert!(
        !dom.contains("PRIVATE KEY") && !dom.contains("[machine."),
        "no secrets, no config"
    );

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = chromium(&[
        &format!("--screenshot={}", shot.display()),
        "--window-size=1024,900",
        &url,
    ]);
    let png = std::fs::read(&shot)
        .unwrap_or_else(|e| panic!("no screenshot ({e}): {}", common::stderr(&out)));
    assert!(png.starts_with(b"\x89PNG"));
}
