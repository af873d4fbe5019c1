//! The command line: clap definitions and dispatch. Each verb lives in its own
//! file with an `Args` struct and a `run` that only turns arguments into
//! library calls.

use std::sync::OnceLock;

use clap::{Parser, Subcommand};

pub mod acl;
pub mod cluster;
pub mod complete;
pub mod config;
pub mod cp;
pub mod daemon;
pub mod forward;
pub mod generate;
pub mod helper;
pub mod identity;
pub mod invite;
pub mod ls;
pub mod machine;
pub mod recordings;
pub mod rescan;
pub mod route;
pub mod status;

#[derive(Debug, Parser)]
#[command(
    name = "malai",
    version,
    about = "Run commands on, and reach services of, your machines over an encrypted peer-to-peer network",
    long_about = None,
    allow_external_subcommands = true,
    after_help = "Remote commands:\n  malai <machine>.<cluster> [--] <cmd> [args]...   run a command\n  malai <machine>.<cluster>                        open a shell\n  malai <alias> [args]...                          an alias from malai.toml\n  malai -t <machine>.<cluster> <cmd>...            a command on a PTY (top, sudo)\n  malai [-j N] [--timeout 30s] [--json] <m1>,<m2>.<cluster> <cmd>...\n                                                   one command on many machines\n                                                   (also @all.<cluster>, @<group>.<cluster>)\n\nmalai as ssh (README, \"Where ssh is a transport\"):\n  GIT_SSH_COMMAND=malai git clone <machine>.<cluster>:/srv/repo.git\n  rsync -e malai, scp -S malai, sftp -S malai, Ansible's -c malai"
)]
pub struct Cli {
    /// Say more about what malai does (route taken, connections).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Run the command on a PTY (a terminal program: top, a sudo prompt):
    /// when stdin is a terminal; -tt even when it is not. Needs the right
    /// to a shell there, or a command rule with allow_pty.
    #[arg(short = 't', action = clap::ArgAction::Count)]
    pub tty: u8,

    /// Fan-out: run on at most N machines at once.
    #[arg(short = 'j', long = "jobs", value_name = "N", default_value_t = crate::fanout::DEFAULT_JOBS,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,

    /// Fan-out: each machine's bound, from dial to exit (e.g. 30s, 5m);
    /// past it the machine is reported timed out and its command stopped.
    #[arg(long, value_name = "DURATION", value_parser = crate::config::duration::parse)]
    pub timeout: Option<std::time::Duration>,

    /// Fan-out: one JSON object on stdout (machines, each with exit,
    /// stdout, stderr, error) instead of prefixed lines and a summary.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub ssh: SshFlags,

    #[command(subcommand)]
    pub command: Command,
}

/// ssh's options as tools that run "an ssh" pass them (git, rsync -e,
/// scp -S, sftp -S): see `ssh_compat` and the README's "Where ssh is a
/// transport".
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "ssh-compatible options (for git, rsync, scp, sftp)")]
pub struct SshFlags {
    /// No PTY, even with -t (ssh's -T).
    #[arg(short = 'T')]
    pub no_tty: bool,

    /// The command is a subsystem: `sftp` runs the machine's sftp_server
    /// (decided as any command there).
    #[arg(short = 's')]
    pub subsystem: bool,

    /// Run as USER: refused by the machine unless its ACL runs the command
    /// as USER (malai never switches to a user the ACL did not choose).
    /// Also `USER@MACHINE.CLUSTER`.
    #[arg(short = 'l', value_name = "USER")]
    pub login: Option<String>,

    /// An ssh option (Key=Value): the harmless ones are accepted and
    /// ignored, anything else is refused by name.
    #[arg(short = 'o', value_name = "OPTION")]
    pub options: Vec<String>,

    /// Accepted for ssh's sake: malai forwards no X11 (-x), no agent (-a);
    /// -q, -4, -6 change nothing.
    #[arg(short = 'x', hide = true)]
    pub no_x11: bool,
    #[arg(short = 'a', hide = true)]
    pub no_agent: bool,
    #[arg(short = 'q', hide = true)]
    pub quiet: bool,
    #[arg(short = '4', hide = true)]
    pub ipv4: bool,
    #[arg(short = '6', hide = true)]
    pub ipv6: bool,

