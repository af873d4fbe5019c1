//! The helper's own decision, from files the daemon's user cannot forge: on
//! a machine, the envelope the CM signed (`machine.envelope`), verified
//! with the pinned CM key, for the pinned device key, and no older than the
//! newest version the helper has seen; on the CM, cluster.toml (not signed:
//! the CM's daemon holds the signing key, see the README). A rotation of
//! the CM's key moves the pin along the handovers the old key signed.
//! Then the same ACL the daemon ran, and the same user rule for a local
//! caller.

use std::path::Path;

use crate::acl::{self, Decision, Request as AclRequest};
use crate::cluster::envelope::Envelope;
use crate::command::spawn::{Spec, StdioMode};
use crate::config::{ClusterConfig, FileKind, Limits, cluster};
use crate::home::{CLUSTER_FILE, ENVELOPE_FILE, Home};
use crate::identity::Id52;

use super::pin::{self, Pin};
use super::proto::Request;

/// What the helper will run.
pub struct Checked {
    pub spec: Spec,
    pub limits: Limits,
    /// The config version it decided with.
    pub version: u64,
    pub reason: String,
}

/// Why the helper will not run a request.
#[derive(Debug)]
pub enum Refusal {
    /// The signed config does not allow it, or the request is malformed.
    Denied(String),
    /// The config cannot be read or trusted.
    NoConfig(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Denied(r) | Refusal::NoConfig(r) => f.write_str(r),
        }
    }
}

/// The config the helper trusts for `cluster`, and its version.
fn trusted_config(
    home: &Home,
    pins: &Path,
    cluster: &str,
) -> Result<(ClusterConfig, Id52, u64), Refusal> {
    let no = |e: String| Refusal::NoConfig(e);
    let pin = pin::read(pins, cluster).map_err(|e| no(format!("{e:#}")))?;
    let me: Id52 = pin
        .me
        .parse()
        .map_err(|_| no("the pin's own id52 is invalid".into()))?;
    let cm: Id52 = pin
        .cm
        .parse()
        .map_err(|_| no("the pin's CM id52 is invalid".into()))?;
    let dir = home.cluster_dir(cluster);
    // The CM's key handovers, as the daemon keeps them: each link is
    // signed by the key it leaves, so only a holder of a CM key the pin
    // trusts can extend the chain.
    let chain = crate::handover::read(&dir).unwrap_or_default();
    if cm == me {
        let path = dir.join(CLUSTER_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| no(format!("cannot read {}: {e}", path.display())))?;
        let config = cluster::parse(&path, &text, FileKind::Cluster)
            .map_err(|d| no(format!("{} is not valid: {d}", path.display())))?;
        let now = config.cluster_manager;
        if now != me {
            // This CM rotated its key: follow it when the old one signed.
            if !crate::handover::leads_to(&chain, &me, &now) {
                return Err(no(format!(
                    "{} names cluster manager {now}, but the helper's pin is {me} and no handover leads there; run `malai helper pin {cluster}` as root if this is right",
                    path.display()
                )));
            }
            let moved = Pin {
                cm: now.to_string(),
                me: now.to_string(),
                ..pin
            };
            pin::write(pins, cluster, &moved).map_err(|e| no(format!("{e:#}")))?;
        }
        return Ok((config, now, pin.version));
    }
    let path = dir.join(ENVELOPE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        no(format!(
            "cannot read {} ({e}): the machine has no signed config yet",
            path.display()
        ))
    })?;
    let envelope: Envelope = serde_json::from_str(&text)
        .map_err(|e| no(format!("{} is not an envelope: {e}", path.display())))?;
    // Signed by the pinned key, or by one it handed over to.
    let signer = match envelope.cluster.parse::<Id52>() {
        Ok(signer) if crate::handover::leads_to(&chain, &cm, &signer) => signer,
        _ => cm,
    };
    envelope
        .verify(&signer, &me)
        .map_err(|e| no(format!("{}: {e}", path.display())))?;
    if envelope.version < pin.version {
        return Err(no(format!(
            "{} holds version {}, older than version {} the helper has seen (a replayed config?)",
            path.display(),
            envelope.version,
            pin.version
        )));
    }
    if envelope.version > pin.version || signer != cm {
        let newer = Pin {
            cm: signer.to_string(),
            version: envelope.version,
            ..pin
        };
        pin::write(pins, cluster, &newer).map_err(|e| no(format!("{e:#}")))?;
    }
    let config = cluster::parse(&path, &envelope.config, FileKind::Machine)
        .map_err(|d| no(format!("the signed config is not valid: {d}")))?;
    Ok((config, me, envelope.version))
}

