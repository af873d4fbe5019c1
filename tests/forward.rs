//! Service forwarding end to end: real daemons (cm, web01, laptop), real
//! servers on 127.0.0.1 of web01 (PostgreSQL, Redis, a small web server
//! that echoes what it received) and real clients on the laptop (psql,
//! redis-cli, curl, headless Chromium), through the laptop's
//! `[forward.NAME]` listeners and its HTTP-by-name listener. Also: refusals
//! of a peer outside `allow_from`, a client that names the identity headers
//! in `Connection:` or asks to switch to anything but WebSocket (h2c, …),
//! socket activation of the HTTP listener and of a forward, a rescan that
//! adds and removes a forward, 1 GiB through a forward with flat daemon
//! memory, and `forward list`.
//!
//! The hosts are on loopback, every port picked free by the test, except
//! for PostgreSQL and Redis: those run in network namespaces (root), where
//! web01's 127.0.0.1 is its own and the laptop can reach the servers only
//! through malai.
//!
//! A test fails, naming the package, when a tool it drives is missing;
//! .ci/run installs all of them.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::TestHome;
use common::net::{Company, Daemon, Host, free_tcp_ports, in_netns as in_ns, wait_until};

// ---------------------------------------------------------------------------
// Helpers.

/// Fails the calling test, naming the Debian package to install, when a
/// program it drives is missing: (program, package).
fn require_tools(tools: &[(&str, &str)]) {
    for (tool, package) in tools {
        common::require_tool(tool, package);
    }
}

/// `ARGS...` on `host` (in its namespace, if it has one).
fn ns_cmd(host: &Host, args: &[&str]) -> Command {
    let mut c = host.command(args[0]);
    c.args(&args[1..]);
    c
}

