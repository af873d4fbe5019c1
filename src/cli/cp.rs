//! `malai cp [-r] SRC... DST`: files to or from one machine, with
//! `MACHINE.CLUSTER:PATH` on one side (scp's way). A tar stream (`copy`)
//! over an exec stream whose host runs its own copy helper as the
//! machine's user, decided like any command of a peer that may run any
//! command there (`acl::copy`: a command rule is not enough). Dials
//! directly with the key in MALAI_HOME.

use std::fs::File;
use std::path::PathBuf;

use crate::exec::ExecError;
use crate::exec::client::{Io, process_env};
use crate::exec::proto::{CopyOp, OnBehalf};
use crate::exit::{DENIED, EXEC_FAILED, FAILURE, Failure, OK};
use crate::home::Home;
use crate::p2p::{self, EXEC_ALPN, Reach, RelayChoice};
use crate::target::Target;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Copy directories, with everything in them.
    #[arg(short, long)]
    pub recursive: bool,
    /// SRC... DST; the remote side is MACHINE.CLUSTER:PATH.
    #[arg(required = true, num_args = 2.., value_name = "SRC... DST")]
    pub paths: Vec<String>,
}

/// One side of a copy.
enum Side {
    Local(PathBuf),
    Remote(Target, String),
}

fn side(word: &str) -> Side {
    match word.split_once(':') {
        Some((t, path)) if !path.is_empty() => match Target::parse(t) {
            Ok(target) => Side::Remote(target, path.to_owned()),
            Err(_) => Side::Local(word.into()),
        },
        _ => Side::Local(word.into()),
    }
}

/// What the exec client sends in place of an argv: a program no host has,
/// so that a host too old to know `copy` fails to run it.
const OLD_HOST_ARGV: &str = "malai-cp";

pub fn run(args: Args) -> anyhow::Result<u8> {
    let dst = args.paths.last().expect("clap requires two paths");
    if let Some((many, dest)) = dst.split_once(':')
        && let Some(selection) = crate::selection::Selection::parse(many)
    {
        let selection = selection.map_err(Failure::usage)?;
        return to_many(&args, &selection, dest);
    }
    let (target, op, local) = plan(&args)?;
    let (net, cluster, config) = load(&target.cluster)?;
    let machine = config.machines.get(&target.machine).ok_or_else(|| {
        Failure::usage(format!(
            "no machine {:?} in cluster {:?}",
            target.machine, target.cluster
        ))
    })?;
    if machine.id52 == cluster.identity.id52() {
        return Err(Failure::usage(format!("{target} is this device: use cp")).into());
    }
    let relay = RelayChoice::resolve(&net, cluster.relay.as_ref());
    let reach = Reach {
        addrs: machine.addrs.clone(),
        relay: relay.dial_via(),
    };
    let what = target.to_string();
    let ran = super::runtime()?.block_on(async {
        let endpoint = p2p::bind(&cluster.identity, &net, &relay, 0, Vec::new(), None).await?;
        let copied = async {
            let conn = p2p::dial(&endpoint, &machine.id52, &reach, EXEC_ALPN)
                .await
                .map_err(|e| ExecError::Unreachable(format!("cannot reach {what}: {e:#}")))?;
            let code = copy(&conn, &what, op, local, true).await;
            conn.close(0u32.into(), b"done");
            code
        }
        .await;
        p2p::close_without_waiting(endpoint).await;
        copied
    });
    match ran {
        Ok(()) => Ok(OK),
        Err(e) => Err(failure(&what, e).into()),
    }
}