/// Decides `req` as the exec host would, from the trusted config.
pub fn check(home: &Home, pins: &Path, req: &Request) -> Result<Checked, Refusal> {
    let (config, me, version) = trusted_config(home, pins, &req.cluster)?;
    let peer: Id52 = req
        .peer
        .parse()
        .map_err(|_| Refusal::Denied(format!("{:?} is not an id52", req.peer)))?;
    if req.local_uid.is_some() && peer != me {
        return Err(Refusal::Denied(
            "a local user's command is this device's own, not another peer's".into(),
        ));
    }
    let request = match (req.argv.is_empty(), req.pty.is_some()) {
        (true, _) => AclRequest::Shell,
        (false, true) => AclRequest::PtyExec(&req.argv),
        (false, false) => AclRequest::Exec(&req.argv),
    };
    let grant = match acl::decide(&config, &me, &peer, request) {
        Decision::Deny(reason) => return Err(Refusal::Denied(reason)),
        Decision::Allow(grant) => grant,
    };
    // The daemon's word for who the local caller is: the helper cannot see
    // the D-Bus caller, so a compromised daemon can pick any local user
    // for what this device itself may run (README, "Privilege separation").
    let username = match (req.local_uid, &grant.rule) {
        (Some(uid), None) => Some(
            crate::local_users::user_name(uid).map_err(|e| Refusal::Denied(format!("{e:#}")))?,
        ),
        _ => grant.username.clone(),
    };
    Ok(Checked {
        spec: Spec {
            argv: grant.argv,
            username,
            env: req.env.clone(),
            pty: req.pty,
            stdio: StdioMode::Piped,
            rule: grant.rule.is_some(),
        },
        limits: grant.limits,
        version,
        reason: grant.reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handover::{self, Link};
    use crate::identity::Identity;

    /// A machine's home with cluster "c": the envelope `signer` sealed for
    /// `me`, and `chain` as its handovers; the pins directory pins `cm`.
    fn machine(
        signer: &Identity,
        me: &Identity,
        cm: &Identity,
        chain: &[Link],
    ) -> (tempfile::TempDir, tempfile::TempDir) {
        let (home, pins) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let dir = home.path().join("clusters/c");
        std::fs::create_dir_all(&dir).unwrap();
        let text = format!(
            "[cluster-manager]\nid52 = \"{}\"\n\n[received]\nversion = 7\n",
            signer.id52()
        );
        let envelope = Envelope::seal(signer, &me.id52(), 7, text);
        std::fs::write(
            dir.join(ENVELOPE_FILE),
            serde_json::to_vec(&envelope).unwrap(),
        )
        .unwrap();
        handover::write(&dir, chain).unwrap();
        let pin = Pin {
            cm: cm.id52().to_string(),
            me: me.id52().to_string(),
            version: 3,
        };
        pin::write(pins.path(), "c", &pin).unwrap();
        (home, pins)
    }

    #[test]
    fn the_pin_follows_a_handover_the_pinned_key_signed_and_nothing_else() {
        let (k1, k2, me) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        // Signed by k2, which k1 handed over to: trusted, and pinned.
        let (home, pins) = machine(&k2, &me, &k1, &[Link::sign(&k1, &k2.id52())]);
        let trusted = trusted_config(&Home::at(home.path()), pins.path(), "c");
        let (_, _, version) = trusted.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(version, 7);
        let pinned = pin::read(pins.path(), "c").unwrap();
        assert_eq!(pinned.cm, k2.id52().to_string());

        // A daemon that planted a link to its own key, signed by that key.
        let evil = Identity::generate();
        let forged = Link {
            signature: Link::sign(&evil, &evil.id52()).signature,
            ..Link::sign(&k1, &evil.id52())
        };
        let (home, pins) = machine(&evil, &me, &k1, &[forged]);
        let refused = trusted_config(&Home::at(home.path()), pins.path(), "c");
        assert!(
            matches!(&refused, Err(Refusal::NoConfig(e)) if e.contains("envelope is for cluster")),
            "{refused:?}"
        );
        assert_eq!(
            pin::read(pins.path(), "c").unwrap().cm,
            k1.id52().to_string()
        );
    }
}
