//! The network lab: an "internet" (a bridge in a namespace of its own), a
//! relay host running iroh-relay's server (examples/lab_relay.rs) with TLS
//! from a CA made for the test and QUIC address discovery, and home routers
//! that NAT as real ones do (masquerade out; inbound dropped at FORWARD and
//! at INPUT except replies), each with one host behind it. A "hard" router
//! masquerades with a random port per destination, where hole punching
//! cannot succeed. Discovery is off everywhere: no packet leaves the
//! namespaces. Namespaces and processes are removed on drop, by name and
//! pid; namespaces a killed run left behind are removed by the next one.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::TestHome;
use super::net::{Host, PORT};

/// The relay host's address on the lab's internet.
pub const RELAY_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const RELAY_HTTPS_PORT: u16 = 3443;
const PREFIX: &str = "mlab";

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(args: &[&str]) {
    run("ip", args);
}

/// How a router translates.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// One public port per inside socket, whatever the destination
    /// (endpoint-independent mapping): punching works.
    Ordinary,
    /// A random public port per destination: punching cannot work.
    Hard,
}

/// The lab's namespaces and its relay; removed on drop.
pub struct Lab {
    id: String,
    namespaces: Vec<String>,
    relay: Option<Child>,
    pub ca_pem: PathBuf,
    /// Certificates and keys; deleted on drop.
    _pki: tempfile::TempDir,
}

impl Lab {
    /// The internet, the relay host (not yet running its relay) and the
    /// CA. `tag` makes names unique to the test.
    pub fn new(tag: &str) -> Lab {
        super::require_tool("nft", "nftables");
        super::require_tool("openssl", "openssl");
        remove_leftovers();
        let id = format!("{PREFIX}{}{tag}", std::process::id());
        let pki = tempfile::tempdir().unwrap();
        let mut lab = Lab {
            namespaces: Vec::new(),
            relay: None,
            ca_pem: pki.path().join("ca.pem"),
            _pki: pki,
            id,
        };
        let inet = lab.namespace("inet");
        ip(&["-n", &inet, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &inet, "link", "set", "br0", "up"]);
        let relay = lab.namespace("relay");
        lab.wire(&relay, "eth0", "vrelay", RELAY_IP);
        lab.make_pki();
        lab
    }

    /// The URL of the relay (https, its certificate signed by `ca_pem`).
    pub fn relay_url(&self) -> String {
        format!("https://{RELAY_IP}:{RELAY_HTTPS_PORT}")
    }

    fn ns_name(&self, name: &str) -> String {
        format!("{}-{name}", self.id)
    }

