//! `malai machine init <cm-id52> <cluster>`: join a cluster as a machine. It
//! creates this device's identity for the cluster and prints the snippet the
//! admin adds to the CM's cluster.toml.

use std::net::SocketAddr;

use clap::Subcommand;
use serde_json::json;

use crate::exit::Failure;
use crate::home::{self, ClusterInfo, Home, InfoCm};
use crate::identity::Id52;

#[derive(Debug, Subcommand)]
pub enum MachineCommand {
    /// Join a cluster: create this device's identity for it.
    Init {
        /// The cluster manager's id52, as `malai cluster init` printed it.
        cm_id52: String,
        /// Local name of the cluster on this device, e.g. `company`.
        cluster: String,
        /// An address where the cluster manager can be reached (IP:PORT);
        /// repeat for several.
        #[arg(long = "cm-addr", value_name = "IP:PORT")]
        cm_addr: Vec<SocketAddr>,
        /// The cluster's relay (https://HOST:PORT), to reach the cluster
        /// manager through with no address; the cluster's config names it
        /// from then on.
        #[arg(long, value_name = "URL")]
        relay: Option<String>,
        /// PEM file of the CA that signed the relay's certificate.
        #[arg(long, value_name = "FILE", requires = "relay")]
        relay_ca: Option<std::path::PathBuf>,
        /// The machine name to suggest in the snippet (default: host name).
        #[arg(long)]
        name: Option<String>,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: MachineCommand) -> anyhow::Result<u8> {
    let MachineCommand::Init {
        cm_id52,
        cluster,
        cm_addr,
        relay,
        relay_ca,
        name,
        json,
    } = cmd;
    let cm: Id52 = cm_id52
        .parse()
        .map_err(|e| Failure::usage(format!("cluster manager id52 {cm_id52:?}: {e}")))?;
    let name = match name {
        Some(n) => n,
        None => suggested_name(),
    };
    if let Some(why) = crate::config::names::name_error(&name) {
        return Err(Failure::usage(format!("machine name {name:?}: {why}; pass --name")).into());
    }
    if crate::config::names::looks_like_id52(&name) {
        // The CM's validation refuses such an alias (it would shadow an
        // id52); say so now rather than print a snippet that cannot be used.
        return Err(Failure::usage(format!(
            "machine name {name:?} looks like an id52; pass a shorter --name"
        ))
        .into());
    }
    let network = match relay {
        None => None,
        Some(url) => {
            crate::config::relay::check_url(&url).map_err(Failure::usage)?;
            let relay_ca = match relay_ca {
                None => None,
                Some(path) => {
                    let pem = std::fs::read_to_string(&path).map_err(|e| {
                        Failure::usage(format!("--relay-ca {}: {e}", path.display()))
                    })?;
                    crate::config::relay::certificates(&pem).map_err(|e| {
                        Failure::usage(format!("--relay-ca {}: {e}", path.display()))
                    })?;
                    Some(pem)
                }
            };
            Some(home::InfoNetwork {
                relay: url,
                relay_ca,
            })
        }
    };
    let home = Home::resolve()?;
    let (dir, identity) = home::create_cluster_dir(&home, &cluster)?;
    let info = ClusterInfo {
        cluster_manager: InfoCm {
            id52: cm.to_string(),
            addrs: cm_addr,
        },
        network,
    };
    home::write_info(&dir, &info)?;
    // Root on a device with the privileged helper: it trusts this CM key.
    crate::helper::pin::pin_new_cluster(&home, &cluster)?;
    let id52 = identity.id52();
    let snippet = format!(
        "[machine.{name}]\nid52 = \"{id52}\"\n# addrs = [\"IP:PORT\"]     # where this machine can be reached, if known\n# allow_from = \"admins\"     # who may run commands here\n"
    );
    if json {
        super::print_json(&json!({
            "cluster": cluster,
            "role": "waiting",
            "id52": id52.to_string(),
            "cluster_manager": cm.to_string(),
            "snippet": snippet,
        }));
    } else {
        println!("Joined cluster {cluster:?} as a machine, waiting for its config.");
        println!("id52: {id52}\n");
        println!(
            "Add this to cluster.toml on the cluster manager, then run `malai rescan` there:\n"
        );
        print!("{snippet}");
    }
    Ok(crate::exit::OK)
}

/// The host name, made into a valid machine name, or "machine".
fn suggested_name() -> String {
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let short = host.split('.').next().unwrap_or("").to_ascii_lowercase();
    let cleaned: String = short
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if crate::config::names::name_error(&cleaned).is_none() {
        cleaned
    } else {
        "machine".into()
    }
}
