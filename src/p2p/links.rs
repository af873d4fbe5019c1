//! The peers one cluster identity has talked to, for `malai status`: each
//! connection the endpoint completes (dialled or accepted) is recorded by
//! a weak handle, so the record never keeps a connection open. A peer
//! reports the selected path of its open connections ("relay" while any of
//! them is still on the relay, else "direct") and its RTT; the record keeps
//! the last contact after they closed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use iroh::endpoint::{Connection, WeakConnectionHandle};

use crate::identity::Id52;

/// At most this many peers are remembered; the oldest contact goes first.
const MAX_PEERS: usize = 1024;

/// How one peer was reached, as status shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub id52: String,
    /// "direct", "relay", or "closed" (no connection open now).
    pub path: &'static str,
    /// Round-trip time on the selected path, when a connection is open.
    pub rtt_ms: Option<f64>,
    /// When a connection to it was last seen open (Unix seconds).
    pub last_contact: u64,
}

#[derive(Debug)]
struct Entry {
    conns: Vec<WeakConnectionHandle>,
    path: &'static str,
    rtt_ms: Option<f64>,
    last_contact: SystemTime,
}

/// The record of one endpoint; cheap to clone. A std `Mutex`: held only to
/// copy entries in and out, never across an `.await`.
#[derive(Debug, Clone, Default)]
pub struct Links(Arc<Mutex<BTreeMap<Id52, Entry>>>);

impl Links {
    /// Records a connection that just completed its handshake.
    pub fn record(&self, conn: &Connection) {
        let peer = Id52::from_public_key(conn.remote_id());
        let mut links = self.0.lock().expect("links lock");
        if links.len() >= MAX_PEERS && !links.contains_key(&peer) {
            let oldest = links
                .iter()
                .min_by_key(|(_, e)| e.last_contact)
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                links.remove(&id);
            }
        }
        let entry = links.entry(peer).or_insert_with(|| Entry {
            conns: Vec::new(),
            path: "closed",
            rtt_ms: None,
            last_contact: SystemTime::now(),
        });
        entry.conns.retain(|w| w.upgrade().is_some());
        entry.conns.push(conn.weak_handle());
        entry.last_contact = SystemTime::now();
    }

    /// Every peer recorded, with the path of a connection open to it now.
    pub fn snapshot(&self) -> Vec<Link> {
        let mut links = self.0.lock().expect("links lock");
        let now = SystemTime::now();
        links
            .iter_mut()
            .map(|(id, entry)| {
                entry.conns.retain(|w| w.upgrade().is_some());
                // Of the connections open now, the one still on the relay
                // if any: "direct" means every one of them is.
                let paths: Vec<(&'static str, f64)> = entry
                    .conns
                    .iter()
                    .filter_map(WeakConnectionHandle::upgrade)
                    .filter(|c| c.close_reason().is_none())
                    .filter_map(|c| selected_path(&c))
                    .collect();
                match paths.iter().find(|(p, _)| *p == "relay").or(paths.first()) {
                    Some((path, rtt_ms)) => {
                        entry.path = path;
                        entry.rtt_ms = Some(*rtt_ms);
                        entry.last_contact = now;
                    }
                    None => {
                        entry.path = "closed";
                        entry.rtt_ms = None;
                    }
                }
                Link {
                    id52: id.to_string(),
                    path: entry.path,
                    rtt_ms: entry.rtt_ms,
                    last_contact: entry
                        .last_contact
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                }
            })
            .collect()
    }
}

/// The selected path of `conn`: direct or through a relay, and its RTT.
pub fn selected_path(conn: &Connection) -> Option<(&'static str, f64)> {
    let paths = conn.paths();
    let path = paths.iter().find(|p| p.is_selected())?;
    let kind = if path.is_relay() { "relay" } else { "direct" };
    Some((kind, path.rtt().as_secs_f64() * 1000.0))
}
