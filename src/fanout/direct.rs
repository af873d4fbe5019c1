//! A fan-out from this process with the cluster's key in MALAI_HOME (no
//! daemon serves the cluster): one endpoint, one connection per machine;
//! this device itself, when it is among the machines, runs the command
//! here (`exec::local`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio::task::JoinSet;

use super::output::{self, Sink};
use super::{Ended, Options, Outcome};
use crate::command::spawn::StdioMode;
use crate::config::{ClusterConfig, NetworkSettings};
use crate::exec::client::{Io, process_env};
use crate::exec::proto::{ClientMsg, OnBehalf};
use crate::home::ClusterDir;
use crate::identity::Id52;
use crate::p2p::{self, EXEC_ALPN, Reach, RelayChoice};
use crate::selection::Selection;

/// One machine to run on.
#[derive(Debug, Clone)]
pub struct Plan {
    pub machine: String,
    pub id: Id52,
    pub addrs: Vec<SocketAddr>,
}

/// Runs `argv` on every machine of `plan`, at most `opts.jobs` at once.
pub async fn run(
    cluster: &ClusterDir,
    config: Arc<ClusterConfig>,
    network: &NetworkSettings,
    plan: Vec<Plan>,
    argv: Vec<String>,
    opts: &Options,
    sink: &Sink,
) -> anyhow::Result<Vec<Outcome>> {
    let relay = RelayChoice::resolve(network, cluster.relay.as_ref());
    let endpoint = p2p::bind(&cluster.identity, network, &relay, 0, Vec::new(), None).await?;
    let signals = forward_signals();
    let jobs = Arc::new(Semaphore::new(opts.jobs.max(1)));
    let me = cluster.identity.id52();
    let mut set = JoinSet::new();
    for p in plan {
        let (endpoint, jobs, sink) = (endpoint.clone(), jobs.clone(), sink.clone());
        let (argv, config, controls) = (argv.clone(), config.clone(), signals.subscribe());
        let reach = Reach {
            addrs: p.addrs.clone(),
            relay: relay.dial_via(),
        };
        let (cluster_alias, timeout) = (cluster.alias.clone(), opts.timeout);
        set.spawn(async move {
            let _permit = jobs.acquire_owned().await.expect("never closed");
            let what = format!("{}.{cluster_alias}", p.machine);
            let (ended, pumps) = if p.id == me {
                match output::pipes(&p.machine, &sink) {
                    Ok((out, err, pumps)) => {
                        let stdin =
                            std::fs::File::open("/dev/null").map(std::os::fd::OwnedFd::from);
                        let ended = match stdin {
                            Ok(stdin) => {
                                let stdio = StdioMode::Fds([stdin, out, err]);
                                let here = Here {
                                    config: &config,
                                    cluster: &cluster_alias,
                                    me: &me,
                                };
                                here.run(argv, &what, stdio, controls, timeout).await
                            }
                            Err(e) => Ended::Failed(format!("/dev/null: {e}")),
                        };
                        (ended, pumps)
                    }
                    Err(e) => {
                        let ended = Ended::Failed(format!("cannot make pipes: {e}"));
                        return Outcome::without_output(p.machine, ended);
                    }
                }
            } else {
                let (stdout, stderr, pumps) = output::duplex(&p.machine, &sink);
                let io = Io {
                    stdin: Box::new(tokio::io::empty()),
                    stdout: Box::new(stdout),
                    stderr: Box::new(stderr),
                    env: process_env(),
                    pty: None,
                    controls: relay_controls(controls),
                    on_behalf: Some(OnBehalf::uid(nix::unistd::getuid().as_raw())),
                    copy: None,
                    ssh: Default::default(),
                };
                (
                    remote(&endpoint, &p.id, &reach, argv, &what, io, timeout).await,
                    pumps,
                )
            };
            if matches!(ended, Ended::TimedOut(_)) {
                pumps.abort();
            }
            let (stdout, stderr) = pumps.finish().await;
            Outcome {
                machine: p.machine,
                ended,
                stdout,
                stderr,
            }
        });
    }
    let mut outcomes = Vec::new();
    while let Some(done) = set.join_next().await {
        outcomes.push(done?);
    }
    // A CLI about to exit: a machine that never answered would hold a
    // graceful close for its drain time.
    p2p::close_without_waiting(endpoint).await;
    Ok(outcomes)
}

