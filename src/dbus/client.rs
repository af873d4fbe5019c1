//! The CLI's side: find a daemon on the buses, in the order of
//! `Bus::for_client`, that serves the MALAI_HOME the CLI works on.

use std::path::Path;

use zbus::proxy::CacheProperties;

use super::Bus;

#[zbus::proxy(
    interface = "sh.malai.Malai1.Daemon",
    default_service = "sh.malai.Malai1",
    default_path = "/sh/malai/Malai1"
)]
pub trait Daemon {
    /// The daemon's view, as the JSON of `malai status --json`.
    async fn status(&self) -> Result<String, super::Error>;

    /// Rescan in the daemon; returns what could not be applied.
    async fn rescan(&self) -> Result<Vec<String>, super::Error>;

    /// The MALAI_HOME the daemon serves.
    #[zbus(property)]
    fn home(&self) -> zbus::Result<String>;
}

#[zbus::proxy(
    interface = "sh.malai.Malai1.Cluster",
    default_service = "sh.malai.Malai1"
)]
pub trait Cluster {
    /// Runs argv on a machine of the cluster with the caller's descriptors.
    #[allow(clippy::too_many_arguments)]
    fn exec(
        &self,
        machine: &str,
        argv: &[String],
        env: std::collections::HashMap<String, String>,
        rows: u16,
        cols: u16,
        stdin: zbus::Fd<'_>,
        stdout: zbus::Fd<'_>,
        stderr: zbus::Fd<'_>,
        token: &str,
    ) -> Result<u8, super::Error>;

    /// Exec, run only by a daemon serving `home` (canonical; empty: any):
    /// another's answers OtherHome before it touches a descriptor.
    #[allow(clippy::too_many_arguments)]
    fn exec_in(
        &self,
        home: &str,
        machine: &str,
        argv: &[String],
        env: std::collections::HashMap<String, String>,
        rows: u16,
        cols: u16,
        stdin: zbus::Fd<'_>,
        stdout: zbus::Fd<'_>,
        stderr: zbus::Fd<'_>,
        token: &str,
    ) -> Result<u8, super::Error>;

    /// The machines a fan-out target names for running argv.
    fn select(&self, target: &str, argv: &[String]) -> Result<Vec<String>, super::Error>;

    /// Delivers a signal to the command of exec `token`.
    fn signal(&self, token: &str, signal: i32) -> Result<(), super::Error>;

    /// Resizes the PTY of exec `token`.
    fn resize(&self, token: &str, rows: u16, cols: u16) -> Result<(), super::Error>;

    /// cluster.toml from the cluster manager: (text, hash, version).
    fn config_download(&self) -> Result<(String, String, u64), super::Error>;

    /// Uploads cluster.toml on `base_hash`: the new (version, hash).
    fn config_upload(
        &self,
        text: &str,
        base_hash: &str,
        force: bool,
    ) -> Result<(u64, String), super::Error>;

    /// The cluster's name on the daemon's device.
    #[zbus(property)]
    fn alias(&self) -> zbus::Result<String>;

    /// The config version in force on the daemon's device.
    #[zbus(property)]
    fn config_version(&self) -> zbus::Result<u64>;

    /// A config version was put in force on the daemon's device.
    #[zbus(signal)]
    fn config_applied(&self, version: u64, hash: &str) -> zbus::Result<()>;
}

/// A daemon that answered.
pub struct Found {
    pub proxy: DaemonProxy<'static>,
    pub bus: Bus,
    pub home: String,
}

/// The first daemon on the buses that answers and serves `home`; with
/// `any_home`, the first that answers at all (the user's own MALAI_HOME was
/// not asked for explicitly, so the system service's clusters will do).
/// Each bus that was skipped, and why, goes to `skipped`.
pub async fn find(home: &Path, any_home: bool, skipped: &mut Vec<String>) -> Option<Found> {
    for bus in Bus::for_client() {
        let conn = match bus.connect().await {
            Ok(c) => c,
            Err(e) => {
                skipped.push(format!("{e:#}"));
                continue;
            }
        };
        let proxy = match DaemonProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
        {
            Ok(p) => p,
            Err(e) => {
                skipped.push(format!("{bus}: {e}"));
                continue;
            }
        };
        let daemon_home = match proxy.home().await {
            Ok(h) => h,
            Err(e) => {
                skipped.push(format!("{bus}: no daemon ({e})"));
                continue;
            }
        };
        if !any_home && !same_path(home, Path::new(&daemon_home)) {
            skipped.push(format!(
                "{bus}: the daemon there serves {daemon_home}, not {}",
                home.display()
            ));
            continue;
        }
        return Some(Found {
            proxy,
            bus,
            home: daemon_home,
        });
    }
    None
}

/// Whether two paths name the same directory (after resolving links).
pub fn same_path(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    canon(a) == canon(b)
}