    fn namespace(&mut self, name: &str) -> String {
        let ns = self.ns_name(name);
        ip(&["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// A veth from `ns` (`inside`) to the internet bridge (`hub_side`),
    /// with address `addr`/24.
    fn wire(&self, ns: &str, inside: &str, hub_side: &str, addr: Ipv4Addr) {
        let inet = self.ns_name("inet");
        ip(&[
            "-n", &inet, "link", "add", hub_side, "type", "veth", "peer", "name", inside, "netns",
            ns,
        ]);
        ip(&["-n", &inet, "link", "set", hub_side, "master", "br0", "up"]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            inside,
        ]);
        ip(&["-n", ns, "link", "set", inside, "up"]);
    }

    /// A CA, and a certificate for the relay's IP signed by it (a
    /// self-signed certificate used directly is refused as a CA used as an
    /// end entity).
    fn make_pki(&self) {
        let dir = self.ca_pem.parent().unwrap();
        let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
        run(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &p("ca.key"),
                "-out",
                &p("ca.pem"),
                "-days",
                "2",
                "-subj",
                "/CN=malai lab CA",
            ],
        );
        run(
            "openssl",
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &p("relay.key"),
                "-out",
                &p("relay.csr"),
                "-subj",
                "/CN=relay",
            ],
        );
        std::fs::write(
            dir.join("relay.ext"),
            format!(
                "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:{RELAY_IP}\n"
            ),
        )
        .unwrap();
        run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &p("relay.csr"),
                "-CA",
                &p("ca.pem"),
                "-CAkey",
                &p("ca.key"),
                "-CAcreateserial",
                "-out",
                &p("relay.pem"),
                "-days",
                "2",
                "-extfile",
                &p("relay.ext"),
            ],
        );
    }

    /// Starts the relay (HTTPS, QUIC address discovery) and waits until it
    /// has bound its sockets.
    pub fn start_relay(&mut self) {
        let bin = lab_relay_bin();
        let dir = self.ca_pem.parent().unwrap().to_owned();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns_name("relay")])
            .arg(&bin)
            .args(["--http", &format!("{RELAY_IP}:3340")])
            .args(["--https", &format!("{RELAY_IP}:{RELAY_HTTPS_PORT}")])
            .args(["--quic", &format!("{RELAY_IP}:7842")])
            .arg("--cert")
            .arg(dir.join("relay.pem"))
            .arg("--key")
            .arg(dir.join("relay.key"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the lab relay");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the lab relay did not start");
        self.relay = Some(child);
    }

    /// Stops the relay (running connections must survive on their direct
    /// paths).
    pub fn stop_relay(&mut self) {
        if let Some(mut child) = self.relay.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A home network `name` (its number `n` picks its addresses): a router
    /// doing `nat` between the internet and a LAN, and one host behind it
    /// with a MALAI_HOME whose malai.toml sets nothing but discovery off
    /// (the relay comes from the cluster).
    pub fn home(&mut self, name: &str, n: u8, nat: Nat) -> Host {
        let host = self.namespace(&format!("h{name}"));
        let inside = self.router(name, n, nat, &host, "eth0");
        ip(&[
            "-n",
            &host,
            "route",
            "add",
            "default",
            "via",
            &gateway(n).to_string(),
        ]);
        let home = TestHome::new();
        std::fs::write(
            home.path().join("malai.toml"),
            format!("[network]\ndiscovery = false\n[network.ports]\ncompany = {PORT}\n"),
        )
        .unwrap();
        Host {
            name: name.to_owned(),
            ns: host,
            addr: inside,
            port: PORT,
            home,
        }
    }

    /// A second network `name` for `host` (a router doing `nat`, its LAN on
    /// the host's `eth1`), not used until `roam`.
    pub fn second_network(&mut self, host: &Host, name: &str, n: u8, nat: Nat) {
        self.router(name, n, nat, &host.ns, "eth1");
    }

    /// Moves `host` to network `n` (set up by `second_network`): its first
    /// link goes down and its default route goes through the other router,
    /// as a laptop that leaves one Wi-Fi for another.
    pub fn roam(&self, host: &Host, n: u8) {
        ip(&["-n", &host.ns, "link", "set", "eth0", "down"]);
        ip(&[
            "-n",
            &host.ns,
            "route",
            "replace",
            "default",
            "via",
            &gateway(n).to_string(),
            "dev",
            "eth1",
        ]);
    }

    /// A router `r{name}` doing `nat` between the internet and a LAN whose
    /// other end is `host_if` in namespace `host`; returns the host's
    /// address on it.
    fn router(&mut self, name: &str, n: u8, nat: Nat, host: &str, host_if: &str) -> Ipv4Addr {
        let router = self.namespace(&format!("r{name}"));
        let wan = Ipv4Addr::new(203, 0, 113, 100 + n);
        self.wire(&router, "w0", &format!("w{name}"), wan);
        ip(&[
            "-n", &router, "link", "add", "l0", "type", "veth", "peer", "name", host_if, "netns",
            host,
        ]);
        let inside = Ipv4Addr::new(192, 168, n, 2);
        ip(&[
            "-n",
            &router,
            "addr",
            "add",
            &format!("{}/24", gateway(n)),
            "dev",
            "l0",
        ]);
        ip(&["-n", &router, "link", "set", "l0", "up"]);
        ip(&[
            "-n",
            host,
            "addr",
            "add",
            &format!("{inside}/24"),
            "dev",
            host_if,
        ]);
        ip(&["-n", host, "link", "set", host_if, "up"]);
        run(
            "ip",
            &[
                "netns",
                "exec",
                &router,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=1",
            ],
        );
        let masquerade = match nat {
            Nat::Ordinary => "masquerade",
            Nat::Hard => "masquerade fully-random",
        };
        let rules = format!(
            "table ip nat {{\n  chain post {{\n    type nat hook postrouting priority 100\n    \
             oifname \"w0\" {masquerade}\n  }}\n}}\n\
             table ip filter {{\n  chain forward {{\n    type filter hook forward priority 0; policy drop\n    \
             ct state established,related accept\n    iifname \"l0\" oifname \"w0\" accept\n  }}\n  \
             chain input {{\n    type filter hook input priority 0; policy accept\n    \
             ct state established,related accept\n    iifname \"w0\" drop\n  }}\n}}\n"
        );
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &router, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("run nft");
        std::io::Write::write_all(&mut nft.stdin.take().unwrap(), rules.as_bytes()).unwrap();
        assert!(nft.wait().unwrap().success(), "nft rules for {router}");
        inside
    }
}

/// The router's address on LAN `n`.
fn gateway(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, n, 1)
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_relay();
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// examples/lab_relay, built with the tests (`cargo test --all-targets`).
fn lab_relay_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("examples").join("lab_relay"))
        .unwrap();
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --example lab_relay` (./test.sh does)",
        bin.display()
    );
    bin
}

/// Namespaces of earlier lab runs whose test process is gone.
fn remove_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let alive = pid
            .parse::<i32>()
            .is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}
