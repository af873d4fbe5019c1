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
    /// Validate, and list who gains and loses what against the config in
    /// force (commands, shell, services, editing); change nothing.
    #[arg(long, conflicts_with = "check")]
    pub plan: bool,
    /// With --plan: one JSON object on stdout.
    #[arg(long, requires = "plan")]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let home = Home::resolve()?;
    if args.plan {
        return plan(&home, args.cluster.as_deref(), args.json);
    }
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

/// `--plan`: each CM's cluster.toml against the copy put in force last
/// (`committed.toml`), shown even when its `[[test]]` tables fail (which
/// then fail the command, 78).
fn plan(home: &Home, only: Option<&str>, json: bool) -> anyhow::Result<u8> {
    let aliases = match only {
        Some(alias) => vec![alias.to_owned()],
        None => home.cluster_aliases()?,
    };
    let mut diags = Diagnostics::default();
    for alias in aliases {
        let dir = home.cluster_dir(&alias);
        let path = dir.join(home::CLUSTER_FILE);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let in_force = dir.join(crate::cluster::IN_FORCE_FILE);
        let before = match std::fs::read_to_string(&in_force) {
            Ok(old) => Some(
                crate::config::cluster::parse(&in_force, &old, crate::config::FileKind::Cluster)
                    .map_err(invalid)?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("{alias}: no config was put in force yet: every right is new");
                None
            }
            Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", in_force.display())),
        };
        eprintln!("{alias}:");
        if let Err(d) = crate::plan::show(before.as_ref(), &path, &text, json) {
            diags.extend(d);
        }
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
