//! The cluster manager's invites, in `invites.json` of its cluster
//! directory: each invite's id, the blake3 hash of its secret (never the
//! secret), its name for the machine, expiry, uses left, whether a join
//! waits for approval, and the joins waiting. The CLI (`cluster invite`)
//! and the daemon (a join) both read-modify-write it under the cluster
//! directory's lock, atomically.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cluster::lock_dir;
use crate::fsutil;
use crate::state::unix_now;

pub const INVITES_FILE: &str = "invites.json";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invites {
    #[serde(default)]
    pub invites: Vec<Invite>,
    /// Joins of `--pending` invites, waiting for `--approve`.
    #[serde(default)]
    pub pending: Vec<PendingJoin>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    pub id: String,
    /// blake3 of the secret's text, hex.
    secret_hash: String,
    /// The machine name a join takes (default: the one the device asks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub created: u64,
    /// Unix seconds after which it is refused.
    pub expires: u64,
    pub uses_left: u32,
    /// Machines that joined with it: id52s.
    #[serde(default)]
    pub joined: Vec<String>,
    /// Each join waits for `--approve`.
    #[serde(default)]
    pub pending: bool,
    #[serde(default)]
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingJoin {
    /// What `--approve` takes.
    pub id: String,
    pub invite: String,
    pub id52: String,
    pub name: String,
    #[serde(default)]
    pub addrs: Vec<SocketAddr>,
    pub asked: u64,
    #[serde(default)]
    pub approved: bool,
}

/// A join to decide: what the device sent, and the key it proved.
#[derive(Debug, Clone)]
pub struct Redeem<'a> {
    pub invite: &'a str,
    pub secret: &'a str,
    pub id52: &'a str,
    pub name: &'a str,
    pub addrs: &'a [SocketAddr],
}

/// What became of a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed {
    /// Add the machine under this name; one use of the invite was taken.
    Admit { name: String },
    /// Waiting for `--approve APPROVAL`; `fresh` the first time it asks.
    Pending { approval: String, fresh: bool },
}

/// A new invite: its record, and the secret for the ticket.
pub fn create(
    dir: &Path,
    name: Option<String>,
    ttl: Duration,
    uses: u32,
    pending: bool,
) -> anyhow::Result<(Invite, String)> {
    let secret = random_hex(32)?;
    let now = unix_now();
    let invite = Invite {
        id: random_hex(4)?,
        secret_hash: hash(&secret),
        name,
        created: now,
        expires: now.saturating_add(ttl.as_secs()),
        uses_left: uses,
        joined: Vec::new(),
        pending,
        revoked: false,
    };
    let made = invite.clone();
    update(dir, |all| {
        all.invites.push(made);
        Ok(())
    })?;
    Ok((invite, secret))
}