/// Dials `id` and runs `argv` there, all within `timeout`.
async fn remote(
    endpoint: &iroh::Endpoint,
    id: &Id52,
    reach: &Reach,
    argv: Vec<String>,
    what: &str,
    io: Io,
    timeout: Duration,
) -> Ended {
    let ran = async {
        let conn = p2p::dial(endpoint, id, reach, EXEC_ALPN)
            .await
            .map_err(|e| Ended::Unreachable(format!("{e:#}")))?;
        let code = crate::exec::client::run_with(&conn, argv, what, io).await;
        conn.close(0u32.into(), b"done");
        code.map_err(Ended::from)
    };
    // Past the timeout the connection is dropped, and the machine ends the
    // command as it does for any client that went away.
    match tokio::time::timeout(timeout, ran).await {
        Ok(Ok(code)) => Ended::Exit(code),
        Ok(Err(ended)) => ended,
        Err(_) => Ended::TimedOut(timeout),
    }
}

/// This device itself, among the machines of a fan-out.
struct Here<'a> {
    config: &'a ClusterConfig,
    cluster: &'a str,
    me: &'a Id52,
}

impl Here<'_> {
    /// Decided and run here, like `malai cm.company CMD`. Past the timeout it
    /// gets SIGTERM.
    async fn run(
        &self,
        argv: Vec<String>,
        what: &str,
        stdio: StdioMode,
        controls: broadcast::Receiver<ClientMsg>,
        timeout: Duration,
    ) -> Ended {
        let config = self.config;
        let caller = crate::exec::local::Caller {
            who: crate::audit::Who {
                cluster: self.cluster,
                peer: self.me,
                config_version: config.received_version.unwrap_or(0),
                uid: Some(nix::unistd::getuid().as_raw()),
                claimed: None,
                recording: None,
            },
            unprivileged_uid: None,
        };
        let (tx, rx) = mpsc::channel(8);
        let relay = tokio::spawn(relay_into(controls, tx.clone()));
        let ran = crate::exec::local::run(
            config,
            &caller,
            argv,
            what,
            stdio,
            process_env(),
            rx,
            std::future::pending(),
        );
        tokio::pin!(ran);
        let ended = tokio::select! {
            code = &mut ran => match code {
                Ok(code) => Ended::Exit(code),
                Err(e) => Ended::from(e),
            },
            () = tokio::time::sleep(timeout) => {
                let _ = tx.send(ClientMsg::Signal { signal: 15 }).await;
                // Let it see the signal before it is left behind.
                let _ = tokio::time::timeout(Duration::from_secs(1), &mut ran).await;
                Ended::TimedOut(timeout)
            }
        };
        relay.abort();
        ended
    }
}

/// Ctrl-C and SIGTERM of this process, for every machine's command.
fn forward_signals() -> broadcast::Sender<ClientMsg> {
    let (tx, _) = broadcast::channel(8);
    let sender = tx.clone();
    tokio::spawn(async move {
        let Some(mut interrupts) = crate::exec::client::Interrupts::new() else {
            return;
        };
        loop {
            let signal = interrupts.next().await;
            let _ = sender.send(ClientMsg::Signal { signal });
        }
    });
    tx
}

fn relay_controls(controls: broadcast::Receiver<ClientMsg>) -> mpsc::Receiver<ClientMsg> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(relay_into(controls, tx));
    rx
}

async fn relay_into(mut from: broadcast::Receiver<ClientMsg>, to: mpsc::Sender<ClientMsg>) {
    while let Ok(msg) = from.recv().await {
        if to.send(msg).await.is_err() {
            break;
        }
    }
}

/// `machines`, with each known machine's id52 and addresses; a name the
/// config does not know is already an outcome.
pub fn plan(
    config: &ClusterConfig,
    me: &Id52,
    selection: &Selection,
    argv: &[String],
) -> Result<(Vec<Plan>, Vec<Outcome>), String> {
    let mut plan = Vec::new();
    let mut unknown = Vec::new();
    for name in selection.machines(config, me, argv)? {
        match config.machines.get(&name) {
            Some(m) => plan.push(Plan {
                machine: name,
                id: m.id52,
                addrs: m.addrs.clone(),
            }),
            None => {
                let why = format!("no machine {name:?} in cluster {:?}", selection.cluster);
                unknown.push(Outcome::without_output(name, Ended::Failed(why)));
            }
        }
    }
    Ok((plan, unknown))
}
