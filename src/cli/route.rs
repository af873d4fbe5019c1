//! The one place that decides how a verb reaches its target: a `Route`,
//! made once per CLI process, holds the local daemon found on D-Bus
//! (MALAI_DBUS_ADDRESS alone when set; else the session bus, then the
//! system bus) and goes through it when it serves the cluster, or directly
//! with the keys in MALAI_HOME otherwise. Rescan falls back to SIGHUP for a
//! daemon that is not on a bus.

use std::os::fd::AsFd;

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cluster::EditError;
use crate::command::spawn::StdioMode;
use crate::dbus::client;
use crate::exec::ExecError;
use crate::exit::{EXEC_FAILED, Failure, USAGE};
use crate::fanout;
use crate::home::Home;
use crate::p2p::{self, EXEC_ALPN};
use crate::status::Status;
use crate::sync::proto::{ConfigRequest, DownloadAnswer, Downloaded, UploadAnswer, Uploaded};
use crate::target::{self, Invocation};

/// The options of a remote command (`malai [OPTIONS] TARGET CMD`).
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    pub verbose: u8,
    /// `-t` given this many times: 1 asks for a PTY when stdin is a
    /// terminal, 2 always (ssh's -t and -tt).
    pub tty: u8,
    pub fan: fanout::Options,
    /// Whether any fan-out option was given (an error for one machine).
    pub fan_given: bool,
    /// `-l USER`, `-s`: for one machine, sent directly.
    pub ssh: SshAsk,
}

pub use crate::exec::proto::SshAsk;

impl SshAsk {
    /// The ssh-style options of `flags` and a `USER@` on the target word:
    /// the words with the target bare (and, for `-s`, the subsystem's name
    /// replaced by what an older host fails to run), and what to ask.
    pub fn from_flags(
        flags: &super::SshFlags,
        mut words: Vec<String>,
    ) -> Result<(Vec<String>, SshAsk), Failure> {
        use crate::ssh_compat::{self, SshOption};
        if flags.print_config {
            return Err(Failure::new(
                EXEC_FAILED,
                "-G: malai has no ssh configuration to print (so tools treat it as a simple ssh)",
            ));
        }
        let mut users = Vec::new();
        users.extend(flags.login.clone());
        for option in &flags.options {
            match ssh_compat::option(option).map_err(Failure::usage)? {
                SshOption::Ignored => {}
                SshOption::User(user) => users.push(user),
            }
        }
        if let Some(first) = words.first_mut()
            && let (Some(user), target) = ssh_compat::user_and_target(first)
        {
            users.push(user.to_owned());
            *first = target.to_owned();
        }
        users.dedup();
        if users.len() > 1 {
            return Err(Failure::usage(format!(
                "two users asked for ({}): give one of -l, -o User= and USER@",
                users.join(", ")
            )));
        }
        let mut ask = SshAsk {
            user: users.pop(),
            subsystem: None,
        };
        if flags.subsystem {
            let at = usize::from(words.get(1).is_some_and(|w| w == "--")) + 1;
            let [name] = words.get(at..).unwrap_or_default() else {
                return Err(Failure::usage(
                    "-s: give the subsystem's name (sftp) as the only word after the target",
                ));
            };
            ask.subsystem = Some(name.clone());
            words.truncate(at);
            words.push(crate::exec::proto::OLD_HOST_SUBSYSTEM_ARGV.to_owned());
        }
        Ok((words, ask))
    }
}

/// How `malai rescan` reached the daemon.
pub enum RescanRoute {
    /// The daemon rescanned over D-Bus (on the bus named) and reported
    /// what it could not apply.
    Bus(String, Vec<String>),
    /// The running daemon was asked to rescan (SIGHUP).
    Daemon(i32),
    /// No daemon: the caller applies to the files itself.
    Files,
}

/// Whether a daemon serving another MALAI_HOME will do for reading status:
/// only when the user did not name a MALAI_HOME (a member of the group
/// malai then sees the system service's clusters).
fn any_home() -> bool {
    std::env::var_os("MALAI_HOME").is_none_or(|v| v.is_empty())
}

/// How this CLI process reaches daemons and peers: the daemon found on a
/// bus once, at the start (or none), with the reasons each bus was passed
/// over; every verb goes through it when it serves the cluster and
/// directly otherwise.
pub struct Route<'h> {
    home: &'h Home,
    rt: &'static tokio::runtime::Runtime,
    /// The first daemon that answered: one serving this MALAI_HOME, or any
    /// when the user named none (`any_home`).
    daemon: Option<client::Found>,
    /// Whether the buses were asked for `daemon` yet.
    looked_up: bool,
    /// Why a bus or a daemon was passed over, for `-v` and for errors.
    skipped: Vec<String>,
}

