//! The daemon on D-Bus, against a private `dbus-daemon` started here: the
//! objects `busctl` sees, `malai status` reading the daemon's view, `malai
//! rescan` over the bus (with RELOADING=1/READY=1 on the notify socket), and
//! the files' view once the daemon is gone; as root, the policy file and the
//! daemon's own checks against callers of other users.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Output, Stdio};

use common::TestHome;
use common::bus::PrivateBus;

fn on_bus(home: &TestHome, bus: &PrivateBus, args: &[&str]) -> Output {
    home.cmd()
        .env("MALAI_DBUS_ADDRESS", &bus.address)
        .args(args)
        .output()
        .expect("run malai")
}

fn status_json(home: &TestHome, bus: &PrivateBus) -> serde_json::Value {
    let out = on_bus(home, bus, &["status", "--json"]);
    assert!(out.status.success(), "status: {}", common::stderr(&out));
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn daemon_on_a_private_bus_serves_status_and_rescan() {
    let bus = PrivateBus::start();
    let home = TestHome::new();
    let init = home.init_loopback_cluster("company");
    let (mut child, sock) = start_on(&home, &bus);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);

    // READY=1 comes after the name is held: busctl finds everything at once.
    let intro = bus.busctl(&["introspect", "sh.malai.Malai1", "/sh/malai/Malai1"]);
    for want in [
        "sh.malai.Malai1.Daemon",
        ".Status",
        ".Rescan",
        ".Home",
        "org.freedesktop.DBus.Properties",
    ] {
        assert!(intro.contains(want), "introspection lacks {want}:\n{intro}");
    }
    let cluster = "/sh/malai/Malai1/cluster/company";
    let get = |prop: &str| {
        bus.busctl(&[
            "get-property",
            "sh.malai.Malai1",
            cluster,
            "sh.malai.Malai1.Cluster",
            prop,
        ])
    };
    assert_eq!(get("Role").trim(), "s \"cluster-manager\"");
    assert_eq!(get("Alias").trim(), "s \"company\"");
    assert_eq!(get("Id52").trim(), format!("s {}", init["id52"]));
    assert_eq!(get("ConfigVersion").trim(), "t 1");

    let status = status_json(&home, &bus);
    assert_eq!(status["source"], "daemon", "{status}");
    assert_eq!(status["clusters"][0]["alias"], "company");
    assert_eq!(status["clusters"][0]["role"], "cluster-manager");
    assert_eq!(status["clusters"][0]["config_version"], 1);
    let human = on_bus(&home, &bus, &["status"]);
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("(read from daemon)"),
        "{}",
        String::from_utf8_lossy(&human.stdout)
    );

    // A changed cluster.toml, applied by `malai rescan` over the bus: the
    // daemon reloads (RELOADING=1 then READY=1) and the version goes up.
    let toml = home.cluster_dir("company").join("cluster.toml");
    let mut text = std::fs::read_to_string(&toml).unwrap();
    text.push_str("\n# changed by the test\n");
    std::fs::write(&toml, text).unwrap();
    let out = on_bus(&home, &bus, &["rescan"]);
    assert!(out.status.success(), "rescan: {}", common::stderr(&out));
    assert!(
        common::stderr(&out).contains("asked on"),
        "rescan went over D-Bus: {}",
        common::stderr(&out)
    );
    let reload = common::read_notify_until(&sock, "RELOADING=1");
    let reload_msg = reload
        .lines()
        .rev()
        .find(|l| l.contains("RELOADING=1"))
        .unwrap()
        .to_owned();
    assert!(!reload_msg.contains("READY=1"), "{reload}");
    common::read_notify_until(&sock, "READY=1");
    let status = status_json(&home, &bus);
    assert_eq!(status["source"], "daemon", "{status}");
    assert_eq!(status["clusters"][0]["config_version"], 2, "{status}");
    assert_eq!(get("ConfigVersion").trim(), "t 2");

    // Without the daemon the same bus has no owner for the name: the files.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    common::read_notify_until(&sock, "STOPPING=1");
    assert!(child.wait().unwrap().success());
    let status = status_json(&home, &bus);
    assert_eq!(status["source"], "files", "{status}");
    assert_eq!(status["clusters"][0]["config_version"], 2, "{status}");
}

