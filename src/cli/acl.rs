//! `malai acl explain PEER MACHINE.CLUSTER [-- ARGV | --shell | --service
//! NAME | --edit]`: whether the cluster's rules allow it, by which list and
//! through which groups. From cluster.toml as the CM has it (here on the
//! CM; from the CM, for config editors, elsewhere). Exit 0 allowed, 1
//! denied, 77 when this device may not read the config.

use crate::config::cluster::{self, FileKind};
use crate::exit::{DENIED, FAILURE, Failure, OK};
use crate::explain::{self, Ask};
use crate::home::Home;

#[derive(Debug, clap::Subcommand)]
pub enum AclCommand {
    /// Whether PEER may run ARGV (or open a shell, reach a service, edit
    /// the config) on MACHINE, and which rule says so.
    Explain(ExplainArgs),
}

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("what").args(["argv", "shell", "service", "edit"]).required(true))]
pub struct ExplainArgs {
    /// A machine alias, an id52, or `me` (this device).
    pub peer: String,
    /// MACHINE.CLUSTER.
    #[arg(value_parser = crate::config::Target::parse)]
    pub target: crate::config::Target,
    /// A shell on MACHINE.
    #[arg(long)]
    pub shell: bool,
    /// Service NAME (on MACHINE).
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    /// Downloading and uploading the cluster config.
    #[arg(long)]
    pub edit: bool,
    /// The command, after `--`.
    #[arg(last = true, value_name = "ARGV")]
    pub argv: Vec<String>,
}

pub fn run(cmd: AclCommand) -> anyhow::Result<u8> {
    match cmd {
        AclCommand::Explain(args) => explain_cmd(args),
    }
}

fn explain_cmd(args: ExplainArgs) -> anyhow::Result<u8> {
    let ask = match (&args.argv[..], args.shell, &args.service, args.edit) {
        ([], true, None, false) => Ask::Shell,
        ([], false, Some(name), false) => Ask::Service(name.clone()),
        ([], false, None, true) => Ask::Edit,
        (argv, false, None, false) => Ask::Argv(argv.to_vec()),
        _ => unreachable!("clap's group allows one"),
    };
    let home = Home::resolve()?;
    let mut route = super::route::Route::find(&home)?;
    let cluster = &args.target.cluster;
    let downloaded = route.download(cluster)?.map_err(|e| match e {
        crate::cluster::EditError::Denied(reason) => Failure::new(
            DENIED,
            format!("this device may not read the config of {cluster:?} (only its config editors may): {reason}"),
        ),
        other => Failure::new(FAILURE, format!("cannot read the config of {cluster:?}: {other}")),
    })?;
    let path = std::path::PathBuf::from(format!("{cluster}.toml (version {})", downloaded.version));
    let config = cluster::parse(&path, &downloaded.text, FileKind::Cluster)
        .map_err(|d| Failure::new(FAILURE, format!("the config does not validate:\n{d}")))?;
    let peer = if args.peer == "me" {
        me(&route, cluster)?
    } else {
        explain::peer(&config, &args.peer).map_err(Failure::usage)?
    };
    let e = explain::explain(&config, &args.target.machine, &peer, &ask);
    println!("{e}");
    Ok(if e.allowed() { OK } else { FAILURE })
}

/// This device's id52 in `cluster`.
fn me(route: &super::route::Route, cluster: &str) -> anyhow::Result<crate::identity::Id52> {
    let status = route.status()?;
    let id = status
        .clusters
        .iter()
        .find(|c| c.alias == cluster)
        .and_then(|c| c.id52.clone())
        .ok_or_else(|| {
            Failure::usage(format!(
                "this device has no identity in cluster {cluster:?}"
            ))
        })?;
    Ok(id
        .parse()
        .map_err(|_| Failure::new(FAILURE, format!("{id:?} is not an id52")))?)
}
