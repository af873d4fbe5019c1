//! The helper's own decision, from files the daemon's user cannot forge: on
//! a machine, the envelope the CM signed (`machine.envelope`), verified
//! with the pinned CM key, for the pinned device key, and no older than the
//! newest version the helper has seen; on the CM, cluster.toml (not signed:
//! the CM's daemon holds the signing key, see the README). Then the same
//! ACL the daemon ran, and the same user rule for a local caller.

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
    if cm == me {
        let path = dir.join(CLUSTER_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| no(format!("cannot read {}: {e}", path.display())))?;
        let config = cluster::parse(&path, &text, FileKind::Cluster)
            .map_err(|d| no(format!("{} is not valid: {d}", path.display())))?;
        return Ok((config, me, pin.version));
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
    envelope
        .verify(&cm, &me)
        .map_err(|e| no(format!("{}: {e}", path.display())))?;
    if envelope.version < pin.version {
        return Err(no(format!(
            "{} holds version {}, older than version {} the helper has seen (a replayed config?)",
            path.display(),
            envelope.version,
            pin.version
        )));
    }
    if envelope.version > pin.version {
        let newer = Pin {
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