fn ns_run(host: &Host, args: &[&str]) -> Output {
    ns_cmd(host, args)
        .stdin(Stdio::null())
        .output()
        .expect("run in namespace")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A process the test started, ended by its PID when dropped.
struct Proc {
    child: Child,
}

impl Proc {
    fn spawn(mut cmd: Command, log: &Path) -> Proc {
        let log = std::fs::File::create(log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn");
        Proc { child }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20)); // poll for exit
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Appends `text` to a host's malai.toml (before its daemon starts, or
/// followed by a rescan).
fn add_local(host: &Host, text: &str) {
    let path = host.home.path().join("malai.toml");
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    writeln!(f, "\n{text}").unwrap();
}

/// Polls until `ns` accepts TCP connections on 127.0.0.1:`port`.
fn wait_port(host: &Host, port: u16) {
    let ns = host.ns.clone();
    wait_until(
        &format!("127.0.0.1:{port} listens on {}", host.name),
        || {
            let ns = ns.clone();
            in_ns(&ns, move || TcpStream::connect(("127.0.0.1", port)).is_ok())
        },
    );
}

fn wait_log(d: &Daemon, needles: &[&str]) -> String {
    wait_until(&format!("the log shows {needles:?}"), || {
        let log = d.log_text();
        log.lines().any(|l| needles.iter().all(|n| l.contains(n)))
    });
    let log = d.log_text();
    log.lines()
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .unwrap()
        .to_owned()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Where tests keep what a person may want to look at afterwards.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A TCP server on 127.0.0.1:`port` of `host` (0: any free port) that
/// greets every connection with `banner` and then echoes; serves until the
/// test ends. Returns its port.
fn banner_server(host: &Host, port: u16, banner: &'static [u8]) -> u16 {
    let listener = in_ns(&host.ns, move || {
        TcpListener::bind(("127.0.0.1", port)).unwrap()
    });
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let _ = conn.write_all(banner);
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

/// Connects (inside `host`'s namespace) to 127.0.0.1:`port`.
fn connect(host: &Host, port: u16) -> TcpStream {
    let ns = host.ns.clone();
    let s = in_ns(&ns, move || {
        TcpStream::connect(("127.0.0.1", port)).unwrap()
    });
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

// ---------------------------------------------------------------------------
// TCP.

#[test]
fn a_refused_peer_gets_its_connection_closed_and_the_host_logs_its_id52() {
    let c = Company::loopback();
    let [lap_echo, lap_secret, cm_echo, lap_late] = free_tcp_ports();
    let echo = banner_server(&c.web01, 0, b"hello\n");
    let secret = banner_server(&c.web01, 0, b"secret\n");
    add_local(
        &c.laptop,
        &format!(
            "[forward.echo]\nlisten = \"127.0.0.1:{lap_echo}\"\nservice = \"echo.company\"\n\
             [forward.secret]\nlisten = \"127.0.0.1:{lap_secret}\"\nservice = \"secret.company\"\n"
        ),
    );
    // The CM is outside echo's allow_from, but its cluster.toml says where
    // echo is, so it asks web01, which must refuse it.
    add_local(
        &c.cm,
        &format!("[forward.echo]\nlisten = \"127.0.0.1:{cm_echo}\"\nservice = \"echo.company\"\n"),
    );
    let services = format!(
        "[service.echo]\nmachine = \"web01\"\nprotocol = \"tcp\"\nport = {echo}\nallow_from = \"laptop\"\n\
         [service.secret]\nmachine = \"web01\"\nprotocol = \"tcp\"\nport = {secret}\nallow_from = \"cm\"\n\
         [machine.cm]\nid52 = \"{}\"\n",
        c.cm_id
    );
    let (cm, web, lap) = c.start_synced("", "", &services);

    // Allowed: the banner, then an echo, then a clean close both ways.
    let mut s = connect(&c.laptop, lap_echo);
    let mut got = [0u8; 6];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello\n");
    s.write_all(b"ping").unwrap();
    let mut echo = [0u8; 4];
    s.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping");
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "the server closed after our EOF");
    let allowed = wait_log(&web, &["allowed", &format!("malai_peer={}", c.laptop_id)]);
    assert!(allowed.contains("malai_service=\"echo\""), "{allowed}");

    // The CM: web01 refuses it, the TCP connection closes without a byte
    // of the service, and web01's audit log names the CM's id52.
    let mut s = connect(&c.cm, cm_echo);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(got.is_empty(), "a refused peer sees nothing of the service");
    let denied = wait_log(&web, &["denied", &format!("malai_peer={}", c.cm_id)]);
    assert!(denied.contains("malai_service=\"echo\""), "{denied}");
    assert!(denied.contains("service.echo.allow_from"), "{denied}");
    wait_log(&cm, &["forward echo", "refused", "denied"]);

    // A service the laptop may not reach is not even in its config: its
    // daemon refuses locally and says why.
    let mut s = connect(&c.laptop, lap_secret);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(got.is_empty());
    wait_log(
        &lap,
        &["forward secret", "refused", "no service \"secret\""],
    );

    // A rescan reconciles the listeners with malai.toml: a new forward
    // listens, one that is gone stops listening.
    let path = c.laptop.home.path().join("malai.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        &format!(
            "[forward.secret]\nlisten = \"127.0.0.1:{lap_secret}\"\nservice = \"secret.company\"\n"
        ),
        &format!("[forward.late]\nlisten = \"127.0.0.1:{lap_late}\"\nservice = \"echo.company\"\n"),
    );
    assert!(text.contains("[forward.late]") && !text.contains("forward.secret"));
    std::fs::write(&path, text).unwrap();
    c.laptop.ok(&["rescan"]);
    wait_log(
        &lap,
        &[&format!(
            "forward late: 127.0.0.1:{lap_late} -> echo.company"
        )],
    );
    let mut s = connect(&c.laptop, lap_late);
    let mut got = [0u8; 6];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello\n");
    let ns = c.laptop.ns.clone();
    let refused = in_ns(&ns, move || {
        TcpStream::connect(("127.0.0.1", lap_secret))
            .unwrap_err()
            .kind()
    });
    assert_eq!(
        refused,
        std::io::ErrorKind::ConnectionRefused,
        "the removed forward's port is closed"
    );
}

#[test]
fn a_gibibyte_through_a_tcp_forward_arrives_intact_with_flat_memory() {
    const TOTAL: u64 = 1 << 30;
    const BLOCK: usize = 1 << 20;
    let c = Company::loopback();
    let [forward] = free_tcp_ports();
    let listener = in_ns(&c.web01.ns, || TcpListener::bind("127.0.0.1:0").unwrap());
    let port = listener.local_addr().unwrap().port();
    add_local(
        &c.laptop,
        &format!("[forward.bulk]\nlisten = \"127.0.0.1:{forward}\"\nservice = \"bulk.company\"\n"),
    );
    let (_cm, web, lap) = c.start_synced(
        "",
        "",
        &format!("[service.bulk]\nmachine = \"web01\"\nprotocol = \"tcp\"\nport = {port}\nallow_from = \"laptop\"\n"),
    );
    // One pseudo-random block, sent TOTAL/BLOCK times with its index
    // stamped in front, so a lost, repeated or reordered block shows.
    let mut block = vec![0u8; BLOCK];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in block.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        // The request, up to the client's half-close (which must arrive as
        // EOF here while the other direction stays open).
        let mut req = Vec::new();
        conn.read_to_end(&mut req).unwrap();
        assert_eq!(req, b"send");
        let mut hash = blake3::Hasher::new();
        for i in 0..TOTAL / BLOCK as u64 {
            block[..8].copy_from_slice(&i.to_le_bytes());
            hash.update(&block);
            conn.write_all(&block).unwrap();
        }
        hash.finalize()
    });

    let before = (common::rss_kib(lap.pid()), common::rss_kib(web.pid()));
    let started = Instant::now();
    let mut s = connect(&c.laptop, forward);
    s.write_all(b"send").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut hash = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let mut peak = before;
    loop {
        // (A read with a timeout may fail with EINTR after SIGSTOP/SIGCONT
        // of the test, signal(7): read again.)
        let n = match s.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            n => n.unwrap(),
        };
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        let was = total;
        total += n as u64;
        if was >> 26 != total >> 26 {
            // every 64 MiB
            peak.0 = peak.0.max(common::rss_kib(lap.pid()));
            peak.1 = peak.1.max(common::rss_kib(web.pid()));
        }
    }
    let elapsed = started.elapsed();
    let sent = server.join().unwrap();
    assert_eq!(total, TOTAL, "every byte arrived");
    assert_eq!(hash.finalize(), sent, "the bytes arrived intact");
    eprintln!(
        "1 GiB in {elapsed:?}; RSS laptop {} -> {} KiB, web01 {} -> {} KiB",
        before.0, peak.0, before.1, peak.1
    );
    for (who, b, p) in [("laptop", before.0, peak.0), ("web01", before.1, peak.1)] {
        assert!(
            p < b + 64 * 1024,
            "{who}'s daemon grew with the transfer: {b} KiB before, {p} KiB at peak"
        );
    }
}