impl<'h> Route<'h> {
    /// Looks for the daemon on the buses (once per process).
    pub fn find(home: &'h Home) -> anyhow::Result<Route<'h>> {
        let mut route = Route::for_exec(home)?;
        route.look_up();
        Ok(route)
    }

    /// A route for a remote command, which asks no bus for the daemon's
    /// home first: its `ExecIn` call names the home the daemon must serve.
    pub fn for_exec(home: &'h Home) -> anyhow::Result<Route<'h>> {
        Ok(Route {
            home,
            rt: super::runtime()?,
            daemon: None,
            looked_up: false,
            skipped: Vec::new(),
        })
    }

    /// Asks the buses for the daemon, once.
    fn look_up(&mut self) {
        if !std::mem::replace(&mut self.looked_up, true) {
            let found = client::find(&self.home.root, any_home(), &mut self.skipped);
            self.daemon = self.rt.block_on(found);
        }
    }

    /// The daemon's view when a daemon answers on a bus, the files'
    /// otherwise.
    pub fn status(&self) -> anyhow::Result<Status> {
        let from_daemon = self.rt.block_on(async {
            let json = self.daemon.as_ref()?.proxy.status().await.ok()?;
            serde_json::from_str::<Status>(&json).ok()
        });
        match from_daemon {
            Some(status) => Ok(status),
            None => crate::status::from_files(self.home),
        }
    }

    /// Asks the daemon of this MALAI_HOME (never another's) to rescan: over
    /// D-Bus when it is on a bus (and waits for the result), by SIGHUP
    /// otherwise.
    pub fn rescan(&self) -> anyhow::Result<RescanRoute> {
        let home = self.home;
        let over_bus = self.rt.block_on(async {
            let other;
            let found = match &self.daemon {
                Some(found) if client::same_path(&home.root, found.home.as_ref()) => found,
                _ => match client::find(&home.root, false, &mut Vec::new()).await {
                    Some(found) => {
                        other = found;
                        &other
                    }
                    None => return Ok(None),
                },
            };
            match found.proxy.rescan().await {
                Ok(problems) => Ok(Some(RescanRoute::Bus(found.bus.to_string(), problems))),
                Err(crate::dbus::Error::AccessDenied(why)) => Err(anyhow::Error::new(
                    Failure::new(crate::exit::DENIED, format!("the daemon refused: {why}")),
                )),
                Err(e) => Err(anyhow::Error::new(e)
                    .context(format!("asking the daemon on {} to rescan", found.bus))),
            }
        });
        if let Some(route) = over_bus? {
            return Ok(route);
        }
        match crate::daemon::lock::running_daemon(home) {
            Some(pid) => {
                kill(Pid::from_raw(pid), Signal::SIGHUP)
                    .with_context(|| format!("signalling the daemon (pid {pid})"))?;
                Ok(RescanRoute::Daemon(pid))
            }
            None => Ok(RescanRoute::Files),
        }
    }
}

impl Route<'_> {
    /// Runs a remote command, on one machine or many (`fan`: the fan-out
    /// options, and whether the user gave any); returns the exit code to
    /// end with.
    pub fn exec(&mut self, words: &[String], opts: &RemoteOptions) -> anyhow::Result<u8> {
        let RemoteOptions {
            verbose,
            tty,
            ref fan,
            fan_given,
            ref ssh,
        } = *opts;
        let asks = *ssh != SshAsk::default();
        let home = self.home;
        let local = home
            .local_config()
            .map_err(|d| Failure::new(EXEC_FAILED, format!("malai.toml is invalid:\n{d}")))?;
        let inv = match target::resolve_any(&local, words).map_err(Failure::usage)? {
            target::Resolved::Many(..) if tty > 0 => {
                return Err(Failure::usage("-t (a PTY) is for one machine").into());
            }
            target::Resolved::Many(..) if asks => {
                return Err(Failure::usage("-l, USER@ and -s are for one machine").into());
            }
            target::Resolved::Many(selection, argv) => {
                return self.fan_out(&local, &selection, argv, fan, verbose);
            }
            target::Resolved::One(_) if fan_given => {
                return Err(Failure::usage(
                    "-j, --timeout and --json are for many machines (web01,web02.company, @all.company, @GROUP.company); one machine keeps ssh's habits",
                )
                .into());
            }
            target::Resolved::One(inv) => inv,
        };
        let rt = self.rt;
        if asks {
            // The daemon's Exec method takes no user or subsystem.
            self.skipped
                .push("-l, USER@ and -s go directly with this user's keys".into());
        }
        // What this process already read of its stdin, when a daemon was
        // asked and passed: the direct path goes on from that pipe.
        let mut stdin = None;
        if !asks {
            match rt.block_on(exec_over_bus(home, &inv, (verbose, tty), &mut self.skipped)) {
                OverBus::Done(result) => return result,
                OverBus::Passed(fed) => stdin = fed,
            }
        }
        if verbose > 0 {
            eprintln!(
                "malai: no daemon serving this MALAI_HOME answered on D-Bus ({}): going directly",
                self.skipped.join("; ")
            );
        }
        let Invocation { target, argv } = inv;
        let (cluster, config) = cluster_with_config(home, &target.cluster)?;
        let config = &config;
        let machine = machine_of(config, &target)?;
        if verbose > 0 && machine.id52 != cluster.identity.id52() {
            eprintln!(
                "malai: dialling {target} ({}) directly with this device's identity for {:?}",
                machine.id52, target.cluster
            );
        }
        let (id, addrs) = (machine.id52, machine.addrs.clone());
        let network = local.network.clone();
        let what = target.to_string();
        if id == cluster.identity.id52() {
            if asks {
                return Err(Failure::usage(format!(
                    "{target} is this device: -l, USER@ and -s are for other machines"
                ))
                .into());
            }
            if verbose > 0 {
                eprintln!("malai: {target} is this device: deciding and running here");
            }
            return exec_here(rt, config, &target, argv, stdin);
        }
        let relay = p2p::RelayChoice::resolve(&network, cluster.relay.as_ref());
        let reach = p2p::Reach {
            addrs,
            relay: relay.dial_via(),
        };
        rt.block_on(exec_direct(
            &cluster.identity,
            &network,
            &relay,
            (&id, &reach),
            argv,
            (&what, tty),
            ssh.clone(),
            stdin,
        ))
    }
}

impl Route<'_> {
    /// One command on the machines of `selection`: through the daemon when
    /// one serves the cluster, directly otherwise.
    fn fan_out(
        &mut self,
        local: &crate::config::LocalConfig,
        selection: &target::Selection,
        argv: Vec<String>,
        opts: &fanout::Options,
        verbose: u8,
    ) -> anyhow::Result<u8> {
        if argv.is_empty() {
            return Err(Failure::usage(format!(
                "{selection}: a command to run is needed (a shell is for one machine)"
            ))
            .into());
        }
        let (home, rt) = (self.home, self.rt);
        let sink = if opts.json {
            fanout::output::Sink::Keep
        } else {
            fanout::output::Sink::print()
        };
        let cluster = &selection.cluster;
        self.look_up();
        if let Some(found) = daemon_for(home, &self.daemon, &mut self.skipped, cluster)
            && let Some(proxy) = rt.block_on(cluster_object(found, cluster, &mut self.skipped))
        {
            if verbose > 0 {
                eprintln!(
                    "malai: running on {selection} through the daemon on {}",
                    found.bus
                );
            }
            let machines = rt
                .block_on(proxy.select(&selection.to_string(), &argv))
                .map_err(|e| Failure::new(EXEC_FAILED, format!("{selection}: {e}")))?;
            let outcomes = rt.block_on(fanout::bus::run(
                proxy, cluster, machines, argv, opts, &sink,
            ))?;
            return Ok(fanout::report(outcomes, opts));
        }
        if verbose > 0 {
            eprintln!(
                "malai: no daemon serves {cluster:?} here ({}): going directly",
                self.skipped.join("; ")
            );
        }
        let (dir, config) = cluster_with_config(home, cluster)?;
        let (plan, unknown) = fanout::direct::plan(&config, &dir.identity.id52(), selection, &argv)
            .map_err(|e| Failure::new(EXEC_FAILED, e))?;
        let outcomes = rt.block_on(async {
            let mut outcomes = fanout::direct::run(
                &dir,
                std::sync::Arc::new(config),
                &local.network,
                plan,
                argv,
                opts,
                &sink,
            )
            .await?;
            outcomes.extend(unknown);
            anyhow::Ok(outcomes)
        })?;
        Ok(fanout::report(outcomes, opts))
    }
}

