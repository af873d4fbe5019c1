//! `malai cluster invite <cluster>`: a ticket for a new device (printed
//! once: the CM keeps only its secret's hash), and `--list`, `--revoke ID`,
//! `--approve ID`. Works on the files (`join::invites`): the daemon reads
//! them at each join.

use std::net::SocketAddr;

use serde_json::json;

use super::cluster::InviteArgs;
use crate::exit::{Failure, OK};
use crate::home::{Home, Role};
use crate::join::invites;
use crate::join::ticket::Ticket;
use crate::p2p::RelayChoice;
use crate::state::unix_now;

pub fn run(args: InviteArgs) -> anyhow::Result<u8> {
    let home = Home::resolve()?;
    let c = home.load_cluster(&args.cluster)?;
    if c.role != Role::ClusterManager {
        return Err(Failure::usage(format!(
            "{:?} is not a cluster this device manages: invites are made on its cluster manager",
            args.cluster
        ))
        .into());
    }
    let dir = &c.dir;
    if args.list {
        return list(&invites::load(dir)?, args.json);
    }
    if let Some(id) = &args.revoke {
        invites::revoke(dir, id)?.map_err(|e| Failure::new(crate::exit::FAILURE, e))?;
        eprintln!("invite {id} revoked: every later join with it is refused");
        return Ok(OK);
    }
    if let Some(id) = &args.approve {
        let join = invites::approve(dir, id)?.map_err(|e| Failure::new(crate::exit::FAILURE, e))?;
        eprintln!(
            "approved: {} joins as {:?} when it next asks (within a second if it is waiting)",
            join.id52, join.name
        );
        return Ok(OK);
    }
    if let Some(name) = &args.name
        && let Some(why) = crate::config::names::name_error(name)
    {
        return Err(Failure::usage(format!("--name {name:?}: {why}")).into());
    }
    let ttl = crate::config::duration::parse(&args.expires)
        .map_err(|e| Failure::usage(format!("--expires: {e}")))?;
    if args.uses == 0 {
        return Err(Failure::usage("--uses 0 would admit nobody").into());
    }
    let local = home
        .local_config()
        .map_err(|d| Failure::new(crate::exit::CONFIG, format!("malai.toml is invalid:\n{d}")))?;
    let config = c.config.as_ref().expect("a cluster manager has its config");
    // Where the new device finds this CM: the addresses written down, this
    // cluster's fixed port, and the relay.
    let mut addrs: Vec<SocketAddr> = config.cm_addrs.clone();
    if let Some(port) = local.network.ports.get(&c.alias)
        && !local.network.bind.is_unspecified()
    {
        addrs.push(SocketAddr::new(local.network.bind, *port));
    }
    addrs.extend(&args.addr);
    addrs.dedup();
    let (relay, relay_ca) = match RelayChoice::resolve(&local.network, c.relay.as_ref()) {
        RelayChoice::Own(own) => (Some(own.url), own.ca_pem),
        RelayChoice::Disabled | RelayChoice::Public => (None, None),
    };
    if addrs.is_empty() && relay.is_none() && !local.network.discovery {
        eprintln!(
            "warning: the ticket names no address and no relay, and discovery is off: pass --addr IP:PORT where this device can be reached"
        );
    }
    let (invite, secret) = invites::create(dir, args.name.clone(), ttl, args.uses, args.pending)?;
    let ticket = Ticket {
        cluster: c.alias.clone(),
        cm: c.identity.id52().to_string(),
        addrs,
        relay,
        relay_ca,
        invite: invite.id.clone(),
        secret,
    }
    .encode();
    if args.json {
        super::print_json(&json!({
            "cluster": c.alias,
            "id": invite.id,
            "ticket": ticket,
            "expires": invite.expires,
            "uses": invite.uses_left,
            "pending": invite.pending,
        }));
    } else {
        eprintln!(
            "Invite {} for cluster {:?}: {} use(s), valid for {}{}. On the new device run:\n",
            invite.id,
            c.alias,
            invite.uses_left,
            crate::config::duration::format(ttl),
            if invite.pending {
                ", each join waits for --approve"
            } else {
                ""
            }
        );
        println!("malai machine join {ticket}");
        eprintln!(
            "\nThe ticket is shown once; whoever holds it can join until it expires or is revoked (--revoke {}).",
            invite.id
        );
    }
    Ok(OK)
}

fn list(all: &invites::Invites, as_json: bool) -> anyhow::Result<u8> {
    let now = unix_now();
    let state = |i: &invites::Invite| {
        if i.revoked {
            "revoked"
        } else if now > i.expires {
            "expired"
        } else if i.uses_left == 0 {
            "used"
        } else {
            "open"
        }
    };
    if as_json {
        let invites: Vec<_> = all
            .invites
            .iter()
            .map(|i| {
                json!({"id": i.id, "name": i.name, "state": state(i), "uses_left": i.uses_left,
                       "expires": i.expires, "pending": i.pending, "joined": i.joined})
            })
            .collect();
        super::print_json(&json!({ "invites": invites, "pending": all.pending }));
        return Ok(OK);
    }
    if all.invites.is_empty() {
        eprintln!("no invites");
    }
    for i in &all.invites {
        let left = i.expires.saturating_sub(now);
        println!(
            "{}  {:<8} uses left {}  {}  name {}{}",
            i.id,
            state(i),
            i.uses_left,
            if left > 0 {
                format!(
                    "expires in {}",
                    crate::config::duration::format(std::time::Duration::from_secs(left))
                )
            } else {
                "expired".to_owned()
            },
            i.name.as_deref().unwrap_or("(its host name)"),
            if i.pending { "  (approval needed)" } else { "" }
        );
    }
    for p in all.pending.iter().filter(|p| !p.approved) {
        println!(
            "waiting: {}  {} as {:?} with invite {}: approve with --approve {}",
            p.id, p.id52, p.name, p.invite, p.id
        );
    }
    Ok(OK)
}
