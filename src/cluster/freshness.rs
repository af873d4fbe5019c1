//! `max_config_age` on a machine: when it last heard from its cluster
//! manager (a config fetched or pushed over a connection authenticated as
//! the CM), and the config in force marked expired once that is longer ago
//! than the age the config sets. An expired config allows nothing to
//! anyone but the CM (`InForce::for_peer`); running commands and forwards
//! see the change and end (`Cluster::revoked`). Word from the CM puts it
//! back in force.
//!
//! A daemon that starts counts from its start: a machine restarted while
//! cut off serves for one more `max_config_age` (only root there can
//! restart it).

use std::time::Instant;

use super::Cluster;
use crate::config::duration;
use crate::home::Role;

impl Cluster {
    /// The CM answered with a config, or pushed one: the config in force is
    /// current as of now.
    pub fn heard_from_cm(&self) {
        *self.heard.lock().expect("heard lock") = Instant::now();
        self.heard_wake.notify_waiters();
        let mut revived = false;
        self.in_force.send_if_modified(|f| {
            revived = f.expired.take().is_some();
            revived
        });
        if revived {
            tracing::warn!(
                malai_cluster = %self.alias, malai_peer = %self.cm_id52,
                "heard from the cluster manager again: config version {} is in force again", self.version()
            );
            self.changed.notify_one();
        }
    }

    /// Marks the config in force expired whenever no word came from the CM
    /// for longer than its `max_config_age`. Runs for the life of the
    /// cluster on a machine; does nothing on the CM.
    pub async fn watch_config_age(&self) {
        let mut in_force = self.subscribe();
        loop {
            let heard = self.heard_wake.notified();
            let age = in_force
                .borrow_and_update()
                .config
                .as_ref()
                .and_then(|c| c.max_config_age);
            let since = *self.heard.lock().expect("heard lock");
            let wait = async {
                match age {
                    Some(age) if self.role() != Role::ClusterManager => {
                        tokio::time::sleep_until((since + age).into()).await;
                        self.expire(age);
                        std::future::pending::<()>().await;
                    }
                    _ => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = heard => {}
                () = wait => {}
                changed = in_force.changed() => if changed.is_err() { return },
            }
        }
    }

    /// The config in force is older than `age` allows.
    fn expire(&self, age: std::time::Duration) {
        let since = self.heard.lock().expect("heard lock").elapsed();
        let why = format!(
            "config expired: no word from the cluster manager for {} s (max_config_age = {}); only the cluster manager is served until it answers",
            since.as_secs(),
            duration::format(age)
        );
        let mut expired = false;
        self.in_force.send_if_modified(|f| {
            expired = f.config.is_some() && f.expired.is_none();
            if expired {
                f.expired = Some(why.clone());
            }
            expired
        });
        if expired {
            tracing::error!(malai_cluster = %self.alias, malai_peer = %self.cm_id52, "{why}");
            self.changed.notify_one();
        }
    }
}