/// Which machine, what it does, and this end's side, from the words.
fn plan(args: &Args) -> Result<(Target, CopyOp, Local), Failure> {
    let (dst, srcs) = args.paths.split_last().expect("clap requires two paths");
    Ok(match side(dst) {
        Side::Remote(target, dest) => {
            let paths = sources(args)?;
            (target, CopyOp::Receive { dest }, Local::Sources(paths))
        }
        Side::Local(dest) => {
            let mut target = None;
            let mut paths = Vec::new();
            for s in srcs {
                let Side::Remote(t, path) = side(s) else {
                    return Err(Failure::usage(
                        "one side of a copy is a machine: MACHINE.CLUSTER:PATH",
                    ));
                };
                if target.as_ref().is_some_and(|first: &Target| *first != t) {
                    return Err(Failure::usage("copy from one machine at a time"));
                }
                target = Some(t);
                paths.push(path);
            }
            let target = target.expect("at least one source");
            if paths.len() > 1 && !dest.is_dir() {
                return Err(Failure::usage(format!(
                    "{} is not a directory: several files go into a directory",
                    dest.display()
                )));
            }
            let op = CopyOp::Send {
                paths,
                recursive: args.recursive,
            };
            (target, op, Local::Dest(dest))
        }
    })
}

/// This device's network settings, its directory of `cluster` and the
/// config it holds.
fn load(
    cluster: &str,
) -> anyhow::Result<(
    crate::config::NetworkSettings,
    crate::home::ClusterDir,
    crate::config::ClusterConfig,
)> {
    let home = Home::resolve()?;
    let net = home
        .local_config()
        .map_err(|d| Failure::new(crate::exit::CONFIG, format!("malai.toml is invalid:\n{d}")))?
        .network;
    let (dir, config) = super::route::cluster_with_config(&home, cluster)?;
    Ok((net, dir, config))
}

/// The local files of an upload, checked: each exists, a directory only
/// with -r.
fn sources(args: &Args) -> Result<Vec<PathBuf>, Failure> {
    let (_, srcs) = args.paths.split_last().expect("clap requires two paths");
    let mut paths = Vec::new();
    for s in srcs {
        let Side::Local(p) = side(s) else {
            return Err(Failure::usage(
                "one side of a copy is this device: copy through it in two steps",
            ));
        };
        let meta = std::fs::symlink_metadata(&p)
            .map_err(|e| Failure::usage(format!("{}: {e}", p.display())))?;
        if meta.is_dir() && !args.recursive {
            return Err(Failure::usage(format!(
                "{} is a directory (copy it with -r)",
                p.display()
            )));
        }
        paths.push(p);
    }
    Ok(paths)
}

/// An upload to the machines of a fan-out target (`web01,web02.company:`,
/// `@all.company:`: those where this device may run any command), all at
/// once, reported like a fan-out: a summary, exit 0 only when every copy
/// landed.
fn to_many(args: &Args, selection: &crate::selection::Selection, dest: &str) -> anyhow::Result<u8> {
    use crate::fanout::{Ended, Outcome};
    let paths = sources(args)?;
    let (net, cluster, config) = load(&selection.cluster)?;
    let me = cluster.identity.id52();
    let names = selection
        .machines(&config, &me, &[OLD_HOST_ARGV.to_owned()])
        .map_err(|e| Failure::new(EXEC_FAILED, e))?;
    let relay = RelayChoice::resolve(&net, cluster.relay.as_ref());
    let outcomes = super::runtime()?.block_on(async {
        let endpoint = p2p::bind(&cluster.identity, &net, &relay, 0, Vec::new(), None).await?;
        let mut set = tokio::task::JoinSet::new();
        for name in names {
            let what = format!("{name}.{}", selection.cluster);
            let Some(m) = config.machines.get(&name).filter(|m| m.id52 != me) else {
                let why = format!(
                    "no other machine {name:?} in cluster {:?}",
                    selection.cluster
                );
                set.spawn(async move { Outcome::without_output(name, Ended::Failed(why)) });
                continue;
            };
            let (endpoint, id) = (endpoint.clone(), m.id52);
            let reach = Reach {
                addrs: m.addrs.clone(),
                relay: relay.dial_via(),
            };
            let (op, local) = (
                CopyOp::Receive {
                    dest: dest.to_owned(),
                },
                Local::Sources(paths.clone()),
            );
            set.spawn(async move {
                let copied = async {
                    let conn = p2p::dial(&endpoint, &id, &reach, EXEC_ALPN)
                        .await
                        .map_err(|e| ExecError::Unreachable(format!("{e:#}")))?;
                    let code = copy(&conn, &what, op, local, false).await;
                    conn.close(0u32.into(), b"done");
                    code
                };
                let ended = match copied.await {
                    Ok(()) => Ended::Exit(0),
                    Err(CopyError::Exec(e)) => Ended::from(e),
                    Err(CopyError::Remote(code)) => Ended::Exit(code),
                    Err(CopyError::Here(e)) => Ended::Failed(format!("{e:#}")),
                };
                Outcome::without_output(name, ended)
            });
        }
        let mut outcomes = Vec::new();
        while let Some(done) = set.join_next().await {
            outcomes.push(done?);
        }
        p2p::close_without_waiting(endpoint).await;
        anyhow::Ok(outcomes)
    })?;
    let opts = crate::fanout::Options {
        jobs: usize::from(crate::fanout::DEFAULT_JOBS),
        timeout: crate::fanout::DEFAULT_TIMEOUT,
        json: false,
    };
    Ok(crate::fanout::report(outcomes, &opts))
}

