//! A fan-out through the daemon that serves the cluster (D-Bus): one
//! `Exec` call per machine on the daemon's pooled connections, with pipes
//! of this process as the command's stdout and stderr, an empty pipe as
//! its stdin, and a token per call through which Ctrl-C (and a timeout's
//! SIGTERM) reach it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::output::{self, Sink};
use super::{Ended, Options, Outcome};
use crate::dbus::Error;
use crate::dbus::client::ClusterProxy;

/// The tokens of the calls running now.
type Running = Arc<Mutex<BTreeSet<String>>>;

/// Runs `argv` on each of `machines` through the daemon's cluster object.
pub async fn run(
    proxy: ClusterProxy<'static>,
    cluster: &str,
    machines: Vec<String>,
    argv: Vec<String>,
    opts: &Options,
    sink: &Sink,
) -> anyhow::Result<Vec<Outcome>> {
    let running: Running = Arc::default();
    let signals = tokio::spawn(forward_signals(proxy.clone(), running.clone()));
    let jobs = Arc::new(Semaphore::new(opts.jobs.max(1)));
    let env: std::collections::HashMap<String, String> =
        crate::exec::client::process_env().into_iter().collect();
    let mut set = JoinSet::new();
    for (n, machine) in machines.into_iter().enumerate() {
        let (proxy, jobs, sink, running) =
            (proxy.clone(), jobs.clone(), sink.clone(), running.clone());
        let (argv, env, timeout) = (argv.clone(), env.clone(), opts.timeout);
        let cluster = cluster.to_owned();
        let token = format!("{}-fan-{n}", std::process::id());
        set.spawn(async move {
            let _permit = jobs.acquire_owned().await.expect("never closed");
            let (out, err, pumps) = match output::pipes(&machine, &sink) {
                Ok(made) => made,
                Err(e) => {
                    let ended = Ended::Failed(format!("cannot make pipes: {e}"));
                    return Outcome::without_output(machine, ended);
                }
            };
            // An empty pipe: the daemon takes a pipe or a file, not a device.
            let stdin = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
                Ok((read, _write)) => read,
                Err(e) => {
                    return Outcome::without_output(
                        machine,
                        Ended::Failed(format!("cannot make a pipe: {e}")),
                    );
                }
            };
            running.lock().expect("tokens lock").insert(token.clone());
            let call = proxy.exec(
                &machine,
                &argv,
                env,
                0,
                0,
                zbus::Fd::from(&stdin),
                zbus::Fd::from(&out),
                zbus::Fd::from(&err),
                &token,
            );
            let ended = match tokio::time::timeout(timeout, call).await {
                Ok(Ok(code)) => Ended::Exit(code),
                Ok(Err(e)) => ended_by(e, &format!("{machine}.{cluster}")),
                Err(_) => {
                    let _ = proxy.signal(&token, 15).await;
                    Ended::TimedOut(timeout)
                }
            };
            running.lock().expect("tokens lock").remove(&token);
            // This process's copies of the write ends: the pumps end when
            // the command's do.
            drop((out, err, stdin));
            if matches!(ended, Ended::TimedOut(_)) {
                pumps.abort();
            }
            let (stdout, stderr) = pumps.finish().await;
            Outcome {
                machine,
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
    signals.abort();
    Ok(outcomes)
}

/// How a call that failed ended; `what` (MACHINE.CLUSTER) is taken off
/// the front of the daemon's message, as the summary names the machine.
fn ended_by(e: Error, what: &str) -> Ended {
    match e {
        Error::Denied(why) => {
            let prefix = format!("{what} denied the command: ");
            Ended::Denied(why.strip_prefix(&prefix).map_or(why.clone(), str::to_owned))
        }
        Error::Unreachable(why) => Ended::Unreachable(why),
        Error::NoSuchMachine(why)
        | Error::AccessDenied(why)
        | Error::Failed(why)
        | Error::Invalid(why)
        | Error::Stale(why)
        | Error::OtherHome(why) => Ended::Failed(why),
        Error::ZBus(e) => Ended::Failed(format!("the daemon failed: {e}")),
    }
}

/// Passes this process's Ctrl-C and SIGTERM to every running call.
async fn forward_signals(proxy: ClusterProxy<'static>, running: Running) {
    let Some(mut interrupts) = crate::exec::client::Interrupts::new() else {
        return;
    };
    loop {
        let signal = interrupts.next().await;
        let tokens: Vec<String> = running
            .lock()
            .expect("tokens lock")
            .iter()
            .cloned()
            .collect();
        for token in tokens {
            let _ = proxy.signal(&token, signal).await;
        }
    }
}
