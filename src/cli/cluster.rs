//! `malai cluster init <cluster>`: this device becomes the cluster manager of
//! a new cluster. `malai cluster invite <cluster>`: tickets that let a new
//! device join it (`join`), and the invites' list, revocation and approval.

use clap::Subcommand;
use serde_json::json;

use crate::cluster::{Change, commit_files};
use crate::fsutil;
use crate::home::{self, Home};
use crate::state::CmState;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Create a new cluster with this device as its cluster manager.
    Init {
        /// Local name of the cluster, e.g. `company`.
        cluster: String,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Make an invite: a ticket a new device joins with (`malai machine
    /// join TICKET`); or list, revoke or approve invites.
    Invite(InviteArgs),
}

#[derive(Debug, clap::Args)]
pub struct InviteArgs {
    /// The cluster this device manages.
    pub cluster: String,
    /// The machine name the joining device gets (default: its host name).
    #[arg(long)]
    pub name: Option<String>,
    /// How long the ticket is valid: 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_name = "DURATION")]
    pub expires: String,
    /// How many devices may join with it.
    #[arg(long, default_value_t = 1)]
    pub uses: u32,
    /// Each join waits until approved with --approve.
    #[arg(long)]
    pub pending: bool,
    /// An address the cluster manager can be reached at, for the ticket
    /// (besides [cluster-manager] addrs and this cluster's fixed port);
    /// repeat for several.
    #[arg(long = "addr", value_name = "IP:PORT")]
    pub addr: Vec<std::net::SocketAddr>,
    /// List the invites and the joins waiting for approval.
    #[arg(long, conflicts_with_all = ["revoke", "approve"])]
    pub list: bool,
    /// Refuse every later join with invite ID.
    #[arg(long, value_name = "ID", conflicts_with = "approve")]
    pub revoke: Option<String>,
    /// Let the waiting join ID in.
    #[arg(long, value_name = "ID")]
    pub approve: Option<String>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: ClusterCommand) -> anyhow::Result<u8> {
    match cmd {
        ClusterCommand::Init { cluster, json } => init(&cluster, json),
        ClusterCommand::Invite(args) => super::invite::run(args),
    }
}

fn init(cluster: &str, json: bool) -> anyhow::Result<u8> {
    let home = Home::resolve()?;
    let (dir, identity) = home::create_cluster_dir(&home, cluster)?;
    let id52 = identity.id52();
    let text = format!(
        r#"# cluster.toml of cluster "{cluster}": which machines it has and who may do what.
# Validate with `malai rescan --check`, apply with `malai rescan`.

[cluster-manager]
id52 = "{id52}"
# Who may download and upload this file remotely (`malai config`):
# machine aliases, id52s or groups, comma-separated.
config_editors = ""

# Add each machine with the snippet `malai machine init` prints there, e.g.
#
# [machine.web01]
# id52 = "<id52 printed by machine init>"
# allow_from = "admins"          # who may run any command here
#
# [machine.web01.command.restart-nginx]
# command = "systemctl restart nginx"
# allow_from = "on-call"
#
# [group.admins]
# members = "laptop"
"#
    );
    let path = dir.join(home::CLUSTER_FILE);
    fsutil::write_atomic(&path, text.as_bytes(), 0o644)?;
    // Version 1, through the one commit path.
    commit_files(&dir, &id52, &mut CmState::default(), Change::Disk)?;
    // Root on a device with the privileged helper: it trusts this CM key.
    crate::helper::pin::pin_new_cluster(&home, cluster)?;

    if json {
        super::print_json(&json!({
            "cluster": cluster,
            "role": "cluster-manager",
            "id52": id52.to_string(),
            "config": path.display().to_string(),
        }));
    } else {
        println!("Created cluster {cluster:?}; this device is its cluster manager.");
        println!("id52: {id52}");
        println!("config: {}", path.display());
        println!("\nOn each machine, run:\n  malai machine init {id52} {cluster}");
        println!(
            "then add the [machine.NAME] snippet it prints to the config and run `malai rescan`."
        );
    }
    Ok(crate::exit::OK)
}