/// Cluster `cluster` of `home` and the config it holds: an error (exit
/// 255) when it has none yet.
pub fn cluster_with_config(
    home: &Home,
    cluster: &str,
) -> Result<(crate::home::ClusterDir, crate::config::ClusterConfig), Failure> {
    let dir = home
        .load_cluster(cluster)
        .map_err(|d| Failure::new(EXEC_FAILED, d.to_string()))?;
    let config = dir.config.clone().ok_or_else(|| {
        Failure::new(
            EXEC_FAILED,
            format!("cluster {cluster:?} has no config yet: the cluster manager has not sent one"),
        )
    })?;
    Ok((dir, config))
}

/// Runs `argv` on this device itself, `target` in its own cluster: decided
/// by the same ACL, run with the caller's terminal (no daemon is asked).
fn exec_here(
    rt: &tokio::runtime::Runtime,
    config: &crate::config::ClusterConfig,
    target: &target::Target,
    argv: Vec<String>,
    stdin: Option<std::os::fd::OwnedFd>,
) -> anyhow::Result<u8> {
    // A pipe this process fed holds what it read of its stdin: the command
    // reads on from there (with this process's stdout and stderr).
    let stdio = match stdin {
        None => StdioMode::Inherit,
        Some(fed) => StdioMode::Fds([
            fed,
            std::io::stdout().as_fd().try_clone_to_owned()?,
            std::io::stderr().as_fd().try_clone_to_owned()?,
        ]),
    };
    let me = config
        .machines
        .get(&target.machine)
        .map(|m| m.id52)
        .ok_or_else(|| Failure::usage(format!("no machine {target}")))?;
    let caller = crate::exec::local::Caller {
        who: crate::audit::Who {
            cluster: &target.cluster,
            peer: &me,
            config_version: config.received_version.unwrap_or(0),
            uid: Some(nix::unistd::getuid().as_raw()),
            claimed: None,
            recording: None,
        },
        unprivileged_uid: None,
    };
    let result = rt.block_on(crate::exec::local::run(
        config,
        &caller,
        argv,
        &target.to_string(),
        stdio,
        crate::exec::client::process_env(),
        tokio::sync::mpsc::channel(1).1,
        // No daemon: nothing puts a new config in force meanwhile.
        std::future::pending(),
    ));
    Ok(result?)
}

