//! `malai identity list|export|import|rotate`: this device's cluster
//! identities.
//! A key leaves only into a new 0600 file or a pipe, never onto a
//! terminal; a key comes in only from a file no one else may read, and
//! never replaces a key a cluster already knows this device by. A key
//! imported for a cluster this device has not joined waits in its own
//! directory until `malai machine init` takes it (`home::KEY_ONLY`). A
//! machine's rotation proves both keys to its CM (`sync::rotate`); the
//! CM's own is a handover its machines follow (`sync::handover`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use clap::Subcommand;
use serde_json::json;

use crate::exit::{FAILURE, Failure, OK};
use crate::fsutil;
use crate::home::{self, Home};
use crate::identity::Identity;
use crate::sync::rotate::RotateError;

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Every cluster identity of this device: cluster, role, id52.
    List {
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Write a cluster's secret key to FILE (created, mode 0600) or to
    /// stdout when it is not a terminal: a backup, or a move to new hardware.
    Export {
        cluster: String,
        /// The file to create; it must not exist.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Take a key written by `export` as this device's identity for
    /// CLUSTER: a cluster that lost its key, or one to join with it.
    Import {
        cluster: String,
        /// The key file; only its owner may read it (chmod 600).
        file: PathBuf,
    },
    /// Replace this device's key for CLUSTER. A machine's: the cluster
    /// manager learns the new one (proven by both keys) and refuses the
    /// old one. The cluster manager's: the old key signs a handover to the
    /// new one, which every machine follows when it is next reached.
    Rotate {
        cluster: String,
        /// On the cluster manager: rotate even though some machines run a
        /// malai too old to follow (they must join again afterwards).
        #[arg(long)]
        force: bool,
    },
}

pub fn run(cmd: IdentityCommand) -> anyhow::Result<u8> {
    let home = Home::resolve()?;
    match cmd {
        IdentityCommand::List { json } => list(&home, json),
        IdentityCommand::Export { cluster, output } => export(&home, &cluster, output),
        IdentityCommand::Import { cluster, file } => import(&home, &cluster, &file),
        IdentityCommand::Rotate { cluster, force } => rotate(&home, &cluster, force),
    }
}

/// Where a rotation keeps the new key until the CM has it: a run that was
/// cut off resumes with the same key.
const NEXT_KEY: &str = "identity.key.next";

fn rotate(home: &Home, cluster: &str, force: bool) -> anyhow::Result<u8> {
    // Before loading: a CM rotation cut off between its writes leaves a
    // directory that does not load, and is finished here.
    if home.cluster_dir(cluster).join(home::CLUSTER_FILE).exists() {
        return rotate_cm(home, cluster, force);
    }
    let c = home.load_cluster(cluster)?;
    match c.role {
        home::Role::Machine => {}
        home::Role::Waiting => {
            return Err(Failure::usage(format!(
                "{cluster:?} has no config from its cluster manager yet: nothing knows this key to replace"
            ))
            .into());
        }
        home::Role::ClusterManager => return rotate_cm(home, cluster, force),
    }
    let next_path = c.dir.join(NEXT_KEY);
    let new = if next_path.exists() {
        Identity::load(&next_path)?
    } else {
        let key = Identity::generate();
        key.store(&next_path)?;
        key
    };
    let local = home
        .local_config()
        .map_err(|d| Failure::new(crate::exit::CONFIG, format!("malai.toml is invalid:\n{d}")))?;
    let asked = super::runtime()?.block_on(crate::sync::rotate::ask(&c, &new, &local.network));
    match asked {
        Ok(version) => {
            std::fs::rename(&next_path, c.dir.join(home::IDENTITY_FILE))?;
            fsutil::sync_dir(&c.dir)?;
            eprintln!(
                "cluster {cluster:?}: {} -> {} (config version {version}); the old key is refused from now on",
                c.identity.id52(),
                new.id52()
            );
            match super::route::Route::find(home).and_then(|r| r.rescan()) {
                Ok(super::route::RescanRoute::Files) => {
                    eprintln!("No daemon runs here: start it to serve with the new key.");
                }
                Ok(_) => eprintln!("The daemon here serves with the new key now."),
                Err(e) => eprintln!("warning: could not ask the daemon to rescan: {e:#}"),
            }
            Ok(OK)
        }
        Err(RotateError::Refused(reason)) => {
            let _ = std::fs::remove_file(&next_path);
            Err(Failure::new(
                crate::exit::DENIED,
                format!("the cluster manager refused the rotation: {reason}"),
            )
            .into())
        }
        Err(RotateError::Unreachable(why)) => Err(Failure::new(
            crate::exit::UNAVAILABLE,
            format!("cannot ask the cluster manager: {why}"),
        )
        .into()),
    }
}

/// The cluster manager's rotation, each step safe to run again: the new
/// key waits in `identity.key.next`; the old key signs the handover
/// (`handovers.json`) and is kept in `retired/`, to reach the machines
/// that know only it; cluster.toml names the new key wherever it named the
/// old one (the one commit path, which bumps the version); then the new
/// key becomes `identity.key` and the daemon restarts the cluster on it.
/// Its pusher hands each machine over as the old key before its next push
/// (`sync::handover`).
fn rotate_cm(home: &Home, cluster: &str, force: bool) -> anyhow::Result<u8> {
    use crate::handover::{self, Link};
    let dir = home.cluster_dir(cluster);
    let old = Identity::load(&dir.join(home::IDENTITY_FILE))?;
    let state_path = dir.join(home::STATE_FILE);
    let mut ledger = crate::state::CmState::load(&state_path)?;
    let next_path = dir.join(NEXT_KEY);
    let cluster_path = dir.join(home::CLUSTER_FILE);
    let text = std::fs::read_to_string(&cluster_path)?;
    let config =
        crate::config::cluster::parse(&cluster_path, &text, crate::config::FileKind::Cluster)
            .map_err(|d| {
                Failure::new(
                    crate::exit::CONFIG,
                    format!("cluster.toml is invalid:\n{d}"),
                )
            })?;
    let too_old = cannot_follow(&ledger, &config);
    if !too_old.is_empty() && !force && !next_path.exists() {
        return Err(Failure::new(
            crate::exit::FAILURE,
            format!(
                "these machines run a malai too old to follow a new cluster manager key: {}.\n\
                 Upgrade them first, or pass --force and join them again afterwards.",
                too_old.join(", ")
            ),
        )
        .into());
    }
    let new = if next_path.exists() {
        Identity::load(&next_path)?
    } else {
        let key = Identity::generate();
        key.store(&next_path)?;
        key
    };
    let (old_id, new_id) = (old.id52(), new.id52());
    let mut chain = handover::read(&dir)?;
    let link = Link::sign(&old, &new_id);
    if !chain.iter().any(|l| l.from == link.from && l.to == link.to) {
        chain.push(link);
        handover::write(&dir, &chain)?;
    }
    handover::retire(&dir, &old)?;
    let change = crate::cluster::Change::Rename {
        old: old_id,
        new: new_id,
    };
    let (_, committed) = crate::cluster::commit_files(&dir, &new_id, &mut ledger, change)
        .map_err(|e| Failure::new(crate::exit::CONFIG, format!("cannot rotate: {e}")))?;
    std::fs::rename(&next_path, dir.join(home::IDENTITY_FILE))?;
    fsutil::sync_dir(&dir)?;
    eprintln!(
        "cluster {cluster:?}: cluster manager key {old_id} -> {new_id} (config version {}).\n\
         The old key signed the handover and is kept in {} to tell the machines that know only it;\n\
         each follows the handover when it is next reached.",
        committed.version,
        handover::retired_path(&dir, &old_id).display()
    );
    match super::route::Route::find(home).and_then(|r| r.rescan()) {
        Ok(super::route::RescanRoute::Files) => {
            eprintln!("No daemon runs here: start it to serve with the new key.");
        }
        Ok(_) => eprintln!("The daemon here serves with the new key now."),
        Err(e) => eprintln!("warning: could not ask the daemon to rescan: {e:#}"),
    }
    if let Some(pin) = crate::helper::pin::pin_new_cluster(home, cluster)? {
        eprintln!("Pinned the new key for the privileged helper ({}).", pin.cm);
    }
    Ok(OK)
}

/// The machines of `config` that told `ledger` they speak a protocol
/// older than handovers (`alias (protocol N)`); a machine never heard from
/// is not known to be old.
fn cannot_follow(
    ledger: &crate::state::CmState,
    config: &crate::config::ClusterConfig,
) -> Vec<String> {
    ledger
        .machines
        .iter()
        .filter(|(alias, m)| {
            config
                .machines
                .get(*alias)
                .is_some_and(|c| c.id52.to_string() == m.id52)
        })
        .filter(|(_, m)| m.acked_version > 0 || m.protocol.is_some())
        .filter(|(_, m)| m.protocol.unwrap_or(1) < crate::personalize::FOLLOWS_HANDOVERS)
        .map(|(alias, m)| format!("{alias} (protocol {})", m.protocol.unwrap_or(1)))
        .collect()
}

fn list(home: &Home, as_json: bool) -> anyhow::Result<u8> {
    let mut rows = Vec::new();
    for alias in home.cluster_aliases()? {
        let (role, id52) = match home.load_cluster(&alias) {
            Ok(c) => (c.role.as_str().to_owned(), Some(c.identity.id52())),
            Err(_) => {
                let key = Identity::load(&home.cluster_dir(&alias).join(home::IDENTITY_FILE));
                let role = if home::is_key_only(&home.cluster_dir(&alias)) {
                    home::KEY_ONLY
                } else {
                    "invalid"
                };
                (role.to_owned(), key.ok().map(|k| k.id52()))
            }
        };
        rows.push((alias, role, id52));
    }
    if as_json {
        let identities: Vec<_> = rows
            .iter()
            .map(|(alias, role, id)| {
                json!({"alias": alias, "role": role, "id52": id.map(|i| i.to_string())})
            })
            .collect();
        super::print_json(&json!({ "identities": identities }));
    } else if rows.is_empty() {
        eprintln!("no cluster identities in {}", home.root.display());
    } else {
        for (alias, role, id) in rows {
            let id = id.map_or_else(|| "(key unreadable)".to_owned(), |i| i.to_string());
            println!("{alias:<16} {role:<16} {id}");
        }
    }
    Ok(OK)
}

fn export(home: &Home, cluster: &str, output: Option<PathBuf>) -> anyhow::Result<u8> {
    let path = home.cluster_dir(cluster).join(home::IDENTITY_FILE);
    if !path.exists() {
        return Err(Failure::new(
            FAILURE,
            format!(
                "no identity for cluster {cluster:?} in {}",
                home.root.display()
            ),
        )
        .into());
    }
    let identity = Identity::load(&path)?;
    let text = identity.to_text();
    match output {
        Some(file) => {
            // A new file only: an existing one, or a link planted in its
            // place, is refused rather than written through.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)
                .map_err(|e| {
                    Failure::new(
                        FAILURE,
                        format!("{}: {e} (export writes a new file only)", file.display()),
                    )
                })?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                let _ = fsutil::sync_dir(dir);
            }
            eprintln!(
                "wrote the key of {} ({cluster}) to {} (mode 0600); whoever holds it is this device in the cluster",
                identity.id52(),
                file.display()
            );
        }
        None => {
            if rustix::termios::isatty(std::io::stdout()) {
                return Err(Failure::usage(
                    "refusing to print a secret key on a terminal: write it to a file with -o FILE, or pipe it",
                )
                .into());
            }
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
    }
    Ok(OK)
}

fn import(home: &Home, cluster: &str, file: &std::path::Path) -> anyhow::Result<u8> {
    // Checks the mode (owner only) and that it is a key.
    let identity = Identity::load(file).map_err(|e| Failure::new(FAILURE, e.to_string()))?;
    let dir = home.cluster_dir(cluster);
    let key_path = dir.join(home::IDENTITY_FILE);
    if let Ok(held) = Identity::load(&key_path) {
        if held.id52() == identity.id52() {
            eprintln!(
                "cluster {cluster:?} already has this identity: {}",
                held.id52()
            );
            return Ok(OK);
        }
        return Err(Failure::new(
            FAILURE,
            format!(
                "cluster {cluster:?} knows this device as {}; importing {} would replace that key. \
                 To replace it anyway, move {} away first (the cluster must then learn the new id52)",
                held.id52(),
                identity.id52(),
                key_path.display()
            ),
        )
        .into());
    }
    let joined = dir.exists();
    if !joined {
        home::create_key_only_dir(home, cluster)?;
    }
    identity.store(&key_path)?;
    if joined {
        eprintln!(
            "cluster {cluster:?}: identity {} restored; restart or rescan the daemon to use it",
            identity.id52()
        );
    } else {
        eprintln!(
            "cluster {cluster:?}: identity {} imported; join with `malai machine init CM-ID52 {cluster} ...`, which keeps it",
            identity.id52()
        );
    }
    Ok(OK)
}
