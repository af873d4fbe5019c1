//! The one place that decides how a verb reaches its target: through the
//! local daemon when one serves this MALAI_HOME, or directly with the keys in
//! MALAI_HOME otherwise. The daemon is looked for on D-Bus (MALAI_DBUS_ADDRESS
//! alone when set; else the session bus, then the system bus); rescan falls
//! back to SIGHUP for a daemon that is not on a bus. (Exec always dials
//! directly for now.)

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::dbus::client;
use crate::exec::ExecError;
use crate::exec::spawn::StdioMode;
use crate::exit::{EXEC_FAILED, Failure, USAGE};
use crate::home::Home;
use crate::p2p::{self, EXEC_ALPN};
use crate::status::Status;
use crate::target::{self, Invocation};

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

/// The daemon's view when a daemon answers on a bus, the files' otherwise.
pub fn status(home: &Home) -> anyhow::Result<Status> {
    let rt = super::runtime()?;
    let from_daemon = rt.block_on(async {
        let found = client::find(&home.root, any_home(), &mut Vec::new()).await?;
        let json = found.proxy.status().await.ok()?;
        serde_json::from_str::<Status>(&json).ok()
    });
    match from_daemon {
        Some(status) => Ok(status),
        None => crate::status::from_files(home),
    }
}

