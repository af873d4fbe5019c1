//! Test hosts, each with its own MALAI_HOME and a real `malai daemon` whose
//! readiness and status come from a NOTIFY_SOCKET: on 127.0.0.1, each on
//! ports of its own (no root), or, for the tests that need root, in network
//! namespaces joined by a bridge (made and deleted by the test, with names
//! unique to it).

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::TestHome;

/// How long a test waits for any one thing to happen.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `cond` until it holds; fails the test after DEADLINE.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20)); // poll interval
    }
}

pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// `N` distinct UDP ports on 127.0.0.1 that were free a moment ago (for
/// daemons' clusters).
pub fn free_udp_ports<const N: usize>() -> [u16; N] {
    let probes: Vec<std::net::UdpSocket> = (0..N)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("a free UDP port"))
        .collect();
    std::array::from_fn(|i| probes[i].local_addr().unwrap().port())
}

/// `N` distinct TCP ports on 127.0.0.1 that were free a moment ago (for
/// listeners a daemon or a tool opens; a test's own listener binds port 0
/// instead).
pub fn free_tcp_ports<const N: usize>() -> [u16; N] {
    let probes: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free TCP port"))
        .collect();
    std::array::from_fn(|i| probes[i].local_addr().unwrap().port())
}

/// A `sleep` duration unique to this test process: `whole` seconds and the
/// pid as a fraction, so that `pids_matching("sleep SECS")` finds only this
/// run's command, whatever else runs on the machine (tests of one binary
/// pass distinct `whole`s).
pub fn sleep_secs(whole: u32) -> String {
    format!("{whole}.{:07}", std::process::id())
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (apt-get install iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bridge namespace and one namespace per host, deleted on drop.
pub struct Net {
    hub: String,
    hosts: Vec<String>,
}

impl Net {
    pub fn new(tag: &str, count: usize) -> Net {
        let id = format!("m{}-{}", std::process::id(), tag);
        let hub = format!("{id}-hub");
        let mut net = Net {
            hub: hub.clone(),
            hosts: Vec::new(),
        };
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "set", "lo", "up"]);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        for i in 0..count {
            let ns = format!("{id}-{i}");
            ip(&["netns", "add", &ns]);
            net.hosts.push(ns.clone());
            let veth = format!("v{i}");
            ip(&[
                "-n", &hub, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            ip(&["-n", &hub, "link", "set", &veth, "master", "br0", "up"]);
            let addr = format!("{}/24", Net::addr(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    /// The address of host `i` (each test's hosts live in their own
    /// namespaces, so every test may use the same range).
    pub fn addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, 0, (i + 1) as u8)
    }

    pub fn ns(&self, i: usize) -> &str {
        &self.hosts[i]
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain(std::iter::once(&self.hub)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The UDP port every test daemon binds in its own namespace.
pub const PORT: u16 = 7700;

/// One test host: a namespace (or none: loopback), a home, and the offline
/// network settings.
pub struct Host {
    pub name: String,
    /// Empty: no namespace, the test's own network on 127.0.0.1.
    pub ns: String,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub home: TestHome,
}

impl Host {
    pub fn new(name: &str, ns: &str, addr: Ipv4Addr, clusters: &[&str]) -> Host {
        Host::with_port(name, ns, addr, PORT, clusters)
    }

    /// A host on 127.0.0.1 in the test's own network namespace (no root
    /// needed), on a UDP port that was free a moment ago.
    pub fn loopback(name: &str, clusters: &[&str]) -> Host {
        let [port] = free_udp_ports();
        Host::with_port(name, "", Ipv4Addr::LOCALHOST, port, clusters)
    }

    /// A host on 127.0.0.1 on `port` (one of `free_udp_ports`).
    pub fn loopback_on(name: &str, port: u16, clusters: &[&str]) -> Host {
        Host::with_port(name, "", Ipv4Addr::LOCALHOST, port, clusters)
    }

    fn with_port(name: &str, ns: &str, addr: Ipv4Addr, port: u16, clusters: &[&str]) -> Host {
        let home = TestHome::new();
        let mut ports = String::new();
        for c in clusters {
            ports.push_str(&format!("{c} = {port}\n"));
        }
        std::fs::write(
            home.path().join("malai.toml"),
            format!("[network]\nrelay = \"disabled\"\ndiscovery = false\nbind = \"{addr}\"\n[network.ports]\n{ports}"),
        )
        .unwrap();
        Host {
            name: name.to_owned(),
            ns: ns.to_owned(),
            addr,
            port,
            home,
        }
    }

    pub fn socket_addr(&self) -> String {
        format!("{}:{}", self.addr, self.port)
    }

    /// `program` inside this host's namespace (on loopback: as it is).
    pub fn command(&self, program: &str) -> Command {
        if self.ns.is_empty() {
            Command::new(program)
        } else {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &self.ns, program]);
            c
        }
    }

    /// `malai ARGS` inside this host's namespace and home.
    pub fn malai(&self, args: &[&str]) -> Command {
        let mut c = self.command(super::malai_bin());
        c.args(args)
            .env("MALAI_HOME", self.home.path())
            // No D-Bus unless a test brings its own bus: never the host's.
            .env("MALAI_DBUS_ADDRESS", "disabled")
            .env_remove("MALAI_LOG");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.malai(args)
            .stdin(Stdio::null())
            .output()
            .expect("run malai")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{}: malai {args:?} failed ({:?}):\n{}",
            self.name,
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).expect("one JSON object")
    }

    pub fn cluster_dir(&self, alias: &str) -> PathBuf {
        self.home.cluster_dir(alias)
    }

    /// Starts `malai daemon` here and waits for READY=1.
    pub fn start_daemon(&self) -> Daemon {
        self.start_daemon_with(&[])
    }

    /// Starts `malai daemon` with extra environment (e.g. a private bus).
    pub fn start_daemon_with(&self, env: &[(&str, &str)]) -> Daemon {
        self.start_daemon_as(None, env)
    }

    /// Starts `malai daemon` as local user `user` (with `setpriv`, its own
    /// group and no other; the home must be that user's), or as the test's
    /// own user.
    pub fn start_daemon_as(&self, user: Option<&str>, env: &[(&str, &str)]) -> Daemon {
        let dir = self.home.path();
        let sock_path = dir.join(format!("notify-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&sock_path);
        let notify = UnixDatagram::bind(&sock_path).expect("notify socket");
        if user.is_some() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let log_path = dir.join("daemon.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut cmd = self.malai(&["daemon"]);
        if let Some(user) = user {
            let u = nix::unistd::User::from_name(user)
                .unwrap()
                .expect("the user exists");
            let mut as_user = self.command("setpriv");
            as_user
                .args(["--reuid", &u.uid.to_string(), "--regid", &u.gid.to_string()])
                .args(["--clear-groups", "--", super::malai_bin(), "daemon"])
                .env("MALAI_HOME", self.home.path())
                .env("MALAI_DBUS_ADDRESS", "disabled")
                .env_remove("MALAI_LOG");
            cmd = as_user;
        }
        // To chase a rare failure: the daemon's tracing filter (README).
        if let Ok(filter) = std::env::var("TEST_DAEMON_LOG") {
            cmd.env("MALAI_LOG", filter);
        }
        let child = cmd
            .env("NOTIFY_SOCKET", &sock_path)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start daemon");
        let mut d = Daemon {
            child,
            notify,
            log: log_path,
            status: String::new(),
            name: self.name.clone(),
        };
        d.wait_notify("READY=1");
        d
    }
}

/// A running daemon; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    pub child: Child,
    notify: UnixDatagram,
    pub log: PathBuf,
    /// The last STATUS= line seen.
    pub status: String,
    name: String,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Reads NOTIFY_SOCKET datagrams until one contains `what`.
    pub fn wait_notify(&mut self, what: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        let mut buf = vec![0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{}: no {what:?} from the daemon within {DEADLINE:?}; last status {:?}; log:\n{}",
                self.name,
                self.status,
                self.log_text()
            );
            self.notify.set_read_timeout(Some(left)).unwrap();
            if let Ok(n) = self.notify.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if let Some(s) = msg.lines().find_map(|l| l.strip_prefix("STATUS=")) {
                    self.status = s.to_owned();
                }
                if msg.contains(what) {
                    return msg;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{}: daemon exited ({status}) before {what:?}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
        }
    }

    /// Waits until the daemon's STATUS= line contains `what`.
    pub fn wait_status(&mut self, what: &str) {
        if self.status.contains(what) {
            return;
        }
        let deadline = Instant::now() + DEADLINE;
        while !self.status.contains(what) {
            assert!(
                Instant::now() < deadline,
                "{}: status never showed {what:?} (last: {:?})",
                self.name,
                self.status
            );
            self.wait_notify("STATUS=");
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.child.wait().expect("wait daemon")
    }

    pub fn kill9(mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Kept past the home's deletion when asked (README).
        if let Ok(dir) = std::env::var("TEST_LOG_DIR") {
            let kept = format!("{dir}/{}-{}.log", self.name, self.child.id());
            let _ = std::fs::copy(&self.log, kept);
        }
        if let Ok(None) = self.child.try_wait() {
            self.signal(nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20)); // poll for exit
            }
            self.signal(nix::sys::signal::Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// A cluster `company` on three hosts: cm (host 0), web01 (1), laptop (2),
/// with every machine added to the CM's cluster.toml by `rules`.
pub struct Company {
    /// The namespaces, deleted on drop; `None` on loopback.
    pub net: Option<Net>,
    pub cm: Host,
    pub web01: Host,
    pub laptop: Host,
    pub cm_id: String,
    pub web_id: String,
    pub laptop_id: String,
}

impl Company {
    /// `rules` is appended to cluster.toml after the machine entries; it may
    /// add keys to [machine.web01] etc. through dotted tables.
    pub fn new(tag: &str) -> Company {
        let net = Net::new(tag, 3);
        let cm = Host::new("cm", net.ns(0), Net::addr(0), &["company"]);
        let web01 = Host::new("web01", net.ns(1), Net::addr(1), &["company"]);
        let laptop = Host::new("laptop", net.ns(2), Net::addr(2), &["company"]);
        Company::on(Some(net), cm, web01, laptop)
    }

    /// The same three hosts on 127.0.0.1, with no namespace: no root needed.
    pub fn loopback() -> Company {
        let [cm, web01, laptop] = free_udp_ports();
        let host = |name, port| Host::with_port(name, "", Ipv4Addr::LOCALHOST, port, &["company"]);
        Company::on(
            None,
            host("cm", cm),
            host("web01", web01),
            host("laptop", laptop),
        )
    }

    fn on(net: Option<Net>, cm: Host, web01: Host, laptop: Host) -> Company {
        let cm_id = id52_of(&cm.json(&["cluster", "init", "company", "--json"]));
        let cm_addr = cm.socket_addr();
        let join = |h: &Host| {
            id52_of(&h.json(&[
                "machine",
                "init",
                &cm_id,
                "company",
                "--cm-addr",
                &cm_addr,
                "--name",
                &h.name,
                "--json",
            ]))
        };
        let web_id = join(&web01);
        let laptop_id = join(&laptop);
        Company {
            net,
            cm,
            web01,
            laptop,
            cm_id,
            web_id,
            laptop_id,
        }
    }

    /// Rewrites the CM's cluster.toml: the CM section, both machines with
    /// their addresses, and `extra` (rules for them, groups...).
    pub fn write_cluster_toml(&self, web_rules: &str, laptop_rules: &str, extra: &str) {
        let text = format!(
            "[cluster-manager]\nid52 = \"{}\"\nconfig_editors = \"laptop\"\n\n[machine.web01]\nid52 = \"{}\"\naddrs = [\"{}\"]\n{web_rules}\n\n[machine.laptop]\nid52 = \"{}\"\naddrs = [\"{}\"]\n{laptop_rules}\n\n{extra}\n",
            self.cm_id,
            self.web_id,
            self.web01.socket_addr(),
            self.laptop_id,
            self.laptop.socket_addr()
        );
        let path = self.cm.cluster_dir("company").join("cluster.toml");
        let mut f = std::fs::File::create(path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }
}

impl Company {
    /// Starts the three daemons, writes cluster.toml (see
    /// `write_cluster_toml`), rescans the CM and waits until both machines
    /// acknowledged version 2. Returns the daemons: cm, web01, laptop.
    pub fn start_synced(
        &self,
        web_rules: &str,
        laptop_rules: &str,
        extra: &str,
    ) -> (Daemon, Daemon, Daemon) {
        self.start_synced_with(web_rules, laptop_rules, extra, &[])
    }

    /// `start_synced` with extra environment for the laptop's daemon (e.g.
    /// a private bus).
    pub fn start_synced_with(
        &self,
        web_rules: &str,
        laptop_rules: &str,
        extra: &str,
        laptop_env: &[(&str, &str)],
    ) -> (Daemon, Daemon, Daemon) {
        let mut cm = self.cm.start_daemon();
        let mut web = self.web01.start_daemon();
        let lap = self.laptop.start_daemon_with(laptop_env);
        self.write_cluster_toml(web_rules, laptop_rules, extra);
        self.cm.ok(&["rescan"]);
        cm.wait_status("2/2 machines in sync");
        web.wait_status("company: machine v2");
        (cm, web, lap)
    }
}

pub fn id52_of(v: &serde_json::Value) -> String {
    v["id52"].as_str().expect("id52 in JSON").to_owned()
}

/// The pids of processes whose command line starts with `needle`.
pub fn pids_matching(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.starts_with(needle) {
                out.push(pid);
            }
        }
    }
    out
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// Runs `f` on a thread inside network namespace `ns` (threads it starts,
/// and sockets made there, stay in that namespace); `ns` empty: on a plain
/// thread, in the test's own network.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = (!ns.is_empty()).then(|| format!("/var/run/netns/{ns}"));
    std::thread::spawn(move || {
        if let Some(path) = path {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        }
        f()
    })
    .join()
    .expect("namespace thread")
}
