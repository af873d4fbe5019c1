//! The one way a machine puts a config in force: an envelope its CM
//! signed for it, verified, strictly newer than the config in force (the
//! same version with the same bytes is acknowledged again), valid, then
//! written atomically and put in force. And the one way a machine changes
//! the CM key it trusts: a handover chain from the key it knows.

use super::Cluster;
use super::envelope::Envelope;
use crate::config::{FileKind, cluster};
use crate::fsutil;
use crate::handover::{self, Link};
use crate::home::{self, Role};
use crate::identity::Id52;

/// Why a machine refused a config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    /// Not signed by this cluster's manager for this machine.
    #[error("{0}")]
    Unverified(#[from] super::envelope::Unverified),
    /// Not newer than the config in force (a replay, or a CM that lost its
    /// state).
    #[error("version {offered} is not newer than the version {current} in force")]
    NotNewer { offered: u64, current: u64 },
    /// Signed, but not a valid machine.toml, or not the one the envelope
    /// describes.
    #[error("invalid config: {0}")]
    Invalid(String),
    /// Could not be written.
    #[error("{0}")]
    Failed(String),
}

impl Cluster {
    /// Where the signed envelope of the config in force is kept, for the
    /// privileged helper (`helper::check`).
    pub fn envelope_path(&self) -> std::path::PathBuf {
        self.machine_path()
            .with_file_name(crate::home::ENVELOPE_FILE)
    }

    fn save_envelope(&self, envelope: &Envelope) -> Result<(), AcceptError> {
        let path = self.envelope_path();
        let json = serde_json::to_vec_pretty(envelope).expect("an envelope serializes");
        fsutil::write_atomic(&path, &json, 0o644)
            .map_err(|e| AcceptError::Failed(format!("cannot write {}: {e}", path.display())))
    }

    /// Accepts `envelope` from the CM; the version in force after it.
    pub async fn accept(&self, envelope: Envelope) -> Result<u64, AcceptError> {
        self.applying(|| self.accept_locked(envelope)).await
    }

    /// `accept`, applying (`Cluster::applying`).
    fn accept_locked(&self, envelope: Envelope) -> Result<u64, AcceptError> {
        let me = self.id52();
        if let Err(reason) = envelope.verify(&self.cm_id52, &me) {
            tracing::warn!(malai_cluster = %self.alias, malai_peer = %self.cm_id52, "refused config: {reason}");
            return Err(reason.into());
        }
        let current = self.version();
        let current_hash = std::fs::read(self.machine_path())
            .ok()
            .map(|b| crate::home::hash_hex(&b));
        if envelope.version == current && current_hash.as_deref() == Some(envelope.hash.as_str()) {
            // A machine that ran a release before the helper has no
            // envelope on disk yet: the CM's answer to its first fetch
            // brings it.
            if !self.envelope_path().exists() {
                self.save_envelope(&envelope)?;
            }
            return Ok(current);
        }
        let path = self.machine_path();
        let parsed = cluster::parse(&path, &envelope.config, FileKind::Machine);
        // The same version written for a newer protocol than the text in
        // force (this machine was upgraded): the CM rewrote it, not a replay.
        let protocol = |c: Option<&crate::config::ClusterConfig>| {
            c.and_then(|c| c.received_protocol).unwrap_or(1)
        };
        let rewritten = envelope.version == current
            && parsed
                .as_ref()
                .is_ok_and(|c| protocol(Some(c)) > protocol(self.config().as_deref()));
        if envelope.version <= current && !rewritten {
            tracing::warn!(
                malai_cluster = %self.alias, malai_peer = %self.cm_id52, malai_config_version = envelope.version,
                "refused config version {}: this machine holds version {current} already (replay?)", envelope.version
            );
            return Err(AcceptError::NotNewer {
                offered: envelope.version,
                current,
            });
        }
        let mut config = parsed.map_err(|d| AcceptError::Invalid(d.to_string()))?;
        if config.received_version != Some(envelope.version)
            || config.cluster_manager != self.cm_id52
        {
            return Err(AcceptError::Invalid(
                "the config does not match its envelope".into(),
            ));
        }
        super::revoked::keep(&self.dir, &mut config)
            .map_err(|e| AcceptError::Failed(format!("{e:#}")))?;
        // The envelope first: the helper reads only it, and a crash between
        // the two leaves machine.toml older, which the next fetch repairs.
        self.save_envelope(&envelope)?;
        fsutil::write_atomic(&path, envelope.config.as_bytes(), 0o644)
            .map_err(|e| AcceptError::Failed(format!("cannot write {}: {e}", path.display())))?;
        {
            let mut addrs = self.cm_addrs.write().expect("addrs lock");
            for a in &config.cm_addrs {
                if !addrs.contains(a) {
                    addrs.push(*a);
                }
            }
        }
        *self.role.write().expect("role lock") = Role::Machine;
        self.put_in_force(Some(config), envelope.version, envelope.hash.clone());
        tracing::info!(
            malai_cluster = %self.alias, malai_peer = %self.cm_id52, malai_config_version = envelope.version,
            "applied config version {} from the cluster manager (was {current})", envelope.version
        );
        Ok(envelope.version)
    }
}

impl Cluster {
    /// Machine: the CM, as the key this machine knows, hands the cluster
    /// over along `chain`. Every link from the known key is checked; they
    /// are kept in handovers.json (the privileged helper follows them from
    /// its pin), cluster-info.toml names the newest key, and the daemon
    /// restarts this cluster on it (`handed_over`, once the answer is
    /// sent). The key it reaches from then on.
    pub async fn take_handover(&self, chain: &[Link]) -> Result<Id52, String> {
        self.applying(|| self.take_handover_locked(chain)).await
    }

    /// `take_handover`, applying (`Cluster::applying`).
    fn take_handover_locked(&self, chain: &[Link]) -> Result<Id52, String> {
        let known = self.cm_id52;
        let links = handover::follow(chain, &known)?;
        let Some((newest, _)) = links.last() else {
            return Err(format!(
                "no handover leaves {known}, the cluster manager this machine knows"
            ));
        };
        let newest = *newest;
        let mut kept = handover::read(&self.dir).map_err(|e| format!("{e:#}"))?;
        for (_, link) in links {
            if !kept.contains(&link) {
                kept.push(link);
            }
        }
        handover::write(&self.dir, &kept).map_err(|e| format!("{e:#}"))?;
        let info_path = self.dir.join(home::INFO_FILE);
        let mut info = home::read_info(&info_path).map_err(|d| d.to_string())?;
        info.cluster_manager.id52 = newest.to_string();
        home::write_info(&self.dir, &info).map_err(|e| format!("{e:#}"))?;
        *self.handed_over.lock().expect("handover lock") = Some(newest);
        tracing::warn!(
            malai_cluster = %self.alias, malai_peer = %known,
            "the cluster manager's key moved: {known} -> {newest}; following it"
        );
        Ok(newest)
    }

    /// Machine: the CM key a handover moved this cluster to, which the
    /// daemon restarts it on.
    pub fn handed_over(&self) -> Option<Id52> {
        *self.handed_over.lock().expect("handover lock")
    }

    /// Tells the daemon to look at this cluster again (after a handover's
    /// answer was sent).
    pub fn ask_daemon_to_look(&self) {
        self.changed.notify_one();
    }
}