/// The machine `target` names in `config`; a usage error listing the
/// machines when there is none.
fn machine_of<'c>(
    config: &'c crate::config::ClusterConfig,
    target: &target::Target,
) -> Result<&'c crate::config::Machine, Failure> {
    config.machines.get(&target.machine).ok_or_else(|| {
        let known: Vec<&str> = config.machines.keys().map(String::as_str).collect();
        Failure::new(
            if known.is_empty() { EXEC_FAILED } else { USAGE },
            format!(
                "no machine {:?} in cluster {:?} (machines: {})",
                target.machine,
                target.cluster,
                known.join(", ")
            ),
        )
    })
}

/// Dials `peer` from a fresh endpoint of `identity` and runs argv there;
/// its stdin is `stdin` when given (the pipe a daemon passed over was fed),
/// this process's otherwise.
#[allow(clippy::too_many_arguments)]
async fn exec_direct(
    identity: &crate::identity::Identity,
    network: &crate::config::NetworkSettings,
    relay: &p2p::RelayChoice,
    (peer, reach): (&crate::identity::Id52, &p2p::Reach),
    argv: Vec<String>,
    (what, tty): (&str, u8),
    ssh: SshAsk,
    stdin: Option<std::os::fd::OwnedFd>,
) -> anyhow::Result<u8> {
    let endpoint = p2p::bind(identity, network, relay, 0, Vec::new(), None)
        .await
        .map_err(|e| Failure::new(EXEC_FAILED, format!("{e:#}")))?;
    let conn = match p2p::dial(&endpoint, peer, reach, EXEC_ALPN).await {
        Ok(c) => c,
        Err(e) => {
            endpoint.close().await;
            return Err(ExecError::Unreachable(format!("cannot reach {what}: {e:#}")).into());
        }
    };
    let code = crate::exec::client::run(&conn, argv, what, tty, ssh, stdin).await;
    conn.close(0u32.into(), b"done");
    p2p::close_without_waiting(endpoint).await;
    code
}

/// The daemon to reach `cluster` through: the one found, unless it serves
/// another MALAI_HOME than `required_home` asks (the system service, found
/// while the user named a home or has a cluster of that name, which is
/// another cluster): then none, and the user's own keys go directly.
fn daemon_for<'a>(
    home: &Home,
    daemon: &'a Option<client::Found>,
    skipped: &mut Vec<String>,
    cluster: &str,
) -> Option<&'a client::Found> {
    let found = daemon.as_ref()?;
    let required = required_home(home, cluster);
    if !required.is_empty() && !client::same_path(required.as_ref(), found.home.as_ref()) {
        skipped.push(format!(
            "{}: the daemon there serves {}; cluster {cluster:?} of {} is another one",
            found.bus,
            found.home,
            home.root.display()
        ));
        return None;
    }
    Some(found)
}

/// How an exec through a daemon ended.
enum OverBus {
    /// It ran there (or failed for a reason the direct path shares).
    Done(anyhow::Result<u8>),
    /// No daemon ran it (the reasons are in `skipped`): none serves this
    /// home, the one that does lacks the cluster or predates `ExecIn`, or
    /// it refused a user who has the cluster's keys. Nothing ran.
    /// The pipe this process fed with its stdin, if it was made: what it
    /// read is there, so the direct path reads on from it.
    Passed(Option<std::os::fd::OwnedFd>),
}