/// The local end: files to send, or where received ones go.
enum Local {
    Sources(Vec<PathBuf>),
    Dest(PathBuf),
}

/// Why a copy failed.
enum CopyError {
    Exec(ExecError),
    /// The helper on the machine exited with this code (its reasons went
    /// to stderr).
    Remote(u8),
    /// This end's packing or unpacking.
    Here(anyhow::Error),
}

impl From<ExecError> for CopyError {
    fn from(e: ExecError) -> CopyError {
        CopyError::Exec(e)
    }
}

impl From<anyhow::Error> for CopyError {
    fn from(e: anyhow::Error) -> CopyError {
        match e.downcast::<ExecError>() {
            Ok(e) => CopyError::Exec(e),
            Err(e) => CopyError::Here(e),
        }
    }
}

fn failure(what: &str, e: CopyError) -> Failure {
    match e {
        CopyError::Exec(ExecError::Denied { reason, .. }) => {
            Failure::new(DENIED, format!("{what} refused the copy: {reason}"))
        }
        CopyError::Exec(ExecError::NotRun { reason, .. }) if reason.contains(OLD_HOST_ARGV) => {
            Failure::new(
                EXEC_FAILED,
                format!("{what} runs a malai that cannot copy files: upgrade it"),
            )
        }
        CopyError::Exec(e) => Failure::new(EXEC_FAILED, e.to_string()),
        CopyError::Remote(code) => Failure::new(
            FAILURE,
            format!("{what}: the copy failed there (exit {code})"),
        ),
        CopyError::Here(e) => Failure::new(FAILURE, format!("{e:#}")),
    }
}

