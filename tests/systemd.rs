//! What systemd sees of the daemon: the NOTIFY_SOCKET protocol in order
//! (READY, RELOADING with MONOTONIC_USEC, READY, STOPPING), watchdog pings
//! at half of WATCHDOG_USEC, and unit files that `systemd-analyze verify`
//! accepts, and sockets passed by socket activation taken by name.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestHome;

#[test]
fn notify_protocol_in_order_with_watchdog() {
    let home = TestHome::new();
    home.init_loopback_cluster("company");
    let sock_path = home.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut child = home
        .cmd()
        .arg("daemon")
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);

    let first = common::read_notify_until(&sock, "READY=1");
    assert!(
        first.contains("STATUS=company: cluster-manager v1"),
        "{first}"
    );
    // Pings at half of 200 ms keep coming while the daemon is idle.
    common::read_notify_until(&sock, "WATCHDOG=1");
    common::read_notify_until(&sock, "WATCHDOG=1");

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let reload = common::read_notify_until(&sock, "RELOADING=1");
    let reload_msg = reload
        .lines()
        .rev()
        .find(|l| l.contains("RELOADING=1"))
        .unwrap()
        .to_owned();
    let after = common::read_notify_until(&sock, "READY=1");
    let full = format!("{reload}{after}");
    assert!(
        full.contains("MONOTONIC_USEC="),
        "RELOADING carries MONOTONIC_USEC:\n{full}"
    );
    assert!(
        !reload_msg.contains("READY=1"),
        "READY comes after RELOADING:\n{full}"
    );

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    common::read_notify_until(&sock, "STOPPING=1");
    assert!(child.wait().unwrap().success());
}

#[test]
fn unit_files_verify() {
    common::require_tool("systemd-analyze", "systemd");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    // The forward template, instantiated as an operator would: the address
    // from a drop-in, the name from the instance.
    let drop_in = dir.path().join("malai-forward@pg.socket.d");
    std::fs::create_dir(&drop_in).unwrap();
    std::fs::write(
        drop_in.join("listen.conf"),
        "[Socket]\nListenStream=127.0.0.1:5432\n",
    )
    .unwrap();
    for (unit, name) in [
        ("systemd/malai.service", "malai.service"),
        ("systemd/user/malai.service", "malai-user.service"),
        // After malai.service, which their Service= names.
        ("systemd/malai-http.socket", "malai-http.socket"),
        ("systemd/malai-forward@.socket", "malai-forward@pg.socket"),
    ] {
        // verify needs ExecStart= to exist: point it at the binary under test.
        let text = std::fs::read_to_string(root.join(unit))
            .unwrap()
            .replace("/usr/bin/malai", common::malai_bin());
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{unit}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn an_inherited_socket_no_listener_claims_is_reported_by_name_and_closed() {
    common::require_tool("systemd-socket-activate", "systemd");
    let home = TestHome::new();
    home.init_loopback_cluster("company");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let sock_path = home.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let log_path = home.path().join("daemon.log");
    let mut child = Command::new("systemd-socket-activate")
        .args(["-l", &addr, "--fdname=nosuchforward"])
        .arg(format!("--setenv=MALAI_HOME={}", home.path().display()))
        .arg(format!("--setenv=NOTIFY_SOCKET={}", sock_path.display()))
        .arg("--setenv=MALAI_DBUS_ADDRESS=disabled")
        .args([common::malai_bin(), "daemon"])
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    // The first connection starts the daemon, as systemd would.
    let deadline = Instant::now() + Duration::from_secs(30);
    let _first = loop {
        match std::net::TcpStream::connect(&addr) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "nothing listens on {addr}: {e}");
                std::thread::sleep(Duration::from_millis(20)); // poll for the listener
            }
        }
    };
    common::read_notify_until(&sock, "READY=1");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("\"nosuchforward\"") && log.contains("closing it"),
        "{log}"
    );
    // Closed, not left to hang its clients.
    let refused = std::net::TcpStream::connect(&addr).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
}