#[test]
fn a_daemon_of_another_home_is_not_asked() {
    let bus = PrivateBus::start();
    let served = TestHome::new();
    served.init_loopback_cluster("company");
    let (mut child, _sock) = start_on(&served, &bus);

    // Another MALAI_HOME, named explicitly: its own files, not that daemon.
    let other = TestHome::new();
    other.ok(&["cluster", "init", "elsewhere"]);
    let status = status_json(&other, &bus);
    assert_eq!(status["source"], "files", "{status}");
    assert_eq!(status["clusters"][0]["alias"], "elsewhere", "{status}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
}

/// A private system-type bus reading the project's policy file (plus
/// `extra`, a policy snippet), listening in a directory every user can
/// reach. The tests that use it call as other users: they need root.
fn system_bus(dir: &std::path::Path, extra: &str) -> PrivateBus {
    common::require_tool("dbus-daemon", "dbus");
    common::require_tool("busctl", "systemd");
    common::require_tool("setpriv", "util-linux");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let policy = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging/dbus-1/system.d/sh.malai.Malai1.conf");
    let socket = dir.join("system_bus_socket");
    // The default context of Debian's system.conf: deny owning and calling,
    // allow replies, signals and the bus driver.
    let config = format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <include>{policy}</include>
  {extra}
</busconfig>
"#,
        socket = socket.display(),
        policy = policy.display(),
    );
    let config_path = dir.join("system.conf");
    std::fs::write(&config_path, config).unwrap();
    let config_arg = format!("--config-file={}", config_path.display());
    PrivateBus::spawn(&[&config_arg], None)
}

/// busctl as the user nobody (no supplementary groups).
fn busctl_as_nobody(bus: &PrivateBus, args: &[&str]) -> Output {
    busctl_as(65534, bus, args)
}

/// busctl as `uid` (its group the same number, no supplementary groups).
fn busctl_as(uid: u32, bus: &PrivateBus, args: &[&str]) -> Output {
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args(["--clear-groups", "busctl"])
        .arg(format!("--address={}", bus.address))
        .args(args)
        .output()
        .expect("run setpriv busctl")
}

/// Starts a daemon of `home` on `bus`; returns it once READY=1, with the
/// NOTIFY_SOCKET it talks to.
fn start_on(home: &TestHome, bus: &PrivateBus) -> (Running, UnixDatagram) {
    let sock_path = home.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let child = home
        .cmd()
        .arg("daemon")
        .env("MALAI_DBUS_ADDRESS", &bus.address)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child = Running(child);
    common::read_notify_until(&sock, "READY=1");
    (child, sock)
}

/// A CM of `company` on loopback, its daemon on `bus`.
fn daemon_on(home: &TestHome, bus: &PrivateBus) -> Running {
    home.init_loopback_cluster("company");
    start_on(home, bus).0
}

fn stop(mut child: Running) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
}

const DAEMON: [&str; 3] = [
    "sh.malai.Malai1",
    "/sh/malai/Malai1",
    "sh.malai.Malai1.Daemon",
];