/// The MALAI_HOME a daemon must serve to act on `cluster` for this process
/// (`daemon_for` checks it on the daemon found, `ExecIn` says it in the
/// call): this one when the user named it or it has a cluster of that name
/// (that cluster's keys are this home's); otherwise any (empty: a member of
/// the group malai uses the system service's clusters). Canonical, as the
/// daemon compares it.
fn required_home(home: &Home, cluster: &str) -> String {
    if any_home() && !home.cluster_dir(cluster).exists() {
        return String::new();
    }
    std::fs::canonicalize(&home.root)
        .unwrap_or_else(|_| home.root.clone())
        .to_string_lossy()
        .into_owned()
}

/// Runs the invocation through the first daemon, on the buses in order,
/// that serves the home it needs (`required_home`): the daemon dials (or
/// reuses its connection) with the cluster's identity, and the command's
/// output goes straight to this process's stdout and stderr. `ExecIn` is
/// the one call: a daemon of another home answers `OtherHome`, one without
/// the cluster `UnknownObject`, both before they touch a descriptor; a bus
/// with no daemon answers for it. Only those answers (nothing ran) move on
/// to the next bus or directly.
async fn exec_over_bus(
    home: &Home,
    inv: &Invocation,
    (verbose, tty): (u8, u8),
    skipped: &mut Vec<String>,
) -> OverBus {
    let required = required_home(home, &inv.target.cluster);
    // The pipe fed with this process's stdin, made for the first daemon
    // asked and handed on to the next (or the direct path): what was read
    // is there.
    let mut fed = None;
    for bus in crate::dbus::Bus::for_client() {
        let conn = match bus.connect().await {
            Ok(conn) => conn,
            Err(e) => {
                skipped.push(format!("{e:#}"));
                continue;
            }
        };
        let answer = match exec_in(&bus, &conn, &required, inv, (verbose, tty), &mut fed).await {
            Ok(answer) => answer,
            Err(e) => return OverBus::Done(Err(e)),
        };
        match answer_of(home, &bus, inv, answer, skipped) {
            Step::Done(result) => return OverBus::Done(result),
            Step::NextBus => {}
            Step::Direct => break,
        }
    }
    OverBus::Passed(fed)
}

/// Where an `ExecIn` answer leaves the command.
enum Step {
    /// It ran there (or failed for a reason the direct path shares).
    Done(anyhow::Result<u8>),
    /// Nothing ran: that bus has no daemon, or one of another home.
    NextBus,
    /// Nothing ran, and no other bus is asked: the daemon of this home
    /// lacks the cluster, predates `ExecIn`, or refused a user who has
    /// the cluster's keys; directly.
    Direct,
}

/// One `ExecIn` call on `conn`, with this process's terminal, signals and
/// stdin (`fed`, made on first use): the answer; an error when this
/// process could not make the call (its terminal, its stdin).
async fn exec_in(
    bus: &crate::dbus::Bus,
    conn: &zbus::Connection,
    required: &str,
    inv: &Invocation,
    (verbose, tty): (u8, u8),
    fed: &mut Option<std::os::fd::OwnedFd>,
) -> anyhow::Result<Result<u8, crate::dbus::Error>> {
    use crate::exec::client::{RawMode, process_env, process_pty};
    let Invocation { target, argv } = inv;
    let proxy = match cluster_proxy(conn, &target.cluster).await {
        Ok(proxy) => proxy,
        Err(e) => return Ok(Err(e.into())),
    };
    if verbose > 0 {
        eprintln!("malai: running {target} through the daemon on {bus}");
    }
    let pty = process_pty(argv, tty);
    let _raw = RawMode::for_pty(pty)?;
    // stdin goes through a pipe this process feeds: the daemon then reads a
    // descriptor of its own that it can stop reading at any time.
    let read_end = match fed {
        Some(fd) => fd,
        None => fed.insert(feed_stdin()?),
    };
    let token = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let controls = {
        let (proxy, token) = (proxy.clone(), token.clone());
        tokio::spawn(forward_controls(proxy, token, pty.is_some()))
    };
    let (rows, cols) = pty.map_or((0, 0), |p| (p.rows, p.cols));
    let answer = proxy
        .exec_in(
            required,
            &target.machine,
            argv,
            process_env().into_iter().collect(),
            rows,
            cols,
            zbus::Fd::from(&*read_end),
            zbus::Fd::from(&std::io::stdout()),
            zbus::Fd::from(&std::io::stderr()),
            &token,
        )
        .await;
    controls.abort();
    Ok(answer)
}