    /// ssh's -G (print its configuration): malai has none, and fails, so
    /// that git treats it as a simple ssh.
    #[arg(short = 'G', hide = true)]
    pub print_config: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Explain the cluster's rules: who may do what, and why.
    #[command(subcommand)]
    Acl(acl::AclCommand),
    /// Create and manage clusters this device manages.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Join clusters as a machine.
    #[command(subcommand)]
    Machine(machine::MachineCommand),
    /// Download, upload, edit and validate a cluster's config.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Run the daemon in the foreground (as systemd does).
    Daemon(daemon::Args),
    /// List, export and import this device's cluster identities.
    #[command(subcommand)]
    Identity(identity::IdentityCommand),
    /// Copy files to or from a machine: SRC... MACHINE.CLUSTER:PATH, or
    /// MACHINE.CLUSTER:PATH... DST (-r for directories).
    Cp(cp::Args),
    /// The machine's side of `malai cp` (run by the exec host).
    #[command(subcommand, hide = true)]
    CopyHelper(cp::Helper),
    /// Show what is forwarded where (local listeners to cluster services).
    #[command(subcommand)]
    Forward(forward::ForwardCommand),
    /// The machines this device knows: whether each answers now (round
    /// trip, direct or relay) and what this device may do there.
    Ls(ls::Args),
    /// The session recordings kept here (as a cluster's recorder).
    #[command(subcommand)]
    Recordings(recordings::RecordingsCommand),
    /// Validate config files; without --check also apply them.
    Rescan(rescan::Args),
    /// Show clusters, roles, config versions and sync state.
    Status(status::Args),
    /// The privileged helper of the system service, and its pins.
    #[command(subcommand)]
    Helper(helper::HelperCommand),
    /// Write man pages and shell completions into a directory (packaging).
    #[command(hide = true)]
    Generate(generate::Args),
    /// The targets that start with a word (for the shell completions).
    #[command(hide = true)]
    Complete(complete::Args),
    /// `malai <machine>.<cluster> cmd...` or `malai <alias> args...`.
    #[command(external_subcommand)]
    Remote(Vec<String>),
}

impl SshFlags {
    /// Whether any was given.
    fn any(&self) -> bool {
        let SshFlags {
            no_tty,
            subsystem,
            login,
            options,
            no_x11,
            no_agent,
            quiet,
            ipv4,
            ipv6,
            print_config,
        } = self;
        *no_tty
            || *subsystem
            || login.is_some()
            || !options.is_empty()
            || *no_x11
            || *no_agent
            || *quiet
            || *ipv4
            || *ipv6
            || *print_config
    }
}

/// Runs the parsed command line; the result's error carries the exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    if cli.ssh.any() && !matches!(cli.command, Command::Remote(_)) {
        return Err(crate::exit::Failure::usage(
            "ssh's options (-T, -s, -l, -o, -x, -a, -q, -4, -6, -G) are for a remote command",
        )
        .into());
    }
    match cli.command {
        Command::Acl(cmd) => acl::run(cmd),
        Command::Cluster(cmd) => cluster::run(cmd),
        Command::Machine(cmd) => machine::run(cmd),
        Command::Config(cmd) => config::run(cmd),
        Command::Daemon(args) => daemon::run(args),
        Command::Forward(cmd) => forward::run(cmd),
        Command::Cp(args) => cp::run(args),
        Command::CopyHelper(helper) => cp::run_helper(helper),
        Command::Identity(cmd) => identity::run(cmd),
        Command::Ls(args) => ls::run(args),
        Command::Recordings(cmd) => recordings::run(cmd),
        Command::Rescan(args) => rescan::run(args),
        Command::Status(args) => status::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Complete(args) => complete::run(args),
        Command::Helper(cmd) => helper::run(cmd),
        Command::Remote(words) => {
            let (words, ssh) = route::SshAsk::from_flags(&cli.ssh, words)?;
            let home = crate::home::Home::resolve()?;
            let given =
                cli.jobs != crate::fanout::DEFAULT_JOBS || cli.timeout.is_some() || cli.json;
            let opts = route::RemoteOptions {
                verbose: cli.verbose,
                tty: if cli.ssh.no_tty { 0 } else { cli.tty },
                ssh,
                fan: crate::fanout::Options {
                    jobs: usize::from(cli.jobs),
                    timeout: cli.timeout.unwrap_or(crate::fanout::DEFAULT_TIMEOUT),
                    json: cli.json,
                },
                fan_given: given,
            };
            route::Route::for_exec(&home)?.exec(&words, &opts)
        }
    }
}

