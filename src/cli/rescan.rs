//! `malai rescan [<cluster>] [--check]`: validate every cluster directory and
//! malai.toml, listing every error; without --check also apply what changed.

use super::route::RescanRoute;
use crate::cluster::{Change, commit_files};
use crate::config::Diagnostics;
use crate::home::{self, Home, Role};
use crate::state::CmState;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this cluster (default: all).
    pub cluster: Option<String>,
    /// Only validate; change nothing.
    #[arg(long)]
    pub check: bool,
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let home = Home::resolve()?;
    let (local, clusters, diags) = home::load_all(&home, args.cluster.as_deref());
    for w in local.iter().flat_map(|l| &l.warnings) {
        eprintln!("warning: {w}");
    }
    let route = if args.check {
        None
    } else {
        Some(super::route::Route::find(&home)?.rescan()?)
    };
    if let Some(RescanRoute::Bus(bus, problems)) = &route {
        eprintln!("the running daemon rescanned (asked on {bus})");
        for p in problems {
            eprintln!("daemon: {p}");
        }
    } else if let Some(RescanRoute::Daemon(pid)) = route {
        eprintln!("asked the running daemon (pid {pid}) to rescan");
    } else if route.is_some() {
        // No daemon: each CM's cluster.toml through the one commit path.
        for c in clusters.iter().filter(|c| c.role == Role::ClusterManager) {
            let mut ledger = CmState::load(&c.state_path())?;
            let old = ledger.version;
            let (_, committed) =
                commit_files(&c.dir, &c.identity.id52(), &mut ledger, Change::Disk)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", c.alias))?;
            if committed.version != old {
                eprintln!("{}: config version {old} -> {}", c.alias, committed.version);
            }
        }
    }
    for c in &clusters {
        eprintln!("{}: ok ({})", c.alias, c.role.as_str());
    }
    if diags.is_empty() {
        Ok(crate::exit::OK)
    } else {
        Err(invalid(diags))
    }
}

fn invalid(diags: Diagnostics) -> anyhow::Error {
    anyhow::Error::new(diags).context("invalid configuration")
}
