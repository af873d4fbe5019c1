//! The machine side of config distribution: verify and apply an envelope
//! from the CM, and ask the CM for the latest config on start.

use std::sync::Arc;
use std::time::Duration;

use super::envelope::Envelope;
use super::proto::{ConfigAnswer, ConfigRequest};
use crate::config::{FileKind, cluster};
use crate::daemon::cluster::Shared;
use crate::fsutil;
use crate::home::Role;
use crate::p2p::{CONFIG_ALPN, frame};

/// Applies a config the CM sent: verified, strictly newer, valid, then
/// written atomically and put in force.
pub async fn apply(shared: &Arc<Shared>, envelope: Envelope) -> ConfigAnswer {
    let _guard = shared.apply.lock().await;
    let me = shared.identity.id52();
    if let Err(reason) = envelope.verify(&shared.cm_id52, &me) {
        tracing::warn!(malai_cluster = %shared.alias, malai_peer = %shared.cm_id52, "refused config: {reason}");
        return ConfigAnswer::Rejected { reason };
    }
    let current = shared
        .host
        .config()
        .and_then(|c| c.received_version)
        .unwrap_or(0);
    let current_hash = std::fs::read(shared.machine_path())
        .ok()
        .map(|b| crate::home::hash_hex(&b));
    if envelope.version == current && current_hash.as_deref() == Some(envelope.hash.as_str()) {
        return ConfigAnswer::Ack { version: current };
    }
    if envelope.version <= current {
        tracing::warn!(
            malai_cluster = %shared.alias, malai_peer = %shared.cm_id52, malai_config_version = envelope.version,
            "refused config version {}: this machine holds version {current} already (replay?)", envelope.version
        );
        return ConfigAnswer::Rejected {
            reason: format!(
                "version {} is not newer than the version {current} in force",
                envelope.version
            ),
        };
    }
    let path = shared.machine_path();
    let config = match cluster::parse(&path, &envelope.config, FileKind::Machine) {
        Ok(c) => c,
        Err(d) => {
            return ConfigAnswer::Rejected {
                reason: format!("invalid config: {d}"),
            };
        }
    };
    if config.received_version != Some(envelope.version) || config.cluster_manager != shared.cm_id52
    {
        return ConfigAnswer::Rejected {
            reason: "config does not match its envelope".into(),
        };
    }
    if let Err(e) = fsutil::write_atomic(&path, envelope.config.as_bytes(), 0o644) {
        return ConfigAnswer::Rejected {
            reason: format!("cannot write {}: {e}", path.display()),
        };
    }
    {
        let mut addrs = shared.cm_addrs.write().expect("addrs lock");
        for a in &config.cm_addrs {
            if !addrs.contains(a) {
                addrs.push(*a);
            }
        }
    }
    shared.host.set_config(Some(config), envelope.version);
    *shared.role.write().expect("role lock") = Role::Machine;
    shared.announce(crate::daemon::cluster::Event::ConfigApplied {
        version: envelope.version,
        hash: envelope.hash.clone(),
    });
    shared.changed.notify_one();
    tracing::info!(
        malai_cluster = %shared.alias, malai_peer = %shared.cm_id52, malai_config_version = envelope.version,
        "applied config version {} from the cluster manager (was {current})", envelope.version
    );
    ConfigAnswer::Ack {
        version: envelope.version,
    }
}

/// On start, ask the CM for the latest config, retrying with backoff until
/// it answers once; pushes do the rest.
pub async fn fetch_on_start(shared: Arc<Shared>) {
    let mut delay = Duration::from_millis(500);
    loop {
        match fetch_once(&shared).await {
            Ok(()) => return,
            Err(e) => {
                tracing::info!(malai_cluster = %shared.alias, "cannot fetch config from the cluster manager yet: {e:#}");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}

async fn fetch_once(shared: &Arc<Shared>) -> anyhow::Result<()> {
    let addrs = shared.cm_addrs.read().expect("addrs lock").clone();
    let conn = shared
        .pool
        .get(&shared.endpoint, &shared.cm_id52, &addrs, CONFIG_ALPN)
        .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    frame::write_msg(&mut send, &ConfigRequest::Fetch).await?;
    send.finish()?;
    match frame::read_msg::<_, ConfigAnswer>(&mut recv).await? {
        ConfigAnswer::Config { envelope } => match apply(shared, envelope).await {
            ConfigAnswer::Ack { .. } => Ok(()),
            ConfigAnswer::Rejected { reason } if reason.contains("not newer") => Ok(()),
            other => anyhow::bail!("could not apply the fetched config: {other:?}"),
        },
        ConfigAnswer::Denied { reason } | ConfigAnswer::Rejected { reason } => {
            // Not listed (yet): the CM pushes when the admin adds us.
            tracing::info!(malai_cluster = %shared.alias, "cluster manager has no config for us: {reason}");
            Ok(())
        }
        other => anyhow::bail!("unexpected answer {other:?}"),
    }
}
