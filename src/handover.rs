//! The cluster manager's key handovers: each rotation of the CM's key adds
//! a link `{from, to}` signed by the old key to `handovers.json`, and keeps
//! the old key in `retired/ID52.key` so that the CM can still reach, as that
//! key, a machine that knows only it. A machine follows the chain from the
//! CM key it knows to the newest; forging a link needs an old CM key.
//!
//! Rotation is key hygiene, not recovery: whoever holds a retired key can
//! still sign a link from it (README, "a stolen CM key").

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::identity::{Id52, Identity};

pub const HANDOVERS_FILE: &str = "handovers.json";
pub const RETIRED_DIR: &str = "retired";

/// One handover: the CM key `from` hands the cluster to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub from: String,
    pub to: String,
    /// Hex of `from`'s signature of `message(from, to)`.
    pub signature: String,
}

/// What the old key signs.
fn message(from: &str, to: &str) -> Vec<u8> {
    format!("malai handover 1\nfrom {from}\nto {to}\n").into_bytes()
}

impl Link {
    /// `old` hands over to `new`.
    pub fn sign(old: &Identity, new: &Id52) -> Link {
        let (from, to) = (old.id52().to_string(), new.to_string());
        let signature = data_encoding::HEXLOWER.encode(&old.sign(&message(&from, &to)));
        Link {
            from,
            to,
            signature,
        }
    }

    /// The two keys, when `from` signed this link.
    pub fn verify(&self) -> Result<(Id52, Id52), String> {
        let from: Id52 = self
            .from
            .parse()
            .map_err(|e| format!("handover from {:?}: {e}", self.from))?;
        let to: Id52 = self
            .to
            .parse()
            .map_err(|e| format!("handover to {:?}: {e}", self.to))?;
        let sig: Option<[u8; 64]> = data_encoding::HEXLOWER_PERMISSIVE
            .decode(self.signature.as_bytes())
            .ok()
            .and_then(|b| b.try_into().ok());
        if !sig.is_some_and(|sig| from.verify(&message(&self.from, &self.to), &sig)) {
            return Err(format!(
                "the handover {from} -> {to} is not signed by {from}"
            ));
        }
        Ok((from, to))
    }
}

/// The links `chain` leads along from `from`, in order, each checked: a
/// machine that knows `from` may trust the key each one reaches. Empty when
/// no link leaves `from`; an error when a link on the way does not verify.
pub fn follow(chain: &[Link], from: &Id52) -> Result<Vec<(Id52, Link)>, String> {
    let mut reached: Vec<(Id52, Link)> = Vec::new();
    let mut at = *from;
    // Each step moves to a key not seen before, so a loop ends.
    while let Some(link) = chain.iter().find(|l| l.from == at.to_string()) {
        let (_, to) = link.verify()?;
        if to == *from || reached.iter().any(|(k, _)| *k == to) {
            return Err(format!("the handovers loop back to {to}"));
        }
        reached.push((to, link.clone()));
        at = to;
    }
    Ok(reached)
}

/// The newest key `chain` leads to from `from` (`from` itself when none).
pub fn newest(chain: &[Link], from: &Id52) -> Result<Id52, String> {
    Ok(follow(chain, from)?.last().map_or(*from, |(k, _)| *k))
}

/// Whether `to` is `from` or a key `chain` leads to from it.
pub fn leads_to(chain: &[Link], from: &Id52, to: &Id52) -> bool {
    from == to || follow(chain, from).is_ok_and(|keys| keys.iter().any(|(k, _)| k == to))
}

/// The handovers kept in cluster directory `dir` (none when the file is
/// missing).
pub fn read(dir: &Path) -> anyhow::Result<Vec<Link>> {
    let path = dir.join(HANDOVERS_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a list of handovers", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Replaces the handovers of `dir` (atomic, durable; readable by the
/// privileged helper, secret to nobody: links are public).
pub fn write(dir: &Path, chain: &[Link]) -> anyhow::Result<()> {
    let path = dir.join(HANDOVERS_FILE);
    let text = serde_json::to_vec_pretty(chain).expect("links serialize");
    fsutil::write_atomic(&path, &text, 0o644).with_context(|| format!("writing {}", path.display()))
}

/// Where the CM keeps its retired key `id`.
pub fn retired_path(dir: &Path, id: &Id52) -> PathBuf {
    dir.join(RETIRED_DIR).join(format!("{id}.key"))
}

/// Keeps `key` as a retired key of `dir` (0600 in a 0700 directory).
pub fn retire(dir: &Path, key: &Identity) -> anyhow::Result<()> {
    let retired = dir.join(RETIRED_DIR);
    if !retired.is_dir() {
        fsutil::create_dir_durable(&retired, 0o700)
            .with_context(|| format!("creating {}", retired.display()))?;
    }
    key.store(&retired_path(dir, &key.id52()))?;
    Ok(())
}

/// The retired key `id` of `dir`.
pub fn retired_key(dir: &Path, id: &Id52) -> anyhow::Result<Identity> {
    let path = retired_path(dir, id);
    Identity::load(&path).with_context(|| format!("the retired key {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_is_followed_from_any_key_on_it_and_a_forged_link_stops_it() {
        let (k1, k2, k3) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let chain = vec![Link::sign(&k1, &k2.id52()), Link::sign(&k2, &k3.id52())];
        let keys: Vec<Id52> = follow(&chain, &k1.id52())
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![k2.id52(), k3.id52()]);
        assert!(leads_to(&chain, &k1.id52(), &k3.id52()));
        assert!(!leads_to(&chain, &k3.id52(), &k1.id52()));
        assert_eq!(newest(&chain, &k2.id52()).unwrap(), k3.id52());
        assert_eq!(newest(&chain, &k3.id52()).unwrap(), k3.id52());
        let stranger = Identity::generate();
        assert!(follow(&chain, &stranger.id52()).unwrap().is_empty());

        // k2's link claimed by someone else: signed by the stranger.
        let mut forged = chain.clone();
        forged[1].signature = Link::sign(&stranger, &k3.id52()).signature;
        let err = follow(&forged, &k1.id52()).unwrap_err();
        assert!(err.contains("not signed by"), "{err}");
        // A link whose target was changed after signing.
        let mut moved = chain.clone();
        moved[0].to = stranger.id52().to_string();
        assert!(follow(&moved, &k1.id52()).is_err());
        assert!(!leads_to(&moved, &k1.id52(), &stranger.id52()));
        // A loop ends.
        let looped = vec![Link::sign(&k1, &k2.id52()), Link::sign(&k2, &k1.id52())];
        assert!(follow(&looped, &k1.id52()).unwrap_err().contains("loop"));
    }

    #[test]
    fn retired_keys_and_handovers_round_trip_through_their_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_empty());
        let (k1, k2) = (Identity::generate(), Identity::generate());
        let chain = vec![Link::sign(&k1, &k2.id52())];
        write(dir.path(), &chain).unwrap();
        assert_eq!(read(dir.path()).unwrap(), chain);
        retire(dir.path(), &k1).unwrap();
        assert_eq!(
            retired_key(dir.path(), &k1.id52()).unwrap().id52(),
            k1.id52()
        );
        assert!(retired_key(dir.path(), &k2.id52()).is_err());
    }
}