/// PostgreSQL on 127.0.0.1:`port` of `host`, run as the postgres user from
/// a fresh data directory; stopped by PID when dropped.
struct Postgres {
    _proc: Proc,
    _dir: tempfile::TempDir,
}

fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("postgres").exists() && bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn start_postgres(host: &Host, bin: &Path, port: u16) -> Postgres {
    let user = nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("the postgres package creates the postgres user");
    let dir = tempfile::tempdir().unwrap();
    nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
    let data = dir.path().join("data");
    let as_postgres = |program: &Path| {
        let mut c = ns_cmd(
            host,
            &[
                "setpriv",
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ],
        );
        c.arg(program).current_dir(dir.path()).env("LC_ALL", "C");
        c
    };
    let out = as_postgres(&bin.join("initdb"))
        .args([
            "--no-sync",
            "--auth=trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "-D",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut server = as_postgres(&bin.join("postgres"));
    server.arg("-D").arg(&data).arg("-k").arg(dir.path()).args([
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "fsync=off",
        "-p",
        &port.to_string(),
    ]);
    let proc = Proc::spawn(server, &dir.path().join("postgres.log"));
    wait_until("postgres accepts connections", || {
        ns_run(
            host,
            &[
                "pg_isready",
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ],
        )
        .status
        .success()
    });
    Postgres {
        _proc: proc,
        _dir: dir,
    }
}

#[test]
#[ignore = "needs root: network namespaces (servers reachable only through malai), postgres as its own user"]
fn psql_and_redis_cli_on_the_laptop_reach_their_servers_on_web01() {
    require_tools(&[
        ("psql", "postgresql-client"),
        ("pg_isready", "postgresql-client"),
        ("setpriv", "util-linux"),
        ("redis-server", "redis-server"),
        ("redis-cli", "redis-tools"),
    ]);
    let pg_bin = postgres_bin().expect(
        "no /usr/lib/postgresql/*/bin/postgres: apt-get install postgresql (.ci/run installs it)",
    );
    let c = Company::new("fwdb");
    add_local(
        &c.laptop,
        "[forward.pg]\nlisten = \"127.0.0.1:15432\"\nservice = \"postgres.company\"\n\
         [forward.redis]\nlisten = \"127.0.0.1:16379\"\nservice = \"redis.company\"\n",
    );
    let (_cm, web, _lap) = c.start_synced(
        "",
        "",
        "[service.postgres]\nmachine = \"web01\"\nprotocol = \"tcp\"\nport = 5432\nallow_from = \"devs\"\n\
         [service.redis]\nmachine = \"web01\"\nprotocol = \"tcp\"\nport = 6379\nallow_from = \"devs\"\n\
         [group.devs]\nmembers = \"laptop\"\n",
    );
    let _pg = start_postgres(&c.web01, &pg_bin, 5432);
    let redis_dir = tempfile::tempdir().unwrap();
    let mut redis = ns_cmd(
        &c.web01,
        &["redis-server", "--bind", "127.0.0.1", "--port", "6379"],
    );
    redis
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(redis_dir.path());
    let _redis = Proc::spawn(redis, &redis_dir.path().join("redis.log"));
    wait_port(&c.web01, 6379);

    // Neither server is reachable from the laptop except through malai.
    let direct = ns_run(
        &c.laptop,
        &[
            "psql",
            "-X",
            "-h",
            &c.web01.addr.to_string(),
            "-U",
            "postgres",
            "-c",
            "select 1",
        ],
    );
    assert!(
        !direct.status.success(),
        "postgres listens on web01's loopback only"
    );

    let psql = |sql: &str| {
        let out = ns_cmd(&c.laptop, &["psql", "-X", "-v", "ON_ERROR_STOP=1", "-tA"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                "15432",
                "-U",
                "postgres",
                "-c",
                sql,
            ])
            .env("PGCONNECT_TIMEOUT", "20")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text(&out).trim().to_owned()
    };
    psql("create table t (id int primary key, name text)");
    psql("insert into t select g, 'row ' || g from generate_series(1, 5000) g");
    assert_eq!(psql("select count(*), max(name) from t"), "5000|row 999");
    // The server saw the connection come from its own loopback.
    assert_eq!(psql("select inet_client_addr()"), "127.0.0.1");

    let cli = |args: &[&str]| {
        let out = ns_cmd(&c.laptop, &["redis-cli", "-h", "127.0.0.1", "-p", "16379"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text(&out).trim().to_owned()
    };
    assert_eq!(cli(&["SET", "greeting", "hello through malai"]), "OK");
    assert_eq!(cli(&["GET", "greeting"]), "hello through malai");
    // A value of 4 MiB each way (-x: the value from stdin).
    let big = "x".repeat(4 << 20);
    let mut set = ns_cmd(
        &c.laptop,
        &[
            "redis-cli",
            "-h",
            "127.0.0.1",
            "-p",
            "16379",
            "-x",
            "SET",
            "big",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    set.stdin.take().unwrap().write_all(big.as_bytes()).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&set.wait_with_output().unwrap().stdout).trim(),
        "OK"
    );
    assert_eq!(cli(&["STRLEN", "big"]), (4 << 20).to_string());
    assert_eq!(cli(&["GET", "big"]).len(), 4 << 20);

    wait_log(
        &web,
        &[
            "allowed",
            "malai_service=\"postgres\"",
            &format!("malai_peer={}", c.laptop_id),
        ],
    );
    wait_log(
        &web,
        &[
            "allowed",
            "malai_service=\"redis\"",
            &format!("malai_peer={}", c.laptop_id),
        ],
    );

    // `malai forward open`: the same service on a port of the user's
    // choosing, in the foreground, until Ctrl-C; then the port is free.
    let mut open = Proc {
        child: c
            .laptop
            .malai(&[
                "forward",
                "open",
                "postgres.company",
                "--listen",
                "127.0.0.1:25432",
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    };
    let mut said = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(open.child.stderr.take().unwrap()),
        &mut said,
    )
    .unwrap();
    assert!(
        said.contains("forwarding 127.0.0.1:25432 to postgres.company (on web01)"),
        "{said}"
    );
    let through_open = ns_cmd(
        &c.laptop,
        &["psql", "-X", "-tA", "-h", "127.0.0.1", "-p", "25432"],
    )
    .args(["-U", "postgres", "-c", "select count(*) from t"])
    .stdin(Stdio::null())
    .output()
    .unwrap();
    assert_eq!(
        text(&through_open).trim(),
        "5000",
        "{}",
        String::from_utf8_lossy(&through_open.stderr)
    );
    // Another local user cannot use this user's forward (its identity).
    let nobody = ns_cmd(
        &c.laptop,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
    )
    .args([
        "psql",
        "-X",
        "-tA",
        "-h",
        "127.0.0.1",
        "-p",
        "25432",
        "-U",
        "postgres",
        "-c",
        "select 1",
    ])
    .env("PGCONNECT_TIMEOUT", "10")
    .stdin(Stdio::null())
    .output()
    .unwrap();
    assert!(
        !nobody.status.success(),
        "uid 65534 got through: {}",
        text(&nobody)
    );
    let why = String::from_utf8_lossy(&nobody.stderr);
    assert!(
        why.contains("closed the connection"),
        "refused by malai, not by psql: {why}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(open.child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert_eq!(open.child.wait().unwrap().code(), Some(0));
    in_ns(&c.laptop.ns, || {
        TcpListener::bind("127.0.0.1:25432").expect("the port is free again")
    });
}

// ---------------------------------------------------------------------------
// HTTP.

/// The ports of a `Web` company, all on 127.0.0.1, picked free.
struct Ports {
    /// The laptop's HTTP-by-name listener (`{lap_http}` in `laptop_local`).
    lap_http: u16,
    /// The CM's (`{cm_http}` in `cm_local`).
    cm_http: u16,
    /// The tcp service `db` on web01 (nothing listens unless a test does).
    db: u16,
}

/// A Company on loopback whose web01 runs the echoing web server (on a
/// free port) as the http services `admin` (laptop, headers injected) and
/// `plain` (laptop, inject_headers = false); `laptop_local` and `cm_local`
/// go into their malai.toml before the daemons start, with `{lap_http}`,
/// `{cm_http}` and `{lap_forward}` (a port for a forward on the laptop)
/// replaced by free ports.
struct Web {
    c: Company,
    ports: Ports,
    cm: Daemon,
    web: Daemon,
    /// `None` once a test stopped it.
    lap: Option<Daemon>,
    _server: Proc,
    /// One JSON line per request the web server received.
    requests: PathBuf,
    _dir: tempfile::TempDir,
}

fn web_company(laptop_local: &str, cm_local: &str) -> Web {
    let c = Company::loopback();
    let [lap_http, cm_http, lap_forward, web, db] = free_tcp_ports();
    let ports = Ports {
        lap_http,
        cm_http,
        db,
    };
    let fill = |text: &str| {
        text.replace("{lap_http}", &lap_http.to_string())
            .replace("{cm_http}", &cm_http.to_string())
            .replace("{lap_forward}", &lap_forward.to_string())
    };
    add_local(&c.laptop, &fill(laptop_local));
    add_local(&c.cm, &fill(cm_local));
    let (cm, web_daemon, lap) = c.start_synced(
        "",
        "",
        &format!(
            "[service.admin]\nmachine = \"web01\"\nprotocol = \"http\"\nport = {web}\nallow_from = \"laptop\"\n\
             [service.plain]\nmachine = \"web01\"\nprotocol = \"http\"\nport = {web}\nallow_from = \"laptop\"\ninject_headers = false\n\
             [service.db]\nmachine = \"web01\"\nprotocol = \"tcp\"\nport = {db}\nallow_from = \"laptop\"\n"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let requests = dir.path().join("requests.jsonl");
    let mut cmd = ns_cmd(&c.web01, &["python3"]);
    cmd.arg(fixture("echo_headers.py"))
        .arg(web.to_string())
        .arg(&requests);
    let server = Proc::spawn(cmd, &dir.path().join("server.log"));
    wait_port(&c.web01, web);
    Web {
        c,
        ports,
        cm,
        web: web_daemon,
        lap: Some(lap),
        _server: server,
        requests,
        _dir: dir,
    }
}

impl Web {
    /// The requests the web server received, oldest first.
    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.requests)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// The values of header `name` (any case) in a recorded request.
fn header<'a>(req: &'a serde_json::Value, name: &str) -> Vec<&'a str> {
    req["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
        .map(|h| h[1].as_str().unwrap())
        .collect()
}

fn curl(host: &Host, args: &[&str]) -> Output {
    ns_cmd(host, &["curl", "-sS", "--max-time", "30"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Opens a WebSocket to `admin` through the laptop's HTTP listener on
/// `port`, with
/// these `Connection` and `Upgrade` values, and checks that after the 101
/// the connection carries bytes both ways (the web server echoes them).
fn websocket_echoes(laptop: &Host, port: u16, connection: &str, upgrade: &str) {
    let mut s = connect(laptop, port);
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: admin.company.localhost:{port}\r\nConnection: {connection}\r\n\
         Upgrade: {upgrade}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for msg in [&b"hello over the upgrade"[..], b"and again"] {
        s.write_all(msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    }
}

const LAPTOP_HTTP: &str = "[http]\nlisten = \"127.0.0.1:{lap_http}\"\n";
const CM_HTTP: &str = "[http]\nlisten = \"127.0.0.1:{cm_http}\"\n";

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario, step by step, with its assertions"
)]
fn http_by_name_gives_the_application_the_peers_identity_and_only_that() {
    require_tools(&[("curl", "curl"), ("python3", "python3")]);
    let w = web_company(LAPTOP_HTTP, CM_HTTP);
    let c = &w.c;
    let (http, cm_http) = (w.ports.lap_http, w.ports.cm_http);

    // A forged identity header (in two spellings) does not reach the
    // application; the real one does.
    let out = curl(
        &c.laptop,
        &[
            "-H",
            "malai-client-id52: forged",
            "-H",
            "Malai_Client_Machine: forged",
            &format!("http://admin.company.localhost:{http}/hello"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = text(&out);
    assert!(page.contains("<title>malai admin</title>"), "{page}");
    let reqs = w.requests();
    let req = reqs.last().expect("the server saw the request");
    assert_eq!(req["path"], "/hello");
    assert_eq!(header(req, "malai-client-id52"), [c.laptop_id.as_str()]);
    assert_eq!(header(req, "malai-client-machine"), ["laptop"]);
    assert_eq!(header(req, "malai-client-cluster"), ["company"]);
    assert_eq!(
        header(req, "host"),
        [format!("admin.company.localhost:{http}")]
    );
    assert!(!req.to_string().contains("forged"), "{req}");

    // inject_headers = false: nothing of ours, and still no forgery.
    let out = curl(
        &c.laptop,
        &[
            "-H",
            "malai-client-id52: forged",
            &format!("http://plain.company.localhost:{http}/"),
        ],
    );
    assert!(out.status.success());
    let reqs = w.requests();
    let req = reqs.last().unwrap();
    assert!(header(req, "malai-client-id52").is_empty(), "{req}");
    assert!(!req.to_string().contains("forged"), "{req}");

    // Keep-alive: two requests on one connection of curl reach the
    // application on one connection too, each with the headers.
    let before = w.requests().len();
    let out = curl(
        &c.laptop,
        &[
            "-v",
            &format!("http://admin.company.localhost:{http}/one"),
            &format!("http://admin.company.localhost:{http}/two"),
        ],
    );
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Re-using existing connection"), "{err}");
    let reqs = w.requests();
    let (one, two) = (&reqs[before], &reqs[before + 1]);
    assert_eq!(
        (one["path"].as_str(), two["path"].as_str()),
        (Some("/one"), Some("/two"))
    );
    assert_eq!(
        one["client_port"], two["client_port"],
        "one upstream connection"
    );
    assert_eq!(header(two, "malai-client-id52"), [c.laptop_id.as_str()]);

    // A chunked upload of 1 MiB comes back whole.
    let dir = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("body"), &body).unwrap();
    let out = curl(
        &c.laptop,
        &[
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &format!("@{}", dir.path().join("body").display()),
            &format!("http://admin.company.localhost:{http}/upload"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == body,
        "the echoed body differs ({} bytes)",
        out.stdout.len()
    );

    // A WebSocket upgrade: after 101 the connection carries bytes both ways.
    websocket_echoes(&c.laptop, http, "Upgrade", "websocket");

    // Names that route nowhere get the list of what this device may reach.
    let out = curl(
        &c.laptop,
        &[
            "-w",
            "\n%{http_code}",
            &format!("http://nope.company.localhost:{http}/"),
        ],
    );
    let page = text(&out);
    assert!(page.ends_with("\n404"), "{page}");
    assert!(page.contains("nope.company"), "{page}");
    assert!(
        page.contains(&format!("href=\"http://admin.company.localhost:{http}/\"")),
        "{page}"
    );
    assert!(
        !page.contains("db.company"),
        "a tcp service is not listed: {page}"
    );
    let out = curl(
        &c.laptop,
        &["-w", "\n%{http_code}", &format!("http://localhost:{http}/")],
    );
    let page = text(&out);
    assert!(page.ends_with("\n200"), "{page}");
    assert!(page.contains("plain.company"), "{page}");

    // The CM is outside allow_from: 403 for it, and web01 logs its id52.
    let out = curl(
        &c.cm,
        &[
            "-w",
            "\n%{http_code}",
            &format!("http://admin.company.localhost:{cm_http}/"),
        ],
    );
    let page = text(&out);
    assert!(page.ends_with("\n403"), "{page}");
    assert!(!page.contains("malai admin"), "{page}");
    let denied = wait_log(&w.web, &["denied", &format!("malai_peer={}", c.cm_id)]);
    assert!(denied.contains("malai_service=\"admin\""), "{denied}");
    wait_log(&w.cm, &["http: admin.company refused", "denied"]);
    let _ = &w.lap;
}

/// The recorded request for `path`, which the application must have seen.
fn request_for(w: &Web, path: &str) -> serde_json::Value {
    w.requests()
        .into_iter()
        .find(|r| r["path"] == path)
        .unwrap_or_else(|| panic!("the application saw no request for {path}"))
}

#[test]
fn a_connection_header_naming_ours_does_not_remove_the_identity() {
    require_tools(&[("curl", "curl"), ("python3", "python3")]);
    let w = web_company(LAPTOP_HTTP, "");
    let c = &w.c;
    let http = w.ports.lap_http;
    // Each attack names our headers in `Connection:` (which asks the proxy
    // to drop what it names), in any spelling, in one or two lines, beside
    // a forged value.
    let attacks: [&[&str]; 4] = [
        &["-H", "Connection: malai-client-id52"],
        &[
            "-H",
            "Connection: close, MALAI-Client-Id52",
            "-H",
            "malai-client-id52: forged",
        ],
        &[
            "-H",
            "Connection: Malai_Client_Id52, malai-client-machine,malai-client-cluster",
            "-H",
            "Malai_Client_Id52: forged",
        ],
        &[
            "-H",
            "Connection: keep-alive",
            "-H",
            "Connection: malai-client-id52",
            "-H",
            "MALAI-CLIENT-ID52: forged",
        ],
    ];
    for (i, attack) in attacks.iter().enumerate() {
        let path = format!("/conn{i}");
        let url = format!("http://admin.company.localhost:{http}{path}");
        let out = curl(&c.laptop, &[attack, &[url.as_str()][..]].concat());
        assert!(
            out.status.success(),
            "{attack:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let req = request_for(&w, &path);
        assert_eq!(
            header(&req, "malai-client-id52"),
            [c.laptop_id.as_str()],
            "{attack:?}: {req}"
        );
        assert_eq!(header(&req, "malai-client-machine"), ["laptop"], "{req}");
        assert_eq!(header(&req, "malai-client-cluster"), ["company"], "{req}");
        assert!(!req.to_string().contains("forged"), "{req}");
        assert!(
            header(&req, "connection").is_empty(),
            "Connection is hop-by-hop: {req}"
        );
    }
    let _ = (&w.cm, &w.web, &w.lap);
}

/// A page of another site, open in a browser on the laptop, cannot make
/// that browser act on a service through the HTTP listener (CSRF, DNS
/// rebinding): an unsafe request it sends is refused before the service
/// sees it; the same device's pages and plain reads pass.
#[test]
fn a_page_of_another_site_cannot_make_the_browser_act_through_the_listener() {
    require_tools(&[("curl", "curl"), ("python3", "python3")]);
    let w = web_company(LAPTOP_HTTP, "");
    let c = &w.c;
    let http = w.ports.lap_http;
    let url = |path: &str| format!("http://admin.company.localhost:{http}{path}");
    let status = |args: &[&str]| {
        let out = curl(
            &c.laptop,
            &[&["-o", "/dev/null", "-w", "%{http_code}"][..], args].concat(),
        );
        text(&out)
    };
    let here = format!("Origin: http://admin.company.localhost:{http}");
    let cases: [(&[&str], &str, &str); 5] = [
        (
            &[
                "-X",
                "POST",
                "-H",
                "Origin: https://evil.example",
                "-d",
                "x",
            ],
            "/evil-origin",
            "403",
        ),
        (
            &["-X", "DELETE", "-H", "Sec-Fetch-Site: cross-site"],
            "/evil-fetch-site",
            "403",
        ),
        (
            &["-X", "POST", "-H", "Origin: null", "-d", "x"],
            "/evil-null",
            "403",
        ),
        (
            &["-X", "POST", "-H", &here, "-d", "x"],
            "/same-device",
            "200",
        ),
        (&["-H", "Origin: https://evil.example"], "/a-read", "200"),
    ];
    for (args, path, want) in cases {
        let got = status(&[args, &[url(path).as_str()][..]].concat());
        assert_eq!(got, want, "{args:?} {path}");
    }
    let seen: Vec<String> = w
        .requests()
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_owned())
        .collect();
    assert!(!seen.iter().any(|p| p.starts_with("/evil")), "{seen:?}");
    assert!(seen.contains(&"/same-device".to_owned()) && seen.contains(&"/a-read".to_owned()));
    let _ = (&w.cm, &w.web, &w.lap);
}

#[test]
fn only_a_websocket_upgrade_switches_protocols() {
    require_tools(&[("curl", "curl"), ("python3", "python3")]);
    let w = web_company(LAPTOP_HTTP, "");
    let c = &w.c;
    let http = w.ports.lap_http;
    let url = |path: &str| format!("http://admin.company.localhost:{http}{path}");
    // The service would switch to anything; the proxy offers it WebSocket
    // only. Others reach it as plain requests, answered as such, and the
    // connection stays HTTP (no raw pipe, where requests would pass
    // without our headers): two requests on one curl connection each
    // reach the application with the peer's identity.
    let h2c: &[&str] = &["--http2"]; // curl's own h2c upgrade on http://
    let h2c_by_hand: &[&str] = &["-H", "Upgrade: h2c", "-H", "Connection: Upgrade"];
    let foo: &[&str] = &[
        "-H",
        "Upgrade: foo, WebSocketish",
        "-H",
        "Connection: upgrade",
    ];
    for (i, attack) in [h2c, h2c_by_hand, foo].iter().enumerate() {
        let (one, two) = (format!("/up{i}a"), format!("/up{i}b"));
        let (url_one, url_two) = (url(&one), url(&two));
        let args = [
            *attack,
            &[
                "-H",
                "malai-client-id52: forged",
                "-o",
                "/dev/null",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version} %{num_connects}\n",
                &url_one,
                &url_two,
            ],
        ]
        .concat();
        let out = curl(&c.laptop, &args);
        assert!(
            out.status.success(),
            "{attack:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(text(&out), "200 1.1 1\n200 1.1 0\n", "{attack:?}");
        for path in [&one, &two] {
            let req = request_for(&w, path);
            assert_eq!(header(&req, "malai-client-id52"), [c.laptop_id.as_str()]);
            for hop in ["upgrade", "connection", "http2-settings"] {
                assert!(header(&req, hop).is_empty(), "{attack:?}: {req}");
            }
        }
    }

    // WebSocket as Firefox asks for it still switches.
    websocket_echoes(&c.laptop, http, "keep-alive, Upgrade", "WebSocket");

    // A service that answers 101 to a request that did not ask for
    // WebSocket gets no pipe either: the client gets 502.
    let out = curl(&c.laptop, &["-w", "\n%{http_code}", &url("/switch")]);
    assert!(text(&out).ends_with("\n502"), "{}", text(&out));
    let _ = (&w.cm, &w.web, &w.lap);
}

/// A web server on a free port of 127.0.0.1 of `host` that answers the
/// first request of each connection with `conn N` (N counts connections)
/// and closes the connection when the next request arrives, unanswered, as
/// a server dropping an idle keep-alive connection just then does. Returns
/// its port and the count of connections it accepted.
fn dropping_server(host: &Host) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = in_ns(&host.ns, || TcpListener::bind("127.0.0.1:0").unwrap());
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            std::thread::spawn(move || {
                let read_head = |conn: &mut TcpStream| {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match conn.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return false,
                        }
                    }
                    true
                };
                if !read_head(&mut conn) {
                    return;
                }
                let body = format!("conn {n}");
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                read_head(&mut conn);
                // Dropped here: closed under the second request.
            });
        }
    });
    (port, accepted)
}

#[test]
fn a_request_the_service_closed_its_connection_under_is_sent_again_only_when_safe() {
    require_tools(&[("curl", "curl")]);
    let c = Company::loopback();
    let [http] = free_tcp_ports();
    add_local(
        &c.laptop,
        &LAPTOP_HTTP.replace("{lap_http}", &http.to_string()),
    );
    let (port, accepted) = dropping_server(&c.web01);
    let (_cm, _web, _lap) = c.start_synced(
        "",
        "",
        &format!("[service.flaky]\nmachine = \"web01\"\nprotocol = \"http\"\nport = {port}\nallow_from = \"laptop\"\n"),
    );
    // One curl, one connection to the listener, so one upstream connection
    // at a time on web01: GET /a on the first; GET /b, closed under, sent
    // again on a second; a POST with a body, closed under, is not sent twice.
    let url = |path: &str| format!("http://flaky.company.localhost:{http}{path}");
    let out = curl(
        &c.laptop,
        &[
            "-w",
            "|%{http_code}\n",
            &url("/a"),
            &url("/b"),
            "--next",
            "-w",
            "|%{http_code}\n",
            "-d",
            "x=1",
            &url("/c"),
        ],
    );
    let text = text(&out);
    assert!(
        text.starts_with("conn 1|200\nconn 2|200\n"),
        "GET /b sent again on a new connection: {text}"
    );
    assert!(text.ends_with("|502\n"), "the POST is not replayed: {text}");
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "no third connection: the POST was sent once"
    );
}

/// Headless Chromium as Debian ships it, with what it would fetch on its
/// own turned off, and a profile of its own.
fn chromium(host: &Host, profile: &Path, args: &[&str]) -> Output {
    ns_cmd(host, &["chromium"])
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn headless_chromium_loads_a_page_through_the_http_listener() {
    require_tools(&[("chromium", "chromium"), ("python3", "python3")]);
    let w = web_company(LAPTOP_HTTP, "");
    let c = &w.c;
    let url = format!(
        "http://admin.company.localhost:{}/from-chromium",
        w.ports.lap_http
    );
    let url = url.as_str();
    let profile = tempfile::tempdir().unwrap();
    let out = chromium(&c.laptop, profile.path(), &["--dump-dom", url]);
    let dom = text(&out);
    assert!(
        dom.contains("<title>malai admin</title>"),
        "chromium's DOM:\n{dom}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The page shows the headers the application received: ours among them.
    assert!(dom.contains(&c.laptop_id), "{dom}");

    let shot = artifacts().join("forward-chromium-admin.png");
    let _ = std::fs::remove_file(&shot);
    let out = chromium(
        &c.laptop,
        profile.path(),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1024,640",
            url,
        ],
    );
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}); stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let reqs = w.requests();
    let browser = reqs
        .iter()
        .find(|r| r["path"] == "/from-chromium")
        .expect("the application saw chromium's request");
    assert_eq!(header(browser, "malai-client-id52"), [c.laptop_id.as_str()]);
    assert!(
        header(browser, "user-agent")[0].contains("Chrome"),
        "{browser}"
    );
    let _ = (&w.cm, &w.web, &w.lap);
}

#[test]
fn the_http_listener_and_a_forward_work_on_the_sockets_systemd_passes() {
    require_tools(&[
        ("curl", "curl"),
        ("python3", "python3"),
        ("systemd-socket-activate", "systemd"),
    ]);
    // No [http] in the laptop's malai.toml: the socket alone enables it.
    // The forward's own address is not where systemd listens, so only an
    // adopted socket can answer on the address systemd listens on.
    let mut w = web_company(
        "[forward.db]\nlisten = \"127.0.0.1:{lap_forward}\"\nservice = \"db.company\"\n",
        "",
    );
    let [http, db] = free_tcp_ports();
    let (http_addr, db_addr) = (format!("127.0.0.1:{http}"), format!("127.0.0.1:{db}"));
    assert!(w.lap.take().unwrap().stop().success());
    let c = &w.c;

    let dir = c.laptop.home.path();
    let notify_path = dir.join("notify-activate.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    let log = dir.join("activated.log");
    let mut cmd = ns_cmd(
        &c.laptop,
        &[
            "systemd-socket-activate",
            "-l",
            &http_addr,
            "-l",
            &db_addr,
            "--fdname=http:db",
        ],
    );
    cmd.arg(format!("--setenv=MALAI_HOME={}", dir.display()))
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
        .arg("--setenv=MALAI_DBUS_ADDRESS=disabled")
        .args([common::malai_bin(), "daemon"]);
    let _daemon = Proc::spawn(cmd, &log);
    wait_port(&c.laptop, http);

    // The first connection starts the daemon, which takes the socket and
    // answers it.
    let out = curl(
        &c.laptop,
        &[&format!("http://admin.company.localhost:{http}/activated")],
    );
    assert!(
        text(&out).contains("<title>malai admin</title>"),
        "{}\n{}\nlog:\n{}",
        text(&out),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    common::read_notify_until(&notify, "READY=1");
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains(&format!("http listener on {http_addr} (from systemd)")),
        "{log_text}"
    );
    assert!(
        !log_text.contains("closing it"),
        "the socket was claimed: {log_text}"
    );
    let reqs = w.requests();
    let req = reqs.iter().find(|r| r["path"] == "/activated").unwrap();
    assert_eq!(header(req, "malai-client-id52"), [c.laptop_id.as_str()]);

    // The forward took the socket named after it.
    assert!(
        log_text.contains(&format!(
            "forward db: {db_addr} (from systemd) -> db.company"
        )),
        "{log_text}"
    );
    banner_server(&c.web01, w.ports.db, b"db here\n");
    let mut s = connect(&c.laptop, db);
    let mut got = [0u8; 8];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"db here\n");
    let _ = (&w.cm, &w.web);
}

// ---------------------------------------------------------------------------
// forward list.

#[test]
fn forward_list_says_what_goes_where_from_the_files() {
    let home = TestHome::new();
    let cm = home.init_loopback_cluster("company")["id52"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = home.cluster_dir("company").join("cluster.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!(
            "{text}\n[machine.cm]\nid52 = \"{cm}\"\n\
             [service.postgres]\nmachine = \"cm\"\nprotocol = \"tcp\"\nport = 5432\nallow_from = \"cm\"\n\
             [service.admin]\nmachine = \"cm\"\nprotocol = \"http\"\nport = 8080\nallow_from = \"cm\"\n\
             [service.hidden]\nmachine = \"cm\"\nprotocol = \"http\"\nport = 8081\n"
        ),
    )
    .unwrap();
    let local = home.path().join("malai.toml");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&local)
        .unwrap();
    writeln!(
        f,
        "[http]\nlisten = \"127.0.0.1:8088\"\n\
         [forward.pg]\nlisten = \"127.0.0.1:15432\"\nservice = \"postgres.company\"\n\
         [forward.gone]\nlisten = \"127.0.0.1:15433\"\nservice = \"nosuch.company\""
    )
    .unwrap();

    let v = home.json(&["forward", "list", "--json"]);
    let forwards = v["forwards"].as_array().unwrap();
    let pg = forwards.iter().find(|f| f["name"] == "pg").unwrap();
    assert_eq!(pg["listen"], "127.0.0.1:15432");
    assert_eq!(pg["service"], "postgres.company");
    assert_eq!(pg["machine"], "cm");
    assert_eq!(pg["protocol"], "tcp");
    assert!(pg.get("problem").is_none(), "{pg}");
    let gone = forwards.iter().find(|f| f["name"] == "gone").unwrap();
    assert!(
        gone["problem"]
            .as_str()
            .unwrap()
            .contains("no service \"nosuch\""),
        "{gone}"
    );
    assert_eq!(v["http"]["listen"], "127.0.0.1:8088");
    let http = v["http"]["services"].as_array().unwrap();
    assert_eq!(
        http.len(),
        1,
        "only the http services this device may reach: {http:?}"
    );
    assert_eq!(http[0]["service"], "admin.company");
    assert_eq!(http[0]["url"], "http://admin.company.localhost:8088/");

    let human = home.ok(&["forward", "list"]);
    assert!(
        human.contains("pg: 127.0.0.1:15432 -> postgres.company on cm (tcp)"),
        "{human}"
    );
    assert!(human.contains("http: 127.0.0.1:8088"), "{human}");

    // A forward to a cluster this device is not in is a config error.
    writeln!(
        f,
        "[forward.x]\nlisten = \"127.0.0.1:1\"\nservice = \"a.elsewhere\""
    )
    .unwrap();
    let out = home.run(&["forward", "list"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        common::stderr(&out).contains("no cluster \"elsewhere\""),
        "{}",
        common::stderr(&out)
    );
}
