//! `malai helper`: the privileged helper of the system service
//! (`malai-helper.service` runs `malai helper serve` as root on the socket
//! `malai-helper.socket` passes), and `malai helper pin`, with which root
//! tells the helper which CM key to trust for a cluster.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use crate::helper::{pin, serve, unit::Launcher};
use crate::home::Home;

#[derive(Debug, Subcommand)]
pub enum HelperCommand {
    /// Serve the daemon's requests to run commands (as root; systemd runs
    /// this from malai-helper.service).
    Serve(ServeArgs),
    /// Pin the CM key and this device's key of clusters for the helper (as
    /// root): every cluster of the home, or those named. `malai cluster
    /// init` and `machine init` as root do it for a new cluster.
    Pin {
        /// Clusters to pin; none: every cluster of the home.
        clusters: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Listen here instead of on the socket systemd passes.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The daemon's user: the only one besides root that may ask.
    #[arg(long, value_name = "USER", default_value = "malai")]
    daemon_user: String,
    /// Run each command in a control group of the subtree systemd
    /// delegated to this service (`Delegate=yes`); without it, commands
    /// with limits run as transient units, others as plain children.
    #[arg(long)]
    delegated: bool,
}

pub fn run(cmd: HelperCommand) -> anyhow::Result<u8> {
    match cmd {
        HelperCommand::Serve(args) => serve_(args),
        HelperCommand::Pin { clusters } => pin_(clusters),
    }
}

fn pin_(clusters: Vec<String>) -> anyhow::Result<u8> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("malai helper pin: run it as root (the pins are root's)");
    }
    let home = Home::resolve()?;
    let clusters = if clusters.is_empty() {
        home.cluster_aliases()?
    } else {
        clusters
    };
    let dir = pin::dir();
    for cluster in clusters {
        let p = pin::pin_cluster(&home, &dir, &cluster)
            .with_context(|| format!("pinning cluster {cluster}"))?;
        println!(
            "{cluster}: CM {} (this device {}), version {}",
            p.cm, p.me, p.version
        );
    }
    Ok(0)
}

fn serve_(args: ServeArgs) -> anyhow::Result<u8> {
    let home = Home::resolve()?;
    let user = nix::unistd::User::from_name(&args.daemon_user)?
        .with_context(|| format!("no user {:?} on this machine", args.daemon_user))?;
    // Before the runtime's threads: taking it edits the environment.
    let mut inherited = listenfd::ListenFd::from_env();
    super::service_runtime()?.block_on(async {
        let listener = match &args.socket {
            Some(path) => {
                let _ = std::fs::remove_file(path);
                let l = tokio::net::UnixListener::bind(path)
                    .with_context(|| format!("binding {}", path.display()))?;
                // Who may ask is decided by SO_PEERCRED, not the mode.
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
                l
            }
            None => {
                let l = inherited
                    .take_unix_listener(0)?
                    .context("no socket: run it from malai-helper.socket, or give --socket PATH")?;
                l.set_nonblocking(true)?;
                tokio::net::UnixListener::from_std(l)?
            }
        };
        let launcher = Launcher::detect(args.delegated).await?;
        let helper = serve::Helper {
            home,
            pins: pin::dir(),
            daemon_uid: user.uid.as_raw(),
            launcher,
        };
        serve::serve(helper, listener).await?;
        Ok(0)
    })
}