/// What an `ExecIn` answer means for this command: done (its exit code,
/// or an error), or passed on (nothing ran) to the next bus or directly.
fn answer_of(
    home: &Home,
    bus: &crate::dbus::Bus,
    inv: &Invocation,
    answer: Result<u8, crate::dbus::Error>,
    skipped: &mut Vec<String>,
) -> Step {
    use crate::dbus::Error;
    let target = &inv.target;
    let mut passed = |why: String, step: Step| {
        skipped.push(format!("{bus}: {why}"));
        step
    };
    match answer {
        Ok(code) => Step::Done(Ok(code)),
        Err(Error::OtherHome(theirs)) => passed(
            format!(
                "the daemon there serves {theirs}, not {}",
                home.root.display()
            ),
            Step::NextBus,
        ),
        Err(Error::ZBus(e)) if no_daemon(&e) => passed(format!("no daemon ({e})"), Step::NextBus),
        Err(Error::ZBus(e)) if no_such_object(&e) => passed(
            format!("the daemon there has no cluster {:?}", target.cluster),
            Step::Direct,
        ),
        Err(Error::ZBus(e)) if unknown_method(&e) => passed(
            "the daemon there predates ExecIn (restart it to go through it)".into(),
            Step::Direct,
        ),
        Err(Error::AccessDenied(why)) if home.load_cluster(&target.cluster).is_ok() => {
            passed(why, Step::Direct)
        }
        Err(Error::NoSuchMachine(m)) => Step::Done(Err(Failure::usage(m).into())),
        Err(Error::ZBus(e)) => Step::Done(Err(Failure::new(
            EXEC_FAILED,
            format!("{target}: the daemon on {bus} failed: {e}"),
        )
        .into())),
        Err(
            Error::AccessDenied(m)
            | Error::Denied(m)
            | Error::Unreachable(m)
            | Error::Failed(m)
            | Error::Invalid(m)
            | Error::Stale(m),
        ) => Step::Done(Err(Failure::new(EXEC_FAILED, m).into())),
    }
}

/// Whether a call failed because the daemon has no such object (nor its
/// interface there): the daemon did nothing with the call.
fn no_such_object(e: &zbus::Error) -> bool {
    standard_error(e, &["UnknownObject", "UnknownInterface"])
}

/// Whether the bus answered a call for want of a daemon: nobody owns the
/// name there.
fn no_daemon(e: &zbus::Error) -> bool {
    standard_error(e, &["ServiceUnknown", "NameHasNoOwner"])
}

/// Whether the daemon has no such method (one older than the call).
fn unknown_method(e: &zbus::Error) -> bool {
    standard_error(e, &["UnknownMethod"])
}

/// Whether `e` is one of the standard errors `org.freedesktop.DBus.Error.`
/// + `names`, whether zbus parsed it into its own type or not.
fn standard_error(e: &zbus::Error, names: &[&str]) -> bool {
    use zbus::DBusError;
    let name = match e {
        zbus::Error::FDO(e) => e.name().to_string(),
        zbus::Error::MethodError(name, ..) => name.to_string(),
        _ => return false,
    };
    name.strip_prefix("org.freedesktop.DBus.Error.")
        .is_some_and(|n| names.contains(&n))
}

/// A proxy on `conn` for the daemon's object of `cluster` (no call made).
async fn cluster_proxy(
    conn: &zbus::Connection,
    cluster: &str,
) -> zbus::Result<client::ClusterProxy<'static>> {
    client::ClusterProxy::builder(conn)
        .path(crate::dbus::cluster_path(cluster))
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
}

/// The daemon's object for `cluster`; `None` (with the reason in
/// `skipped`) when that daemon does not serve it.
async fn cluster_object(
    found: &client::Found,
    cluster: &str,
    skipped: &mut Vec<String>,
) -> Option<client::ClusterProxy<'static>> {
    let proxy = cluster_proxy(found.proxy.inner().connection(), cluster)
        .await
        .ok()?;
    if proxy.alias().await.is_err() {
        skipped.push(format!(
            "{}: the daemon there has no cluster {cluster:?}",
            found.bus
        ));
        return None;
    }
    Some(proxy)
}

