//! `malai machine init <cm-id52> <cluster>`: join a cluster as a machine. It
//! creates this device's identity for the cluster and prints the snippet the
//! admin adds to the CM's cluster.toml. `malai machine join <ticket>`: the
//! same with an invite, and the CM adds the machine itself (`join`).

use std::net::SocketAddr;

use clap::Subcommand;
use serde_json::json;

use crate::exit::Failure;
use crate::home::{self, ClusterInfo, Home, InfoCm};
use crate::identity::Id52;
use crate::join::client::Outcome;
use crate::join::ticket::Ticket;

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
    /// Join a cluster with a ticket from `malai cluster invite`: the
    /// cluster manager adds this machine itself.
    Join {
        /// The ticket, `malai-invite-1:...`.
        ticket: String,
        /// This device's local name for the cluster (default: its name on
        /// the cluster manager).
        #[arg(long)]
        alias: Option<String>,
        /// The machine name to ask for (default: host name); the invite's
        /// --name wins.
        #[arg(long)]
        name: Option<String>,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: MachineCommand) -> anyhow::Result<u8> {
    let (cm_id52, cluster, cm_addr, relay, relay_ca, name, json) = match cmd {
        MachineCommand::Init {
            cm_id52,
            cluster,
            cm_addr,
            relay,
            relay_ca,
            name,
            json,
        } => (cm_id52, cluster, cm_addr, relay, relay_ca, name, json),
        MachineCommand::Join {
            ticket,
            alias,
            name,
            json,
        } => return join(&ticket, alias, name, json),
    };
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

/// `machine join`: the cluster directory and identity, then the join; a
/// refused join leaves nothing behind but a key that was imported.
fn join(text: &str, alias: Option<String>, name: Option<String>, json: bool) -> anyhow::Result<u8> {
    let ticket = Ticket::decode(text).map_err(Failure::usage)?;
    let cluster = alias.unwrap_or_else(|| ticket.cluster.clone());
    let name = name.unwrap_or_else(suggested_name);
    let home = Home::resolve()?;
    let local = home
        .local_config()
        .map_err(|d| Failure::new(crate::exit::CONFIG, format!("malai.toml is invalid:\n{d}")))?;
    let imported = home::is_key_only(&home.cluster_dir(&cluster));
    let (dir, identity) = home::create_cluster_dir(&home, &cluster)?;
    let info = ClusterInfo {
        cluster_manager: InfoCm {
            id52: ticket.cm.clone(),
            addrs: ticket.addrs.clone(),
        },
        network: ticket.relay.clone().map(|relay| home::InfoNetwork {
            relay,
            relay_ca: ticket.relay_ca.clone(),
        }),
    };
    let undo = |dir: &std::path::Path| {
        if imported {
            let _ = std::fs::remove_file(dir.join(home::INFO_FILE));
        } else {
            let _ = std::fs::remove_dir_all(dir);
        }
    };
    let port = local.network.ports.get(&cluster).copied().unwrap_or(0);
    let outcome = super::runtime()?.block_on(crate::join::client::join(
        &identity,
        &ticket,
        &local.network,
        port,
        &name,
        |approval| {
            eprintln!(
                "waiting for approval: on the cluster manager run `malai cluster invite {} --approve {approval}`",
                ticket.cluster
            );
        },
    ));
    let (machine, version) = match outcome {
        Ok(Outcome::Joined { machine, version }) => (machine, version),
        Ok(Outcome::Refused(reason)) => {
            undo(&dir);
            return Err(Failure::new(
                crate::exit::DENIED,
                format!("the cluster manager refused the join: {reason}"),
            )
            .into());
        }
        Err(e) => {
            undo(&dir);
            return Err(e);
        }
    };
    home::write_info(&dir, &info)?;
    crate::helper::pin::pin_new_cluster(&home, &cluster)?;
    let id52 = identity.id52();
    // A daemon of this home starts the new cluster now.
    let rescan = super::route::Route::find(&home).and_then(|r| r.rescan());
    if json {
        super::print_json(&json!({
            "cluster": cluster,
            "role": "waiting",
            "id52": id52.to_string(),
            "cluster_manager": ticket.cm,
            "machine": machine,
            "config_version": version,
        }));
    } else {
        eprintln!(
            "Joined cluster {cluster:?} as machine {machine:?} (config version {version}); id52 {id52}."
        );
        match rescan {
            Ok(super::route::RescanRoute::Files) => eprintln!(
                "No daemon runs here: start it (`systemctl start malai`, or `malai daemon`) to receive the config."
            ),
            Ok(_) => eprintln!("The daemon here took the new cluster; its config follows."),
            Err(e) => eprintln!("warning: could not ask the daemon to rescan: {e:#}"),
        }
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