/// The tokio runtime of a command (one verb of the CLI), made on first
/// use: one thread, the process's own (blocking work still goes to
/// tokio's pool). A command's work is one conversation with a daemon or a
/// peer; a multi-threaded runtime's workers cost a warm `malai MACHINE
/// true` 0.5 ms and 0.6 ms of CPU (measured side by side). A static, never
/// dropped: exiting never waits for a task still blocked in a read of
/// stdin.
pub fn runtime() -> anyhow::Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    made_once(&RUNTIME, tokio::runtime::Builder::new_current_thread)
}

/// The tokio runtime of a service (the daemon, the helper, a forward the
/// CLI serves): one worker unless `TOKIO_WORKER_THREADS` asks for more.
/// A stream through the daemon then hands no work between threads: 1 GiB
/// through it moved at 0.87-0.92x ssh's rate with two workers and
/// 0.97-1.06x with one, for less CPU (docs/BENCHMARKS.md, sixth pass).
/// Work that blocks (an fsync, a lock) leaves the worker to the other
/// tasks (`fsutil::blocking`); the process's main thread runs the
/// daemon's control loop beside it.
pub fn service_runtime() -> anyhow::Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    made_once(&RUNTIME, || {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
            builder.worker_threads(1);
        }
        builder
    })
}

/// The runtime in `cell`, built by `builder` (all drivers on) the first
/// time.
fn made_once(
    cell: &'static OnceLock<tokio::runtime::Runtime>,
    builder: fn() -> tokio::runtime::Builder,
) -> anyhow::Result<&'static tokio::runtime::Runtime> {
    if let Some(rt) = cell.get() {
        return Ok(rt);
    }
    let rt = builder().enable_all().build()?;
    Ok(cell.get_or_init(|| rt))
}

/// Logs to the journal when systemd started the daemon with its output
/// there (`JOURNAL_STREAM`), with the `MALAI_*` fields of every audit event
/// as journal fields; to stderr otherwise. `MALAI_LOG` (a tracing filter)
/// overrides the level, which is `info` for the daemon and `warn` (more with
/// -v) for everything else.
pub fn init_logging(cli: &Cli) {
    use tracing_subscriber::prelude::*;
    let service = matches!(
        cli.command,
        Command::Daemon(_) | Command::Helper(helper::HelperCommand::Serve(_))
    );
    let default = match (&cli.command, cli.verbose) {
        _ if service => "info",
        (_, 0) => "warn",
        (_, 1) => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MALAI_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{default},iroh=warn,noq=warn,noq_proto=warn"))
    });
    let to_journal = service && std::env::var_os("JOURNAL_STREAM").is_some();
    let journal = if to_journal {
        tracing_journald::layer()
            .map(|l| {
                l.with_field_prefix(None)
                    .with_syslog_identifier("malai".into())
            })
            .ok()
    } else {
        None
    };
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match journal {
        Some(layer) => registry.with(layer).try_init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(rustix::termios::isatty(std::io::stderr())),
            )
            .try_init(),
    };
}

/// Prints one JSON object on stdout.
pub fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON serializes")
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_is_a_reserved_word() {
        for sub in Cli::command().get_subcommands() {
            assert!(
                crate::config::local::RESERVED_WORDS.contains(&sub.get_name()),
                "{} must be in RESERVED_WORDS so no alias shadows it",
                sub.get_name()
            );
        }
    }
}
