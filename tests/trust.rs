//! Trust that changes while things run: real daemons (cm, web01, laptop) on
//! loopback. A config put in force ends the laptop's running command, its
//! shell and its forwarded connection once they are no longer allowed;
//! `[revoked]` refuses a key over every rule and web01 keeps refusing it
//! until a config unrevokes it; `max_config_age` makes web01 refuse the
//! laptop while the CM is away, and serve it again when the CM is back.
//! The CM's own key rotation is followed by web01 at once and by the
//! laptop when it returns.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::net::{Company, Daemon, Host, free_tcp_ports, wait_until};

/// Appends `text` to a host's malai.toml before its daemon starts.
fn add_local(host: &Host, text: &str) {
    let path = host.home.path().join("malai.toml");
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    writeln!(f, "\n{text}").unwrap();
}

fn wait_log(d: &Daemon, needles: &[&str]) -> String {
    wait_until(&format!("the log shows {needles:?}"), || {
        d.log_text()
            .lines()
            .any(|l| needles.iter().all(|n| l.contains(n)))
    });
    d.log_text()
        .lines()
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .unwrap()
        .to_owned()
}

/// A TCP server on web01's 127.0.0.1 that greets each connection and
/// echoes what it gets; its port.
fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            std::thread::spawn(move || {
                let _ = conn.write_all(b"hello\n");
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// `malai ARGS` on `host`, running in the background with its stdin
/// open (a pipe the test holds) and its output captured.
fn spawn_malai(host: &Host, args: &[&str]) -> Child {
    host.malai(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` to exit; its exit code and stderr.
fn finished(mut child: Child) -> (Option<i32>, String) {
    wait_until("the command ended", || child.try_wait().unwrap().is_some());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn service(port: u16, allow_from: &str) -> String {
    format!(
        "[service.db]\nmachine = \"web01\"\nprotocol = \"tcp\"\nport = {port}\nallow_from = \"{allow_from}\"\n"
    )
}

#[test]
fn a_config_that_takes_rights_away_ends_the_command_the_shell_and_the_forward() {
    let c = Company::loopback();
    let [forward] = free_tcp_ports();
    add_local(
        &c.laptop,
        &format!("[forward.db]\nlisten = \"127.0.0.1:{forward}\"\nservice = \"db.company\"\n"),
    );
    let db = echo_server();
    let (cm, web, _lap) = c.start_synced("allow_from = \"laptop\"", "", &service(db, "laptop"));

    // The three things the laptop holds: a long command, a shell reading
    // its stdin, and a connection through the forward.
    let command = spawn_malai(&c.laptop, &["web01.company", "sleep", "1000"]);
    let mut shell = spawn_malai(&c.laptop, &["web01.company"]);
    let shell_in = shell.stdin.as_mut().unwrap();
    shell_in.write_all(b"echo shell-is-up\n").unwrap();
    let mut shell_out = shell.stdout.take().unwrap();
    let mut line = [0u8; 12];
    shell_out.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"shell-is-up\n");
    wait_until("the forward listens", || {
        TcpStream::connect(("127.0.0.1", forward)).is_ok()
    });
    let mut conn = TcpStream::connect(("127.0.0.1", forward)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut hello = [0u8; 6];
    conn.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"hello\n");
    wait_log(
        &web,
        &["malai_decision=\"allowed\"", "malai_argv=sleep 1000 "],
    );

    // The laptop leaves web01's allow_from and the service's.
    c.write_cluster_toml("", "", &service(db, "web01"));
    c.cm.ok(&["rescan"]);
    let rescanned = Instant::now();
    let mut cm = cm;
    cm.wait_status("v3");

    let (code, stderr) = finished(command);
    assert_eq!(code, Some(255), "{stderr}");
    assert!(stderr.contains("revoked by config v3"), "{stderr}");
    assert!(
        stderr.contains("allow_from"),
        "the reason names the rule: {stderr}"
    );
    let command_ended = rescanned.elapsed();

    let (code, stderr) = finished(shell);
    assert_eq!(code, Some(255), "{stderr}");
    assert!(stderr.contains("revoked by config v3"), "{stderr}");

    let mut rest = Vec::new();
    let read = conn.read_to_end(&mut rest);
    assert!(
        read.is_ok() || rest.is_empty(),
        "the forwarded connection is closed: {read:?}"
    );
    assert!(rest.is_empty(), "nothing more of the service: {rest:?}");
    eprintln!(
        "measured: the command ended {command_ended:?} after the rescan returned, all three by {:?}",
        rescanned.elapsed()
    );

    // web01's audit log says what ended and why.
    let sleep = wait_log(
        &web,
        &["malai_decision=\"revoked\"", "malai_argv=sleep 1000 "],
    );
    assert!(sleep.contains("malai_config_version=3"), "{sleep}");
    wait_log(&web, &["malai_decision=\"revoked\"", "malai_argv= "]);
    wait_log(
        &web,
        &["malai_decision=\"revoked\"", "malai_service=\"db\""],
    );

    // A new attempt is refused like any denial.
    let out = c.laptop.run(&["web01.company", "true"]);
    assert_eq!(out.status.code(), Some(255));
}

#[test]
fn a_revoked_key_is_refused_over_every_rule_until_a_config_unrevokes_it() {
    let c = Company::loopback();
    let rules = "allow_from = \"laptop\"";
    let (mut cm, mut web, _lap) = c.start_synced(rules, "", "");
    c.laptop.ok(&["web01.company", "true"]);
    let fetches = |cm: &Daemon| {
        cm.log_text()
            .lines()
            .filter(|l| l.contains("machine web01 fetched config"))
            .count()
    };
    // web01's first fetch, made before it was listed, was refused by the
    // CM's gate and is retried with backoff: let that retry land first.
    if web
        .log_text()
        .contains("cannot fetch config from the cluster manager")
    {
        wait_until("web01's retried fetch", || fetches(&cm) >= 1);
    }
    let fetched_at_start = fetches(&cm);

    // Revoked while web01's allow_from still names the laptop.
    let revoked = format!("[revoked]\nid52s = [\"{}\"]\n", c.laptop_id);
    c.write_cluster_toml(rules, "", &revoked);
    c.cm.ok(&["rescan"]);
    cm.wait_status("v3, 2/2 machines in sync");
    let out = c.laptop.run(&["web01.company", "true"]);
    assert_eq!(out.status.code(), Some(255));
    let err = common::stderr(&out);
    assert!(err.contains("refused"), "{err}");

    // A config that merely drops the [revoked] table does not admit it
    // again: web01 keeps what it was told.
    c.write_cluster_toml(rules, "", "");
    c.cm.ok(&["rescan"]);
    cm.wait_status("v4, 2/2 machines in sync");
    web.wait_status("company: machine v4");
    let out = c.laptop.run(&["web01.company", "true"]);
    assert_eq!(out.status.code(), Some(255), "{}", common::stderr(&out));
    let kept =
        std::fs::read_to_string(c.web01.cluster_dir("company").join("revoked.json")).unwrap();
    assert!(kept.contains(&c.laptop_id), "{kept}");

    // Listed in unrevoked: served again.
    let unrevoked = format!("[revoked]\nunrevoked = [\"{}\"]\n", c.laptop_id);
    c.write_cluster_toml(rules, "", &unrevoked);
    c.cm.ok(&["rescan"]);
    cm.wait_status("v5, 2/2 machines in sync");
    web.wait_status("company: machine v5");
    c.laptop.ok(&["web01.company", "true"]);
    // Three pushes, and web01 asked for none of them again.
    assert_eq!(
        fetches(&cm),
        fetched_at_start,
        "a pushed config needs no fetch"
    );

    // The CM's own key cannot be revoked: a validation error at its line.
    c.write_cluster_toml(
        rules,
        "",
        &format!("[revoked]\nid52s = [\"{}\"]\n", c.cm_id),
    );
    let out = c.cm.run(&["rescan", "--check"]);
    assert_eq!(out.status.code(), Some(78));
    let err = common::stderr(&out);
    assert!(
        err.contains("cluster.toml:") && err.contains("cluster manager"),
        "{err}"
    );
}

#[test]
fn a_machine_cut_off_from_its_cm_past_max_config_age_refuses_peers_until_it_returns() {
    let c = Company::loopback();
    let rules = "allow_from = \"laptop\"";
    // A top-level key: before the first table.
    let path = c.cm.cluster_dir("company").join("cluster.toml");
    let (cm, mut web, _lap) = {
        let mut cm = c.cm.start_daemon();
        let mut web = c.web01.start_daemon();
        let lap = c.laptop.start_daemon();
        c.write_cluster_toml(rules, "", "");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("max_config_age = \"5s\"\n{text}")).unwrap();
        c.cm.ok(&["rescan"]);
        cm.wait_status("2/2 machines in sync");
        web.wait_status("company: machine v2");
        (cm, web, lap)
    };
    c.laptop.ok(&["web01.company", "true"]);
    // Heard from the CM every quarter of the age: still fresh after it.
    let fresh_until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < fresh_until {
        c.laptop.ok(&["web01.company", "true"]);
    }

    // The CM goes away: past 5 s, web01 refuses the laptop and says why.
    cm.stop();
    web.wait_status("config expired");
    let out = c.laptop.run(&["web01.company", "true"]);
    assert_eq!(out.status.code(), Some(255));
    let err = common::stderr(&out);
    assert!(err.contains("config expired"), "{err}");
    wait_log(&web, &["config expired", "max_config_age = 5s"]);

    // The CM is back (same home, same port): web01 hears from it and
    // serves again.
    let _cm = c.cm.start_daemon();
    while web.status.contains("expired") {
        web.wait_notify("STATUS=");
    }
    wait_until("web01 serves the laptop again", || {
        c.laptop.run(&["web01.company", "true"]).status.success()
    });
    wait_log(&web, &["heard from the cluster manager again"]);
}

// ---------------------------------------------------------------------------
// Identity commands.

#[test]
fn an_exported_key_imported_on_a_fresh_home_is_the_same_identity_and_joins_with_it() {
    let old = common::TestHome::new();
    let cm = common::net::id52_of(&old.init_loopback_cluster("company"));
    let listed = old.json(&["identity", "list", "--json"]);
    assert_eq!(listed["identities"][0]["alias"], "company");
    assert_eq!(listed["identities"][0]["role"], "cluster-manager");
    assert_eq!(listed["identities"][0]["id52"], cm.as_str());

    let outside = tempfile::tempdir().unwrap();
    let key = outside.path().join("k");
    old.ok(&["identity", "export", "company", "-o", key.to_str().unwrap()]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Never over a file that exists, nor through a link planted there.
    let out = old.run(&["identity", "export", "company", "-o", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let link = outside.path().join("link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let out = old.run(&[
        "identity",
        "export",
        "company",
        "-o",
        link.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    // To a pipe: the same key text.
    let piped = old.ok(&["identity", "export", "company"]);
    assert_eq!(piped, std::fs::read_to_string(&key).unwrap());

    // A fresh home: the same id52, shown as a key waiting to join; the
    // daemon starts beside it.
    let new = common::TestHome::new();
    new.ok(&["identity", "import", "company", key.to_str().unwrap()]);
    let listed = new.json(&["identity", "list", "--json"]);
    assert_eq!(listed["identities"][0]["id52"], cm.as_str());
    assert_eq!(listed["identities"][0]["role"], "key only");
    new.ok(&["rescan", "--check"]);
    // machine init keeps it.
    let joined = new.json(&["machine", "init", &cm, "company", "--json"]);
    assert_eq!(joined["id52"], cm.as_str());

    // A key others may read is refused; so is replacing the key a cluster
    // knows this device by.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = new.run(&["identity", "import", "other", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::stderr(&out).contains("chmod 600"),
        "{}",
        common::stderr(&out)
    );
    let second = common::TestHome::new();
    second.init_loopback_cluster("company");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = second.run(&["identity", "import", "company", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::stderr(&out).contains("would replace"),
        "{}",
        common::stderr(&out)
    );
}

#[test]
fn a_machine_removed_from_the_cluster_is_told_and_grants_nothing_until_added_again() {
    let c = Company::loopback();
    let rules = "allow_from = \"laptop\"";
    let (cm, mut web, lap) = c.start_synced(rules, "", "");
    let command = spawn_malai(&c.laptop, &["web01.company", "sleep", "1000"]);
    wait_log(
        &web,
        &["malai_decision=\"allowed\"", "malai_argv=sleep 1000 "],
    );
    // The laptop's daemon stops: its files keep the directory of v2, which
    // still lists web01 and where it is.
    drop(lap);

    // web01 leaves cluster.toml.
    let path = c.cm.cluster_dir("company").join("cluster.toml");
    std::fs::write(
        &path,
        format!(
            "[cluster-manager]\nid52 = \"{}\"\n\n[machine.laptop]\nid52 = \"{}\"\naddrs = [\"{}\"]\n",
            c.cm_id,
            c.laptop_id,
            c.laptop.socket_addr()
        ),
    )
    .unwrap();
    c.cm.ok(&["rescan"]);
    web.wait_status("removed from the cluster");
    wait_log(
        &cm,
        &["removed from the cluster, acknowledged its farewell"],
    );
    let status = c.cm.json(&["status", "--json"]);
    let removed = &status["clusters"][0]["removed"][0];
    assert_eq!(removed["alias"], "web01", "{status}");
    assert_eq!(removed["farewell_acked"], 3, "{status}");
    let (code, stderr) = finished(command);
    assert_eq!(code, Some(255), "{stderr}");
    assert!(stderr.contains("revoked by config v3"), "{stderr}");
    let text =
        std::fs::read_to_string(c.web01.cluster_dir("company").join("machine.toml")).unwrap();
    assert!(
        !text.contains("[machine."),
        "the farewell lists no machine:\n{text}"
    );

    // The laptop still knows where web01 is: web01 refuses it.
    let out = c.laptop.run(&["web01.company", "true"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        common::stderr(&out).contains("refused"),
        "{}",
        common::stderr(&out)
    );

    // Added again: served again.
    c.write_cluster_toml(rules, "", "");
    c.cm.ok(&["rescan"]);
    web.wait_status("company: machine v4");
    assert!(!web.status.contains("removed"), "{}", web.status);
    c.laptop.ok(&["web01.company", "true"]);
}

#[test]
fn a_rotated_machine_key_keeps_the_machine_working_and_the_old_key_is_refused() {
    let c = Company::loopback();
    let (mut cm, mut web, mut lap) = c.start_synced("allow_from = \"laptop\"", "", "");
    c.laptop.ok(&["web01.company", "true"]);
    let key_path = c.web01.cluster_dir("company").join("identity.key");
    let old = malai::identity::Identity::load(&key_path).unwrap();

    c.web01.ok(&["identity", "rotate", "company"]);
    let new = malai::identity::Identity::load(&key_path).unwrap();
    assert_ne!(new.id52(), old.id52());
    let text = std::fs::read_to_string(c.cm.cluster_dir("company").join("cluster.toml")).unwrap();
    assert!(text.contains(&new.id52().to_string()) && !text.contains(&old.id52().to_string()));
    cm.wait_status("v3, 2/2 machines in sync");
    web.wait_status("company: machine v3");
    lap.wait_status("company: machine v3");
    let listed = c.web01.json(&["identity", "list", "--json"]);
    assert_eq!(
        listed["identities"][0]["id52"],
        new.id52().to_string().as_str()
    );

    // The laptop still runs commands there, with the new key in its
    // directory.
    c.laptop.ok(&["web01.company", "true"]);
    // The old key is a stranger to the CM.
    let cm_id: malai::identity::Id52 = c.cm_id.parse().unwrap();
    let asked = common::raw::try_config_request::<malai::sync::proto::FetchAnswer>(
        &old,
        &cm_id,
        c.cm.socket_addr().parse().unwrap(),
        malai::sync::proto::ConfigRequest::Fetch { protocol: Some(4) },
    );
    let err = asked.expect_err("the old key is refused");
    assert!(err.contains("not a member"), "{err}");
}

#[test]
fn a_rotation_needs_both_keys_and_cannot_take_another_machines_place() {
    use malai::sync::proto::{ConfigRequest, RotateAnswer, rotation_message};
    let c = Company::loopback();
    let (_cm, _web, _lap) = c.start_synced("allow_from = \"laptop\"", "", "");
    let path = c.cm.cluster_dir("company").join("cluster.toml");
    let before = std::fs::read_to_string(&path).unwrap();
    let laptop =
        malai::identity::Identity::load(&c.laptop.cluster_dir("company").join("identity.key"))
            .unwrap();
    let cm_id: malai::identity::Id52 = c.cm_id.parse().unwrap();
    let cm_addr = c.cm.socket_addr().parse().unwrap();
    let ask = |from: &malai::identity::Identity, new: &str, signer: &malai::identity::Identity| {
        let message = rotation_message(&c.cm_id, &from.id52().to_string(), new);
        let proof = data_encoding::HEXLOWER.encode(&signer.sign(&message));
        common::raw::try_config_request::<RotateAnswer>(
            from,
            &cm_id,
            cm_addr,
            ConfigRequest::Rotate {
                new_id52: new.to_owned(),
                proof,
            },
        )
    };

    // A new key the laptop does not hold: the proof is someone else's.
    let claimed = malai::identity::Identity::generate();
    let other = malai::identity::Identity::generate();
    let answer = ask(&laptop, &claimed.id52().to_string(), &other).unwrap();
    assert!(
        matches!(&answer, RotateAnswer::Rejected { reason } if reason.contains("does not verify")),
        "{answer:?}"
    );
    // web01's id52 as the laptop's "new" key: already named.
    let answer = ask(&laptop, &c.web_id, &other).unwrap();
    assert!(
        matches!(&answer, RotateAnswer::Rejected { reason } if reason.contains("already named")),
        "{answer:?}"
    );
    // A stranger is closed out before it can ask.
    let stranger = malai::identity::Identity::generate();
    let err = ask(&stranger, &claimed.id52().to_string(), &claimed).unwrap_err();
    assert!(err.contains("not a member"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        before,
        "nothing changed"
    );
}

#[test]
fn a_rotated_cm_key_is_followed_by_every_machine_and_one_offline_catches_up() {
    use malai::handover::Link;
    use malai::identity::{Id52, Identity};
    use malai::sync::proto::{ConfigRequest, HandoverAnswer};
    let c = Company::loopback();
    let (mut cm, mut web, lap) = c.start_synced("allow_from = \"laptop\"", "", "");
    // The laptop is away while the cluster manager rotates its key.
    drop(lap);
    let cm_dir = c.cm.cluster_dir("company");

    // A machine that said it runs a malai too old to follow stops the
    // rotation, unless forced; nothing is written.
    let state_path = cm_dir.join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["machines"]["laptop"]["protocol"] = 4.into();
    std::fs::write(&state_path, state.to_string()).unwrap();
    let out = c.cm.run(&["identity", "rotate", "company"]);
    assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));
    assert!(
        common::stderr(&out).contains("laptop (protocol 4)"),
        "{}",
        common::stderr(&out)
    );
    assert!(!cm_dir.join("handovers.json").exists() && !cm_dir.join("identity.key.next").exists());

    let started = Instant::now();
    c.cm.ok(&["identity", "rotate", "company", "--force"]);
    let new = Identity::load(&cm_dir.join("identity.key"))
        .unwrap()
        .id52()
        .to_string();
    assert_ne!(new, c.cm_id);
    let text = std::fs::read_to_string(cm_dir.join("cluster.toml")).unwrap();
    assert!(text.contains(&new) && !text.contains(&c.cm_id), "{text}");

    // web01 follows the handover and takes version 3 from the new key.
    web.wait_status("company: machine v3");
    println!("web01 on the new key after {:?}", started.elapsed());
    let info =
        std::fs::read_to_string(c.web01.cluster_dir("company").join("cluster-info.toml")).unwrap();
    assert!(info.contains(&new), "{info}");
    wait_log(&cm, &["followed the handover", &c.web_id]);
    // Only the laptop is behind.
    cm.wait_status("v3, 1/2 machines in sync");

    // The laptop comes back knowing only the old key: the CM reaches it as
    // that key, it follows, and takes version 3.
    let back = Instant::now();
    let mut lap = c.laptop.start_daemon();
    lap.wait_status("company: machine v3");
    println!("laptop caught up {:?} after it started", back.elapsed());
    wait_log(&cm, &["followed the handover", &c.laptop_id]);
    cm.wait_status("v3, 2/2 machines in sync");
    let info =
        std::fs::read_to_string(c.laptop.cluster_dir("company").join("cluster-info.toml")).unwrap();
    assert!(info.contains(&new), "{info}");
    c.laptop.ok(&["web01.company", "true"]);
    let downloaded = c.laptop.ok(&["config", "show", "company"]);
    assert!(downloaded.contains(&new), "{downloaded}");

    // Whoever holds the retired key now is a stranger to web01: it cannot
    // hand web01 over to a key of its own.
    let old_id: Id52 = c.cm_id.parse().unwrap();
    let retired = Identity::load(&cm_dir.join("retired").join(format!("{old_id}.key"))).unwrap();
    let evil = Identity::generate();
    let web_id: Id52 = c.web_id.parse().unwrap();
    let err = common::raw::try_config_request::<HandoverAnswer>(
        &retired,
        &web_id,
        c.web01.socket_addr().parse().unwrap(),
        ConfigRequest::Handover {
            chain: vec![Link::sign(&retired, &evil.id52())],
        },
    )
    .expect_err("the retired key is refused");
    assert!(err.contains("not a member"), "{err}");
    let info =
        std::fs::read_to_string(c.web01.cluster_dir("company").join("cluster-info.toml")).unwrap();
    assert!(info.contains(&new), "unchanged: {info}");
}