/// The invites and pending joins, as they are.
pub fn load(dir: &Path) -> anyhow::Result<Invites> {
    let path = dir.join(INVITES_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{} is damaged: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Invites::default()),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

/// Refuses every later use of invite `id`.
pub fn revoke(dir: &Path, id: &str) -> anyhow::Result<Result<(), String>> {
    update(dir, |all| {
        let Some(invite) = all.invites.iter_mut().find(|i| i.id == id) else {
            return Ok(Err(format!(
                "no invite {id:?} (see `malai cluster invite CLUSTER --list`)"
            )));
        };
        invite.revoked = true;
        all.pending.retain(|p| p.invite != id);
        Ok(Ok(()))
    })
}

/// Approves the pending join `id`: the device's next ask adds it.
pub fn approve(dir: &Path, id: &str) -> anyhow::Result<Result<PendingJoin, String>> {
    update(dir, |all| {
        let Some(join) = all.pending.iter_mut().find(|p| p.id == id) else {
            return Ok(Err(format!(
                "no pending join {id:?} (see `malai cluster invite CLUSTER --list`)"
            )));
        };
        join.approved = true;
        Ok(Ok(join.clone()))
    })
}

/// Decides a join with the invite it names, at `now`: admitted (a use
/// taken), pending, or refused with the reason to log and answer.
pub fn redeem(dir: &Path, r: &Redeem<'_>, now: u64) -> anyhow::Result<Result<Redeemed, String>> {
    update(dir, |all| {
        let Some(invite) = all.invites.iter_mut().find(|i| i.id == r.invite) else {
            return Ok(Err(format!("no invite {:?}", r.invite)));
        };
        // Compared as blake3 hashes (constant time).
        if blake3::hash(r.secret.as_bytes()) != parse_hash(&invite.secret_hash) {
            return Ok(Err(format!("wrong secret for invite {}", invite.id)));
        }
        if invite.revoked {
            return Ok(Err(format!("invite {} was revoked", invite.id)));
        }
        if now > invite.expires {
            return Ok(Err(format!("invite {} expired", invite.id)));
        }
        let name = invite.name.clone().unwrap_or_else(|| r.name.to_owned());
        if invite.pending {
            let waiting = all
                .pending
                .iter()
                .position(|p| p.invite == invite.id && p.id52 == r.id52);
            match waiting {
                Some(i) if all.pending[i].approved => {
                    if invite.uses_left == 0 {
                        return Ok(Err(format!("invite {} is used up", invite.id)));
                    }
                    let join = all.pending.remove(i);
                    invite.uses_left -= 1;
                    invite.joined.push(r.id52.to_owned());
                    return Ok(Ok(Redeemed::Admit { name: join.name }));
                }
                Some(i) => {
                    return Ok(Ok(Redeemed::Pending {
                        approval: all.pending[i].id.clone(),
                        fresh: false,
                    }));
                }
                None if invite.uses_left == 0 => {
                    return Ok(Err(format!("invite {} is used up", invite.id)));
                }
                None => {
                    // A bounded queue: a leaked ticket cannot grow it.
                    if all.pending.iter().filter(|p| p.invite == invite.id).count() >= 16 {
                        return Ok(Err(format!(
                            "invite {} has 16 joins waiting for approval already",
                            invite.id
                        )));
                    }
                    let approval = random_hex(4)?;
                    all.pending.push(PendingJoin {
                        id: approval.clone(),
                        invite: invite.id.clone(),
                        id52: r.id52.to_owned(),
                        name,
                        addrs: r.addrs.to_vec(),
                        asked: now,
                        approved: false,
                    });
                    return Ok(Ok(Redeemed::Pending {
                        approval,
                        fresh: true,
                    }));
                }
            }
        }
        if invite.uses_left == 0 {
            return Ok(Err(format!("invite {} is used up", invite.id)));
        }
        invite.uses_left -= 1;
        invite.joined.push(r.id52.to_owned());
        Ok(Ok(Redeemed::Admit { name }))
    })
}

/// Gives back the use a join took when the machine could not be added.
pub fn give_back(dir: &Path, invite: &str, id52: &str) -> anyhow::Result<()> {
    update(dir, |all| {
        if let Some(i) = all.invites.iter_mut().find(|i| i.id == invite) {
            i.uses_left += 1;
            i.joined.retain(|j| j != id52);
        }
        Ok(())
    })
}

/// Reads, changes and writes invites.json under the directory's lock.
fn update<T>(
    dir: &Path,
    change: impl FnOnce(&mut Invites) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let _lock = lock_dir(dir)?;
    let mut all = load(dir)?;
    let before = all.clone();
    let out = change(&mut all)?;
    if all != before {
        let json = serde_json::to_vec_pretty(&all)?;
        fsutil::write_atomic(&dir.join(INVITES_FILE), &json, 0o600)?;
    }
    Ok(out)
}

fn hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

/// A stored hash; a damaged one matches nothing.
fn parse_hash(hex: &str) -> blake3::Hash {
    blake3::Hash::from_hex(hex).unwrap_or_else(|_| blake3::hash(b"damaged: matches no secret"))
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| anyhow::anyhow!("no randomness from the kernel: {e}"))?;
    Ok(data_encoding::HEXLOWER.encode(&buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redeem_as<'a>(invite: &'a str, secret: &'a str, id52: &'a str) -> Redeem<'a> {
        Redeem {
            invite,
            secret,
            id52,
            name: "box",
            addrs: &[],
        }
    }

    #[test]
    fn an_invite_admits_its_uses_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (inv, secret) = create(dir.path(), None, Duration::from_secs(60), 1, false).unwrap();
        let now = unix_now();
        let wrong = redeem(dir.path(), &redeem_as(&inv.id, "00", "a"), now).unwrap();
        assert!(wrong.unwrap_err().contains("wrong secret"));
        let first = redeem(dir.path(), &redeem_as(&inv.id, &secret, "a"), now).unwrap();
        assert_eq!(first, Ok(Redeemed::Admit { name: "box".into() }));
        let second = redeem(dir.path(), &redeem_as(&inv.id, &secret, "b"), now).unwrap();
        assert!(second.unwrap_err().contains("used up"));
        let late = redeem(dir.path(), &redeem_as(&inv.id, &secret, "b"), now + 61).unwrap();
        assert!(late.is_err());
        // The file holds no secret.
        let text = std::fs::read_to_string(dir.path().join(INVITES_FILE)).unwrap();
        assert!(!text.contains(&secret));
    }

    #[test]
    fn a_pending_invite_waits_for_approval_and_a_revoked_one_admits_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let (inv, secret) = create(
            dir.path(),
            Some("db1".into()),
            Duration::from_secs(60),
            1,
            true,
        )
        .unwrap();
        let now = unix_now();
        let Ok(Redeemed::Pending {
            approval,
            fresh: true,
        }) = redeem(dir.path(), &redeem_as(&inv.id, &secret, "a"), now).unwrap()
        else {
            panic!("a pending invite waits");
        };
        let again = redeem(dir.path(), &redeem_as(&inv.id, &secret, "a"), now).unwrap();
        assert_eq!(
            again,
            Ok(Redeemed::Pending {
                approval: approval.clone(),
                fresh: false
            })
        );
        approve(dir.path(), &approval).unwrap().unwrap();
        let admitted = redeem(dir.path(), &redeem_as(&inv.id, &secret, "a"), now).unwrap();
        assert_eq!(admitted, Ok(Redeemed::Admit { name: "db1".into() }));

        let (inv, secret) = create(dir.path(), None, Duration::from_secs(60), 5, false).unwrap();
        revoke(dir.path(), &inv.id).unwrap().unwrap();
        let refused = redeem(dir.path(), &redeem_as(&inv.id, &secret, "c"), now).unwrap();
        assert!(refused.unwrap_err().contains("revoked"));
    }
}