/// A pipe fed with this process's stdin by a thread of its own, for the
/// daemon to read. `std::io::copy` moves the bytes with splice(2) when
/// stdin is a pipe or a file, in chunks as large as the pipe (1 MiB where
/// the kernel allows it): the copy through tokio's stdin it replaces went
/// 8 KiB at a time through the blocking pool and halved an upload. The
/// thread ends when the daemon closes its end (EPIPE) or at exit. A stdin
/// that is /dev/null (scripts, cron, `ssh -n` habits) has nothing to feed:
/// the pipe is closed at once, and the command reads end-of-file as it
/// would from /dev/null, with no thread started.
fn feed_stdin() -> anyhow::Result<std::os::fd::OwnedFd> {
    if stdin_is_dev_null() {
        let (read_end, _closed) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        return Ok(read_end);
    }
    let (read_end, write_end) = crate::exec::client::wide_pipe()?;
    let mut feed = std::fs::File::from(write_end);
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut feed);
        })?;
    Ok(read_end)
}

/// Whether this process's stdin is /dev/null (the character device 1:3).
fn stdin_is_dev_null() -> bool {
    rustix::fs::fstat(rustix::stdio::stdin()).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::CharacterDevice
            && rustix::fs::major(st.st_rdev) == 1
            && rustix::fs::minor(st.st_rdev) == 3
    })
}

/// Passes this process's Ctrl-C, SIGTERM and (on a PTY) window size
/// changes to the daemon's exec `token`.
async fn forward_controls(proxy: client::ClusterProxy<'static>, token: String, on_pty: bool) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term), Ok(mut winch)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::window_change()),
    ) else {
        return;
    };
    loop {
        tokio::select! {
            _ = int.recv() => { let _ = proxy.signal(&token, 2).await; }
            _ = term.recv() => { let _ = proxy.signal(&token, 15).await; }
            _ = winch.recv() => {
                if let (true, Some(size)) = (on_pty, crate::exec::client::window_size()) {
                    let _ = proxy.resize(&token, size.rows, size.cols).await;
                }
            }
        }
    }
}

