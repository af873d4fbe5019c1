//! Each typed outcome, as a user and a D-Bus client see it: every exec
//! error (denied, not run, unreachable, lost) and every config-edit error
//! (invalid, stale, denied, failed) gives the CLI its exit code and the
//! D-Bus caller its named error. The laptop's daemon serves a private bus;
//! every host is on 127.0.0.1: no root.

mod common;

use std::collections::HashMap;
use std::process::{Child, Output, Stdio};

use common::bus::PrivateBus;
use common::net::{Company, Daemon, Host, pids_matching, sleep_secs, wait_until};
use malai::dbus::Error;
use malai::dbus::client::ClusterProxy;
use malai::identity::Identity;

fn on_bus(host: &Host, bus: &PrivateBus, args: &[&str]) -> Output {
    spawn_on_bus(host, bus, args).wait_with_output().unwrap()
}

/// `on_bus`, started: for a CLI that waits out a timeout while the test
/// makes the same call over D-Bus (`wait_with_output` for its output).
fn spawn_on_bus(host: &Host, bus: &PrivateBus, args: &[&str]) -> Child {
    host.malai(args)
        .env("MALAI_DBUS_ADDRESS", &bus.address)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

/// `Exec` of `argv` on `machine` over D-Bus: an empty pipe as stdin,
/// /dev/null as stdout and stderr.
async fn exec(proxy: &ClusterProxy<'_>, machine: &str, argv: &[&str]) -> Result<u8, Error> {
    let (stdin, _) = std::io::pipe().unwrap();
    let null = std::fs::File::options()
        .write(true)
        .open("/dev/null")
        .unwrap();
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let token = format!("t{}", argv.join("-"));
    proxy
        .exec(
            machine,
            &argv,
            HashMap::new(),
            0,
            0,
            (&stdin).into(),
            (&null).into(),
            (&null).into(),
            &token,
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_exec_and_edit_error_has_its_exit_code_and_its_dbus_error() {
    let bus = PrivateBus::start();
    let c = Company::loopback();
    let mut cm = c.cm.start_daemon();
    let mut web = c.web01.start_daemon();
    let mut lap = c
        .laptop
        .start_daemon_with(&[("MALAI_DBUS_ADDRESS", &bus.address)]);
    // web01 runs rules only; `gone` is a machine nobody runs.
    let gone = Identity::generate().id52();
    let nap = format!("sleep {}", sleep_secs(4243));
    let web_rules = format!(
        "allow_from = \"{}\"\n[machine.web01.command.ghost]\ncommand = \"/nonexistent/ghost\"\nallow_from = \"laptop\"\n[machine.web01.command.nap]\ncommand = \"{nap}\"\nallow_from = \"laptop\"\n",
        c.cm_id
    );
    c.write_cluster_toml(
        &web_rules,
        "",
        &format!("[machine.gone]\nid52 = \"{gone}\"\naddrs = [\"127.0.0.1:9\"]\n"),
    );
    c.cm.ok(&["rescan"]);
    cm.wait_status("cluster-manager v2, 2/3 machines in sync");
    web.wait_status("company: machine v2");
    lap.wait_status("company: machine v2");

    let conn = zbus::connection::Builder::address(bus.address.as_str())
        .build()
        .await
        .unwrap();
    let proxy = ClusterProxy::builder(&conn)
        .path("/sh/malai/Malai1/cluster/company")
        .build()
        .await
        .unwrap();

    // Denied: web01's rules do not let the laptop run `id`.
    let out = on_bus(&c.laptop, &bus, &["web01.company", "id"]);
    assert_eq!(code(&out), Some(255), "{}", common::stderr(&out));
    let got = exec(&proxy, "web01", &["id"]).await;
    assert!(matches!(got, Err(Error::Denied(_))), "{got:?}");

    // Not run: allowed, but the rule's program does not exist.
    let out = on_bus(&c.laptop, &bus, &["web01.company", "ghost"]);
    assert_eq!(code(&out), Some(255), "{}", common::stderr(&out));
    let got = exec(&proxy, "web01", &["ghost"]).await;
    assert!(
        matches!(&got, Err(Error::Failed(m)) if m.contains("could not run")),
        "{got:?}"
    );

    // Unreachable: nobody answers for `gone` (the CLI and the D-Bus call
    // wait out their dial timeouts side by side).
    let cli = spawn_on_bus(&c.laptop, &bus, &["gone.company", "true"]);
    let got = exec(&proxy, "gone", &["true"]).await;
    let out = cli.wait_with_output().unwrap();
    assert_eq!(code(&out), Some(255), "{}", common::stderr(&out));
    assert!(matches!(got, Err(Error::Unreachable(_))), "{got:?}");

    // Lost: web01 dies under a running command.
    let mut cli = c
        .laptop
        .malai(&["web01.company", "nap"])
        .env("MALAI_DBUS_ADDRESS", &bus.address)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let over_bus = tokio::spawn({
        let proxy = proxy.clone();
        async move { exec(&proxy, "web01", &["nap"]).await }
    });
    wait_until("both naps run on web01", || pids_matching(&nap).len() == 2);
    web.kill9();
    for pid in pids_matching(&nap) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let status = cli.wait().unwrap();
    assert_eq!(status.code(), Some(255));
    let got = over_bus.await.unwrap();
    assert!(matches!(got, Err(Error::Failed(_))), "{got:?}");

    config_errors(&c, &bus, &proxy, cm).await;
    drop(lap);
}

/// Invalid, stale, denied and failed config edits, through the laptop's
/// daemon to the CM (`cm`, killed at the end).
async fn config_errors(c: &Company, bus: &PrivateBus, proxy: &ClusterProxy<'_>, cm: Daemon) {
    // Config edits, through the laptop's daemon to the CM.
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("company.toml");
    let file_arg = file.display().to_string();
    let out = on_bus(
        &c.laptop,
        bus,
        &["config", "download", "company", "-o", &file_arg],
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    let text = std::fs::read_to_string(&file).unwrap();

    // Invalid: exit 78, sh.malai.Malai1.Error.Invalid.
    std::fs::write(&file, "not toml [").unwrap();
    let out = on_bus(&c.laptop, bus, &["config", "upload", &file_arg]);
    assert_eq!(code(&out), Some(78), "{}", common::stderr(&out));
    let got = proxy.config_upload("not toml [", "", true).await;
    assert!(matches!(got, Err(Error::Invalid(_))), "{got:?}");

    // Stale: an upload on an old base: exit 1, ...Error.Stale.
    std::fs::write(&file, format!("{text}\n# one\n")).unwrap();
    let out = on_bus(&c.laptop, bus, &["config", "upload", &file_arg]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    // Another editor's change lands in between.
    let other = format!("{text}\n# other\n");
    proxy.config_upload(&other, "", true).await.unwrap();
    std::fs::write(&file, format!("{text}\n# two\n")).unwrap();
    let out = on_bus(&c.laptop, bus, &["config", "upload", &file_arg]);
    assert_eq!(code(&out), Some(1), "{}", common::stderr(&out));
    assert!(common::stderr(&out).contains("changed since your download"));
    let got = proxy.config_upload(&text, "0000", false).await;
    assert!(matches!(got, Err(Error::Stale(_))), "{got:?}");

    // Denied: the laptop hands editing to the CM alone; then exit 77,
    // ...Error.Denied.
    let cm_only = text.replace(
        "config_editors = \"laptop\"",
        &format!("config_editors = \"{}\"", c.cm_id),
    );
    proxy.config_upload(&cm_only, "", true).await.unwrap();
    let out = on_bus(
        &c.laptop,
        bus,
        &["config", "download", "company", "-o", &file_arg],
    );
    assert_eq!(code(&out), Some(77), "{}", common::stderr(&out));
    let got = proxy.config_download().await;
    assert!(matches!(got, Err(Error::Denied(_))), "{got:?}");

    // Failed: the CM is gone: exit 1, ...Error.Failed (side by side, as
    // above).
    cm.kill9();
    let cli = spawn_on_bus(
        &c.laptop,
        bus,
        &["config", "download", "company", "-o", &file_arg],
    );
    let got = proxy.config_download().await;
    let out = cli.wait_with_output().unwrap();
    assert_eq!(code(&out), Some(1), "{}", common::stderr(&out));
    assert!(matches!(got, Err(Error::Failed(_))), "{got:?}");
}