/// Runs `op` on the machine at the other end of `conn`, with this end's
/// packer or unpacker on a thread of its own and an OS pipe between them.
async fn copy(
    conn: &iroh::endpoint::Connection,
    what: &str,
    op: CopyOp,
    local: Local,
    show_progress: bool,
) -> Result<(), CopyError> {
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(anyhow::Error::from)?;
    let (tx, controls) = tokio::sync::mpsc::channel(4);
    let signals = tokio::spawn(forward_interrupt(tx));
    let mut io = Io {
        stdin: Box::new(tokio::io::empty()),
        stdout: Box::new(tokio::io::stdout()),
        stderr: Box::new(tokio::io::stderr()),
        env: process_env(),
        pty: None,
        controls,
        on_behalf: Some(OnBehalf::uid(nix::unistd::getuid().as_raw())),
        copy: Some(op),
        ssh: Default::default(),
    };
    let worker = match local {
        Local::Sources(paths) => {
            // Directories were refused without -r already.
            let recursive = true;
            let bar = show_progress
                .then(|| progress(Some(total_size(&paths))))
                .flatten();
            let file = File::from(write);
            io.stdin = Box::new(
                tokio::net::unix::pipe::Receiver::from_owned_fd(read)
                    .map_err(anyhow::Error::from)?,
            );
            std::thread::spawn(move || {
                let packed = match &bar {
                    Some(bar) => crate::copy::pack::pack(&paths, recursive, bar.wrap_write(file)),
                    None => crate::copy::pack::pack(&paths, recursive, file),
                };
                if let Some(bar) = bar {
                    bar.finish_and_clear();
                }
                packed
            })
        }
        Local::Dest(dest) => {
            let bar = show_progress.then(|| progress(None)).flatten();
            let file = File::from(read);
            io.stdout = Box::new(
                tokio::net::unix::pipe::Sender::from_owned_fd(write)
                    .map_err(anyhow::Error::from)?,
            );
            std::thread::spawn(move || {
                let unpacked = match &bar {
                    Some(bar) => crate::copy::unpack::unpack(bar.wrap_read(file), &dest),
                    None => crate::copy::unpack::unpack(file, &dest),
                };
                if let Some(bar) = bar {
                    bar.finish_and_clear();
                }
                unpacked.map(|_| ())
            })
        }
    };
    let code = crate::exec::client::run_with(conn, vec![OLD_HOST_ARGV.to_owned()], what, io).await;
    signals.abort();
    let here = tokio::task::spawn_blocking(move || worker.join())
        .await
        .map_err(anyhow::Error::from)?
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the copy's local side panicked")));
    match code? {
        0 => here.map_err(CopyError::Here),
        code => Err(CopyError::Remote(code)),
    }
}

/// A progress bar on stderr when it is a terminal (none otherwise): bytes,
/// rate and, when the size is known, the time left.
fn progress(total: Option<u64>) -> Option<indicatif::ProgressBar> {
    if !rustix::termios::isatty(std::io::stderr()) {
        return None;
    }
    let (bar, template) = match total {
        Some(total) => (
            indicatif::ProgressBar::new(total),
            "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        ),
        None => (
            indicatif::ProgressBar::new_spinner(),
            "{spinner} {bytes} {binary_bytes_per_sec}",
        ),
    };
    let style = indicatif::ProgressStyle::with_template(template).expect("a valid template");
    bar.set_style(style);
    Some(bar)
}

/// The bytes of the files under `paths` (what a tar stream of them
/// carries, headers aside).
fn total_size(paths: &[PathBuf]) -> u64 {
    let mut total = 0;
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            stack.extend(
                std::fs::read_dir(&p)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    total
}

/// Ctrl-C and SIGTERM of this process, to the helper on the machine.
async fn forward_interrupt(tx: tokio::sync::mpsc::Sender<crate::exec::proto::ClientMsg>) {
    let Some(mut interrupts) = crate::exec::client::Interrupts::new() else {
        return;
    };
    loop {
        let signal = interrupts.next().await;
        if tx
            .send(crate::exec::proto::ClientMsg::Signal { signal })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// `malai copy-helper receive DEST` and `send [-r] PATH...` (hidden): the
/// machine's side of a copy, which the exec host starts as the machine's
/// user with the stream on stdin or stdout.
#[derive(Debug, clap::Subcommand)]
pub enum Helper {
    /// Reads a tar stream on stdin into DEST.
    Receive { dest: PathBuf },
    /// Writes PATHs as a tar stream on stdout.
    Send {
        #[arg(short, long)]
        recursive: bool,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

/// Runs the machine's side of a copy.
pub fn run_helper(helper: Helper) -> anyhow::Result<u8> {
    match helper {
        Helper::Receive { dest } => {
            crate::copy::unpack::unpack(std::io::stdin().lock(), &dest)?;
        }
        Helper::Send { recursive, paths } => {
            crate::copy::pack::pack(&paths, recursive, std::io::stdout().lock())?;
        }
    }
    Ok(crate::exit::OK)
}