/// Config editing: to the daemon on D-Bus when one serves the cluster;
/// else here when this device is the CM (`edit_files`), over
/// `malai/config/1` otherwise. The outer error: the CM could not be asked;
/// the inner one: it refused.
impl Route<'_> {
    /// cluster.toml as the cluster's manager has it.
    pub fn download(&mut self, cluster: &str) -> anyhow::Result<Result<Downloaded, EditError>> {
        let over_bus = self.edit_over_bus(cluster, async |proxy| {
            let (text, hash, version) = proxy.config_download().await?;
            Ok(Downloaded {
                text,
                hash,
                version,
            })
        });
        if let Some(answer) = over_bus {
            return Ok(answer);
        }
        let c = self.home.load_cluster(cluster)?;
        if c.role == crate::home::Role::ClusterManager {
            let ledger = crate::state::CmState::load(&c.state_path())?;
            let text = std::fs::read_to_string(c.dir.join(crate::home::CLUSTER_FILE))?;
            return Ok(Ok(Downloaded {
                hash: crate::home::hash_hex(text.as_bytes()),
                text,
                version: ledger.version,
            }));
        }
        let answer: DownloadAnswer = self.ask_cm(cluster, &ConfigRequest::Download)?;
        Ok(answer.into())
    }

    /// Replaces cluster.toml on the cluster's manager with `text` if it is
    /// still at `base_hash` (or `force`) and `text` validates.
    pub fn upload(
        &mut self,
        cluster: &str,
        text: String,
        base_hash: &str,
        force: bool,
    ) -> anyhow::Result<Result<Uploaded, EditError>> {
        let over_bus = self.edit_over_bus(cluster, async |proxy| {
            let (version, hash) = proxy.config_upload(&text, base_hash, force).await?;
            Ok(Uploaded { version, hash })
        });
        if let Some(answer) = over_bus {
            return Ok(answer);
        }
        let c = self.home.load_cluster(cluster)?;
        let base_hash = base_hash.to_owned();
        if c.role == crate::home::Role::ClusterManager {
            let change = crate::cluster::Change::Upload {
                text,
                base_hash,
                force,
            };
            return self.commit_here(&c, change);
        }
        let req = ConfigRequest::Upload {
            text,
            base_hash,
            force,
        };
        let answer: UploadAnswer = self.ask_cm(cluster, &req)?;
        Ok(answer.into())
    }

    /// An edit through the daemon serving `cluster`; `None`: no such
    /// daemon, or it refused this user while the user can go directly.
    fn edit_over_bus<T>(
        &mut self,
        cluster: &str,
        call: impl AsyncFnOnce(&client::ClusterProxy<'static>) -> Result<T, crate::dbus::Error>,
    ) -> Option<Result<T, EditError>> {
        use crate::dbus::Error;
        let found = daemon_for(self.home, &self.daemon, &mut self.skipped, cluster)?;
        let skipped = &mut self.skipped;
        let home = self.home;
        self.rt.block_on(async {
            let proxy = cluster_object(found, cluster, skipped).await?;
            Some(match call(&proxy).await {
                Ok(done) => Ok(done),
                Err(Error::AccessDenied(why)) if home.load_cluster(cluster).is_ok() => {
                    skipped.push(format!("{}: {why}", found.bus));
                    return None;
                }
                Err(Error::Denied(reason)) => Err(EditError::Denied(reason)),
                Err(Error::Invalid(errors)) => Err(EditError::Invalid(errors)),
                // The answer names the version and hash in force now.
                Err(Error::Stale(_)) => match proxy.config_download().await {
                    Ok((_, current_hash, version)) => Err(EditError::Stale {
                        current_hash,
                        version,
                    }),
                    Err(e) => Err(EditError::Failed(format!("stale, and then: {e}"))),
                },
                Err(Error::ZBus(e)) => Err(EditError::Failed(format!(
                    "the daemon on {} failed: {e}",
                    found.bus
                ))),
                Err(
                    Error::AccessDenied(reason)
                    | Error::Failed(reason)
                    | Error::NoSuchMachine(reason)
                    | Error::Unreachable(reason)
                    | Error::OtherHome(reason),
                ) => Err(EditError::Failed(reason)),
            })
        })
    }

    /// One request to the cluster's manager over `malai/config/1`, dialled
    /// from here with the cluster's identity.
    fn ask_cm<A: serde::de::DeserializeOwned>(
        &self,
        cluster: &str,
        req: &ConfigRequest,
    ) -> anyhow::Result<A> {
        tracing::debug!("config request directly: {}", self.skipped.join("; "));
        let c = self.home.load_cluster(cluster)?;
        let local = self.home.local_config()?;
        let relay = p2p::RelayChoice::resolve(&local.network, c.relay.as_ref());
        let reach = p2p::Reach {
            addrs: c.cm_addrs.clone(),
            relay: relay.dial_via(),
        };
        let cm = c.cm_id52;
        self.rt.block_on(async {
            let endpoint =
                p2p::bind(&c.identity, &local.network, &relay, 0, Vec::new(), None).await?;
            let result = async {
                let conn = p2p::dial(&endpoint, &cm, &reach, crate::p2p::CONFIG_ALPN)
                    .await
                    .map_err(|e| {
                        Failure::new(
                            crate::exit::UNAVAILABLE,
                            format!("cannot reach the cluster manager of {cluster:?}: {e:#}"),
                        )
                    })?;
                let answer = crate::sync::edit::ask_cm(&conn, req).await?;
                conn.close(0u32.into(), b"done");
                anyhow::Ok(answer)
            }
            .await;
            endpoint.close().await;
            result
        })
    }

    /// An upload on the CM itself with no daemon on the bus, through the
    /// cluster's one commit path (`cluster::commit_files`), unless a daemon
    /// owns this home (it alone writes state.json while it runs): then it
    /// must go through it.
    fn commit_here(
        &self,
        c: &crate::home::ClusterDir,
        change: crate::cluster::Change,
    ) -> anyhow::Result<Result<Uploaded, EditError>> {
        if let Some(pid) = crate::daemon::lock::running_daemon(self.home) {
            return Err(Failure::new(
                crate::exit::UNAVAILABLE,
                format!(
                    "the daemon (pid {pid}) that serves {} is not reachable on D-Bus, and only it may commit while it runs: \
                     upload through its bus (MALAI_DBUS_ADDRESS), or edit cluster.toml and run `malai rescan`",
                    self.home.root.display()
                ),
            )
            .into());
        }
        let mut ledger = crate::state::CmState::load(&c.state_path())?;
        Ok(
            crate::cluster::commit_files(&c.dir, &c.identity.id52(), &mut ledger, change).map(
                |(_, committed)| Uploaded {
                    version: committed.version,
                    hash: committed.hash,
                },
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The standard errors that pass a command on are told apart by name.
    #[test]
    fn standard_errors_are_told_apart() {
        use zbus::fdo::Error as Fdo;
        let fdo = |e: Fdo| zbus::Error::FDO(Box::new(e));
        for (e, object, daemon, method) in [
            (fdo(Fdo::UnknownObject("x".into())), true, false, false),
            (fdo(Fdo::UnknownInterface("x".into())), true, false, false),
            (fdo(Fdo::ServiceUnknown("x".into())), false, true, false),
            (fdo(Fdo::NameHasNoOwner("x".into())), false, true, false),
            (fdo(Fdo::UnknownMethod("x".into())), false, false, true),
            (fdo(Fdo::AccessDenied("x".into())), false, false, false),
            (zbus::Error::InvalidReply, false, false, false),
        ] {
            assert_eq!(
                (no_such_object(&e), no_daemon(&e), unknown_method(&e)),
                (object, daemon, method),
                "{e}"
            );
        }
    }
}