/// Asks the daemon of `home` to rescan: over D-Bus when it is on a bus
/// (and waits for the result), by SIGHUP otherwise.
pub fn rescan(home: &Home) -> anyhow::Result<RescanRoute> {
    let rt = super::runtime()?;
    let over_bus = rt.block_on(async {
        let Some(found) = client::find(&home.root, false, &mut Vec::new()).await else {
            return Ok(None);
        };
        match found.proxy.rescan().await {
            Ok(problems) => Ok(Some(RescanRoute::Bus(found.bus.to_string(), problems))),
            Err(crate::dbus::Error::AccessDenied(why)) => Err(anyhow::Error::new(Failure::new(
                crate::exit::DENIED,
                format!("the daemon refused: {why}"),
            ))),
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

/// Runs a remote command; returns the exit code to end with.
pub fn exec(home: &Home, words: &[String], verbose: u8) -> anyhow::Result<u8> {
    let local = home
        .local_config()
        .map_err(|d| Failure::new(EXEC_FAILED, format!("malai.toml is invalid:\n{d}")))?;
    let inv = target::resolve(&local, words).map_err(Failure::usage)?;
    let rt = super::runtime()?;
    let mut skipped = Vec::new();
    let over_bus = rt.block_on(async {
        let found = client::find(&home.root, any_home(), &mut skipped).await?;
        exec_over_bus(home, &found, &inv, verbose, &mut skipped).await
    });
    if let Some(result) = over_bus {
        return result;
    }
    if verbose > 0 {
        eprintln!(
            "malai: no daemon serving this MALAI_HOME answered on D-Bus ({}): going directly",
            skipped.join("; ")
        );
    }
    let Invocation { target, argv } = inv;
    let cluster = home
        .load_cluster(&target.cluster)
        .map_err(|d| Failure::new(EXEC_FAILED, d.to_string()))?;
    let config = cluster.config.as_ref().ok_or_else(|| {
        Failure::new(
            EXEC_FAILED,
            format!(
                "cluster {:?} has no config yet: the cluster manager has not sent one",
                target.cluster
            ),
        )
    })?;
    let machine = config.machines.get(&target.machine).ok_or_else(|| {
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
    })?;
    if verbose > 0 && machine.id52 != cluster.identity.id52() {
        eprintln!(
            "malai: dialling {target} ({}) directly with this device's identity for {:?}",
            machine.id52, target.cluster
        );
    }
    let (id, addrs) = (machine.id52, machine.addrs.clone());
    let network = local.network.clone();
    let what = target.to_string();
    let rt = super::runtime()?;
    if id == cluster.identity.id52() {
        if verbose > 0 {
            eprintln!("malai: {target} is this device: deciding and running here");
        }
        let caller = crate::exec::local::Caller {
            who: crate::audit::Who {
                cluster: &target.cluster,
                peer: &id,
                config_version: config.received_version.unwrap_or(0),
                uid: Some(nix::unistd::getuid().as_raw()),
            },
            unprivileged_uid: None,
        };
        let result = rt.block_on(crate::exec::local::run(
            config,
            &caller,
            argv,
            &what,
            StdioMode::Inherit,
            crate::exec::client::process_env(),
            tokio::sync::mpsc::channel(1).1,
        ));
        return Ok(result?);
    }
    rt.block_on(async move {
        let endpoint = p2p::bind(&cluster.identity, &network, 0, Vec::new(), None)
            .await
            .map_err(|e| Failure::new(EXEC_FAILED, format!("{e:#}")))?;
        let conn = match p2p::dial(&endpoint, &id, &addrs, EXEC_ALPN).await {
            Ok(c) => c,
            Err(e) => {
                endpoint.close().await;
                return Err(ExecError::Unreachable(format!("cannot reach {what}: {e:#}")).into());
            }
        };
        let code = crate::exec::client::run(&conn, argv, &what).await;
        conn.close(0u32.into(), b"done");
        p2p::close_without_waiting(endpoint).await;
        code
    })
}

/// Runs the invocation through `found`, the daemon on a bus: the daemon
/// dials (or reuses its connection) with the cluster's identity, and the
/// command's output goes straight to this process's stdout and stderr.
/// `None`: that daemon does not serve the cluster, or refused this user
/// while the user can go directly; the reason goes to `skipped`.
async fn exec_over_bus(
    home: &Home,
    found: &client::Found,
    inv: &Invocation,
    verbose: u8,
    skipped: &mut Vec<String>,
) -> Option<anyhow::Result<u8>> {
    use crate::dbus::Error;
    use crate::exec::client::{RawMode, process_env, process_pty};
    let Invocation { target, argv } = inv;
    let proxy = cluster_object(found, &target.cluster, skipped).await?;
    if verbose > 0 {
        eprintln!(
            "malai: running {target} through the daemon on {}",
            found.bus
        );
    }
    let result = async {
        let pty = process_pty(argv);
        let _raw = RawMode::for_pty(pty)?;
        // stdin goes through a pipe this process feeds: the daemon then
        // reads a descriptor of its own that it can stop reading at any time.
        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let mut feed = tokio::net::unix::pipe::Sender::from_owned_fd(write_end)?;
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut feed).await;
        });
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
            .exec(
                &target.machine,
                argv,
                process_env().into_iter().collect(),
                rows,
                cols,
                zbus::Fd::from(&read_end),
                zbus::Fd::from(&std::io::stdout()),
                zbus::Fd::from(&std::io::stderr()),
                &token,
            )
            .await;
        controls.abort();
        anyhow::Ok(answer)
    }
    .await;
    let answer = match result {
        Ok(answer) => answer,
        Err(e) => return Some(Err(e)),
    };
    Some(match answer {
        Ok(code) => Ok(code),
        Err(Error::AccessDenied(why)) if home.load_cluster(&target.cluster).is_ok() => {
            skipped.push(format!("{}: {why}", found.bus));
            return None;
        }
        Err(Error::NoSuchMachine(m)) => Err(Failure::usage(m).into()),
        Err(Error::ZBus(e)) => Err(Failure::new(
            EXEC_FAILED,
            format!("{target}: the daemon on {} failed: {e}", found.bus),
        )
        .into()),
        Err(
            Error::AccessDenied(m)
            | Error::Denied(m)
            | Error::Unreachable(m)
            | Error::Failed(m)
            | Error::Invalid(m)
            | Error::Stale(m),
        ) => Err(Failure::new(EXEC_FAILED, m).into()),
    })
}

/// The daemon's object for `cluster`; `None` (with the reason in
/// `skipped`) when that daemon does not serve it.
async fn cluster_object(
    found: &client::Found,
    cluster: &str,
    skipped: &mut Vec<String>,
) -> Option<client::ClusterProxy<'static>> {
    let proxy = client::ClusterProxy::builder(found.proxy.inner().connection())
        .path(crate::dbus::cluster_path(cluster))
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
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

/// A config request through the daemon serving `cluster`, as a
/// `ConfigAnswer`; `None`: no such daemon, or it refused this user while
/// the user can go directly.
async fn config_over_bus(
    home: &Home,
    cluster: &str,
    req: &crate::sync::proto::ConfigRequest,
    skipped: &mut Vec<String>,
) -> Option<anyhow::Result<crate::sync::proto::ConfigAnswer>> {
    use crate::dbus::Error;
    use crate::sync::proto::{ConfigAnswer, ConfigRequest};
    let found = client::find(&home.root, any_home(), skipped).await?;
    let proxy = cluster_object(&found, cluster, skipped).await?;
    let result = match req {
        ConfigRequest::Download => {
            proxy
                .config_download()
                .await
                .map(|(text, hash, version)| ConfigAnswer::File {
                    text,
                    hash,
                    version,
                })
        }
        ConfigRequest::Upload {
            text,
            base_hash,
            force,
        } => proxy
            .config_upload(text, base_hash, *force)
            .await
            .map(|(version, hash)| ConfigAnswer::Accepted { version, hash }),
        other => return Some(Err(anyhow::anyhow!("internal: {other:?} is not an edit"))),
    };
    Some(Ok(match result {
        Ok(answer) => answer,
        Err(Error::AccessDenied(why)) if home.load_cluster(cluster).is_ok() => {
            skipped.push(format!("{}: {why}", found.bus));
            return None;
        }
        Err(Error::Denied(reason)) => ConfigAnswer::Denied { reason },
        Err(Error::Invalid(errors)) => ConfigAnswer::Invalid { errors },
        // The answer names the version and hash in force now.
        Err(Error::Stale(_)) => match proxy.config_download().await {
            Ok((_, current_hash, version)) => ConfigAnswer::Stale {
                current_hash,
                version,
            },
            Err(e) => ConfigAnswer::Rejected {
                reason: format!("stale, and then: {e}"),
            },
        },
        Err(Error::ZBus(e)) => ConfigAnswer::Rejected {
            reason: format!("the daemon on {} failed: {e}", found.bus),
        },
        Err(
            Error::AccessDenied(reason)
            | Error::Failed(reason)
            | Error::NoSuchMachine(reason)
            | Error::Unreachable(reason),
        ) => ConfigAnswer::Rejected { reason },
    }))
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

/// Sends a config request to the cluster's manager: to the daemon on
/// D-Bus when one serves this home; else here when this device is the CM
/// (`local_cm_request`), over `malai/config/1` otherwise.
pub fn config_request(
    home: &Home,
    cluster: &str,
    req: crate::sync::proto::ConfigRequest,
) -> anyhow::Result<crate::sync::proto::ConfigAnswer> {
    let rt = super::runtime()?;
    let mut skipped = Vec::new();
    let over_bus = rt.block_on(config_over_bus(home, cluster, &req, &mut skipped));
    if let Some(answer) = over_bus {
        return answer;
    }
    tracing::debug!("config request directly: {}", skipped.join("; "));
    let c = home.load_cluster(cluster)?;
    if c.role == crate::home::Role::ClusterManager {
        return local_cm_request(home, &c, req);
    }
    let local = home.local_config()?;
    let rt = super::runtime()?;
    let (cm, addrs) = (c.cm_id52, c.cm_addrs.clone());
    rt.block_on(async {
        let endpoint = p2p::bind(&c.identity, &local.network, 0, Vec::new(), None).await?;
        let result = async {
            let conn = p2p::dial(&endpoint, &cm, &addrs, crate::p2p::CONFIG_ALPN)
                .await
                .map_err(|e| {
                    Failure::new(
                        crate::exit::UNAVAILABLE,
                        format!("cannot reach the cluster manager of {cluster:?}: {e:#}"),
                    )
                })?;
            let answer = crate::sync::edit::ask_cm(&conn, &req).await?;
            conn.close(0u32.into(), b"done");
            anyhow::Ok(answer)
        }
        .await;
        endpoint.close().await;
        result
    })
}

/// An editing request on the CM itself with no daemon on the bus: a
/// download reads the files; an upload goes through the cluster's one
/// commit path (`cluster::commit_files`), unless a daemon owns this home
/// (it alone writes state.json while it runs): then it must go through it.
fn local_cm_request(
    home: &Home,
    c: &crate::home::ClusterDir,
    req: crate::sync::proto::ConfigRequest,
) -> anyhow::Result<crate::sync::proto::ConfigAnswer> {
    use crate::cluster::{Change, commit_files};
    use crate::sync::proto::{ConfigAnswer, ConfigRequest};
    let mut ledger = crate::state::CmState::load(&c.state_path())?;
    let change = match req {
        ConfigRequest::Download => {
            let text = std::fs::read_to_string(c.dir.join(crate::home::CLUSTER_FILE))?;
            return Ok(ConfigAnswer::File {
                hash: crate::home::hash_hex(text.as_bytes()),
                text,
                version: ledger.version,
            });
        }
        ConfigRequest::Upload {
            text,
            base_hash,
            force,
        } => Change::Upload {
            text,
            base_hash,
            force,
        },
        ConfigRequest::Push { .. } | ConfigRequest::Fetch => {
            anyhow::bail!("internal: {req:?} is not a config editing request")
        }
    };
    if let Some(pid) = crate::daemon::lock::running_daemon(home) {
        return Err(Failure::new(
            crate::exit::UNAVAILABLE,
            format!(
                "the daemon (pid {pid}) that serves {} is not reachable on D-Bus, and only it may commit while it runs: \
                 upload through its bus (MALAI_DBUS_ADDRESS), or edit cluster.toml and run `malai rescan`",
                home.root.display()
            ),
        )
        .into());
    }
    Ok(
        match commit_files(&c.dir, &c.identity.id52(), &mut ledger, change) {
            Ok((_, committed)) => ConfigAnswer::Accepted {
                version: committed.version,
                hash: committed.hash,
            },
            Err(refusal) => refusal.into(),
        },
    )
}