#[test]
#[ignore = "needs root: calls the bus as other users (setpriv)"]
fn the_policy_lets_everyone_read_and_only_root_rescan() {
    let dir = tempfile::tempdir().unwrap();
    let bus = system_bus(dir.path(), "");
    let home = TestHome::new();
    let child = daemon_on(&home, &bus);

    // Root owns the name (the daemon got it) and may rescan.
    let out = on_bus(&home, &bus, &["rescan"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(
        common::stderr(&out).contains("asked on"),
        "{}",
        common::stderr(&out)
    );

    // nobody reads: introspection, properties, Status.
    let intro = busctl_as_nobody(&bus, &["introspect", "sh.malai.Malai1", "/sh/malai/Malai1"]);
    assert!(intro.status.success(), "{}", common::stderr(&intro));
    let role = busctl_as_nobody(
        &bus,
        &[
            "get-property",
            "sh.malai.Malai1",
            "/sh/malai/Malai1/cluster/company",
            "sh.malai.Malai1.Cluster",
            "Role",
        ],
    );
    assert!(role.status.success(), "{}", common::stderr(&role));
    let mut call = vec!["call"];
    call.extend(DAEMON);
    let status = busctl_as_nobody(&bus, &[call.clone(), vec!["Status"]].concat());
    assert!(status.status.success(), "{}", common::stderr(&status));
    assert!(String::from_utf8_lossy(&status.stdout).contains("\\\"source\\\":\\\"daemon\\\""));

    // ...but the bus refuses nobody's Rescan.
    let rescan = busctl_as_nobody(&bus, &[call, vec!["Rescan"]].concat());
    assert!(!rescan.status.success());
    let err = common::stderr(&rescan);
    assert!(
        err.contains("denied") && !err.contains("may not call Rescan"),
        "the bus refuses before the daemon sees the call: {err}"
    );
    stop(child);
}

#[test]
#[ignore = "needs root: calls the bus as other users (setpriv)"]
fn the_daemon_refuses_rescan_itself_when_the_bus_lets_it_through() {
    let dir = tempfile::tempdir().unwrap();
    // A bus policy too generous on purpose: nobody may call anything.
    let extra = r#"<policy user="nobody"><allow send_destination="sh.malai.Malai1"/></policy>"#;
    let bus = system_bus(dir.path(), extra);
    let home = TestHome::new();
    let child = daemon_on(&home, &bus);
    let mut call = vec!["call"];
    call.extend(DAEMON);
    call.push("Rescan");
    let rescan = busctl_as_nobody(&bus, &call);
    assert!(!rescan.status.success());
    let err = common::stderr(&rescan);
    assert!(
        err.contains("may not call Rescan"),
        "the daemon's own refusal: {err}"
    );
    stop(child);
}

/// `malai ARGS` as the user nobody (no groups), with a home of its own and
/// no MALAI_HOME: it finds the system service on `bus`.
fn malai_as_nobody(bus: &PrivateBus, home: &std::path::Path, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(common::malai_bin())
        .args(args)
        .env_remove("MALAI_HOME")
        .env_remove("XDG_DATA_HOME")
        .env("HOME", home)
        .env("MALAI_DBUS_ADDRESS", &bus.address)
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv malai")
}

#[test]
#[ignore = "needs root: calls the bus as other users (setpriv)"]
fn a_caller_outside_the_group_reads_status_but_may_not_exec() {
    // The project's policy refuses first; with a policy too generous, the
    // daemon's own check still does.
    let generous = r#"<policy user="nobody"><allow send_destination="sh.malai.Malai1"/></policy>"#;
    for (extra, refusal) in [
        ("", "org.freedesktop.DBus.Error.AccessDenied"),
        (generous, "may not call Exec"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let bus = system_bus(dir.path(), extra);
        let home = TestHome::new();
        let child = daemon_on(&home, &bus);
        let nobody_home = tempfile::tempdir().unwrap();
        nix::unistd::chown(
            nobody_home.path(),
            Some(nix::unistd::Uid::from_raw(65534)),
            Some(nix::unistd::Gid::from_raw(65534)),
        )
        .unwrap();

        let out = malai_as_nobody(&bus, nobody_home.path(), &["status", "--json"]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(status["source"], "daemon");
        assert_eq!(status["clusters"][0]["alias"], "company");

        let out = malai_as_nobody(&bus, nobody_home.path(), &["cm.company", "id"]);
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(255), "{err}");
        assert!(err.contains(refusal), "{extra:?}: {err}");
        assert!(out.stdout.is_empty());
        stop(child);
    }
}

#[test]
#[ignore = "needs root: runs a daemon as the user nobody and calls as other users (setpriv)"]
fn a_users_own_daemon_serves_that_user_and_no_other() {
    // A user's daemon (as on the session bus): the bus lets nobody own the
    // name and lets nobody and the user daemon (uid 1) call it; the daemon
    // itself decides, and serves only its own user.
    let extra = r#"<policy user="nobody"><allow own="sh.malai.Malai1"/><allow send_destination="sh.malai.Malai1"/></policy>
<policy user="daemon"><allow send_destination="sh.malai.Malai1"/></policy>"#;
    let dir = tempfile::tempdir().unwrap();
    let bus = system_bus(dir.path(), extra);
    let home = TestHome::new();
    let init = home.init_loopback_cluster("company");
    let toml = home.cluster_dir("company").join("cluster.toml");
    let mut text = std::fs::read_to_string(&toml).unwrap();
    text.push_str(&format!(
        "\n[machine.cm]\nid52 = \"{}\"\nallow_from = \"cm\"\n",
        init["id52"].as_str().unwrap()
    ));
    std::fs::write(&toml, text).unwrap();
    let sock_path = home.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let chown = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(home.path())
        .status()
        .unwrap();
    assert!(chown.success());
    let as_nobody = || {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(common::malai_bin())
            .env("MALAI_HOME", home.path())
            .env("HOME", home.path())
            .env("MALAI_DBUS_ADDRESS", &bus.address)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        c
    };
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("daemon.log");
    let mut command = as_nobody();
    let daemon = Running(
        command
            .arg("daemon")
            .env("NOTIFY_SOCKET", &sock_path)
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    common::read_notify_until(&sock, "READY=1");
    let version = bus.busctl(&[
        "get-property",
        "sh.malai.Malai1",
        "/sh/malai/Malai1/cluster/company",
        "sh.malai.Malai1.Cluster",
        "ConfigVersion",
    ]);
    let version = version.trim().trim_start_matches("t ").to_owned();

    // Its user runs a command through it (not directly with the key) and
    // rescans through it.
    let out = as_nobody()
        .args(["-v", "cm.company", "id", "-un"])
        .output()
        .unwrap();
    let err = common::stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "nobody");
    assert!(
        err.contains("through the daemon") && !err.contains("going directly"),
        "{err}"
    );
    // The daemon's audit line for a command on the device itself carries
    // the same fields as a peer's (the peer is the device's own id52).
    let log = std::fs::read_to_string(&log_path).unwrap();
    let exit_line = log
        .lines()
        .find(|l| l.contains("malai_exit=0"))
        .unwrap_or_else(|| panic!("no audit line with the exit code:\n{log}"));
    for field in [
        "malai_cluster=company".to_owned(),
        format!("malai_peer={}", init["id52"].as_str().unwrap()),
        format!("malai_config_version={version}"),
        "malai_argv=id -un".to_owned(),
        "malai_uid=65534".to_owned(),
    ] {
        assert!(exit_line.contains(&field), "{field} missing: {exit_line}");
    }
    let out = as_nobody().arg("rescan").output().unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(
        common::stderr(&out).contains("asked on"),
        "{}",
        common::stderr(&out)
    );

    // Another user, let through by the bus, is refused by the daemon.
    let mut call = vec!["call"];
    call.extend(DAEMON);
    call.push("Rescan");
    let other = busctl_as(1, &bus, &call);
    assert!(!other.status.success());
    assert!(
        common::stderr(&other).contains("may not call Rescan"),
        "{}",
        common::stderr(&other)
    );
    stop(daemon);
}

/// A daemon the test started: stopped by `stop` at the end of the test,
/// or killed by its pid when dropped still running (a test that fails
/// before stopping it leaves no process behind).
struct Running(std::process::Child);

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A local group, created for the test if the machine has none of that
/// name (and then deleted when dropped).
struct LocalGroup {
    name: &'static str,
    created: bool,
}

impl LocalGroup {
    fn ensure(name: &'static str) -> LocalGroup {
        let exists = nix::unistd::Group::from_name(name).unwrap().is_some();
        if !exists {
            let out = Command::new("groupadd")
                .args(["--system", name])
                .output()
                .unwrap();
            assert!(out.status.success(), "groupadd: {}", common::stderr(&out));
        }
        LocalGroup {
            name,
            created: !exists,
        }
    }
}

impl Drop for LocalGroup {
    fn drop(&mut self) {
        if self.created {
            let _ = Command::new("groupdel").arg(self.name).status();
        }
    }
}

/// A local user made for the test, in `groups`, with a home of its own;
/// deleted when dropped.
struct LocalUser {
    name: String,
    home: tempfile::TempDir,
}

impl LocalUser {
    fn new(tag: &str, groups: &[&str]) -> LocalUser {
        let name = format!("mt{}{tag}", std::process::id());
        let home = tempfile::tempdir().unwrap();
        let out = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/bin/sh"])
            .args(["--home-dir", &home.path().display().to_string()])
            .args(["--groups", &groups.join(",")])
            .arg(&name)
            .output()
            .unwrap();
        assert!(out.status.success(), "useradd: {}", common::stderr(&out));
        let user = nix::unistd::User::from_name(&name).unwrap().unwrap();
        nix::unistd::chown(home.path(), Some(user.uid), Some(user.gid)).unwrap();
        LocalUser { name, home }
    }

    /// `malai ARGS` as this user with its groups, no MALAI_HOME: it finds
    /// the system service on `bus`.
    fn malai(&self, bus: &PrivateBus, args: &[&str]) -> Output {
        Command::new("setpriv")
            .arg(format!("--reuid={}", self.name))
            .arg(format!("--regid={}", self.name))
            .arg("--init-groups")
            .arg(common::malai_bin())
            .args(args)
            .current_dir(self.home.path())
            .env_remove("MALAI_HOME")
            .env_remove("XDG_DATA_HOME")
            .env("HOME", self.home.path())
            .env("MALAI_DBUS_ADDRESS", &bus.address)
            .stdin(Stdio::null())
            .output()
            .expect("run setpriv malai")
    }
}

impl Drop for LocalUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

/// What a real member of the group malai may do through the system service
/// (README, "Who may do what on the device"): commands on the device
/// itself as itself, or as a command rule says; rescan; no config editing,
/// and so no way to the service's keys. A member of malai-admin edits the
/// config.
#[test]
#[ignore = "needs root: creates local users and groups (useradd) and calls as them"]
fn a_member_of_the_group_malai_may_do_what_the_readme_says_and_no_more() {
    let _malai = LocalGroup::ensure("malai");
    let _admins = LocalGroup::ensure("malai-admin");
    let alice = LocalUser::new("a", &["malai"]);
    let bob = LocalUser::new("b", &["malai", "malai-admin"]);
    // The bus reads the policy's groups when it starts: after they exist.
    let dir = tempfile::tempdir().unwrap();
    let bus = system_bus(dir.path(), "");

    let home = TestHome::new();
    let init = home.init_loopback_cluster("company");
    let cm = init["id52"].as_str().unwrap();
    let key = home.cluster_dir("company").join("identity.key");
    std::fs::write(
        home.cluster_dir("company").join("cluster.toml"),
        format!(
            "[cluster-manager]\nid52 = \"{cm}\"\nconfig_editors = \"cm\"\n\n[machine.cm]\nid52 = \"{cm}\"\nallow_from = \"cm\"\n\n[machine.cm.command.rootid]\ncommand = \"id -un\"\nusername = \"root\"\nallow_from = \"cm\"\n"
        ),
    )
    .unwrap();
    let (child, _notify) = start_on(&home, &bus);
    // The service's home is private, as /var/lib/malai is (0700 root).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();

    // A command on the device itself runs as alice, not as root...
    let out = alice.malai(&bus, &["cm.company", "id", "-un"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), alice.name);
    // ...so the service's key stays out of reach...
    let key_text = key.display().to_string();
    let out = alice.malai(&bus, &["cm.company", "cat", &key_text]);
    assert_ne!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty(), "alice read the key");
    // ...and a command rule runs as the rule says.
    let out = alice.malai(&bus, &["cm.company", "rootid"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "root");

    // She may rescan, but not download or upload the config: the bus
    // refuses (and the daemon would too).
    let out = alice.malai(&bus, &["rescan"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let out = alice.malai(&bus, &["config", "download", "company", "-o", "c.toml"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        common::stderr(&out).contains("AccessDenied"),
        "{}",
        common::stderr(&out)
    );
    assert!(!alice.home.path().join("c.toml").exists());

    // Bob, in malai-admin too, downloads it.
    let out = bob.malai(&bus, &["config", "download", "company", "-o", "c.toml"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let text = std::fs::read_to_string(bob.home.path().join("c.toml")).unwrap();
    assert!(text.contains("[machine.cm.command.rootid]"));
    stop(child);
}
