//! `malai cluster init <cluster>`: this device becomes the cluster manager of
//! a new cluster.

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
}

pub fn run(cmd: ClusterCommand) -> anyhow::Result<u8> {
    match cmd {
        ClusterCommand::Init { cluster, json } => init(&cluster, json),
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
