//! The daemon on D-Bus: versioned names, which bus to use, and the named
//! errors. The service side (objects the daemon serves) is in `service`, the
//! CLI's side in `client`.
//!
//! Names carry a major version: `sh.malai.Malai1` owns `/sh/malai/Malai1`
//! (interface `sh.malai.Malai1.Daemon`) and one object per cluster under
//! `/sh/malai/Malai1/cluster/` (interface `sh.malai.Malai1.Cluster`). Adding
//! members is compatible; a break adds `Malai2` beside these.

pub mod client;
pub mod config;
pub mod exec;
pub mod service;

use std::time::Duration;

use zbus::Connection;

pub const BUS_NAME: &str = "sh.malai.Malai1";
pub const ROOT_PATH: &str = "/sh/malai/Malai1";
pub const DAEMON_IFACE: &str = "sh.malai.Malai1.Daemon";
pub const CLUSTER_IFACE: &str = "sh.malai.Malai1.Cluster";
/// A bus address that replaces the session and system buses (tests use a
/// private `dbus-daemon`); `disabled` turns D-Bus off.
pub const ADDRESS_ENV: &str = "MALAI_DBUS_ADDRESS";
/// Members of this group may call the methods that change things.
pub use crate::local_users::ADMIN_GROUP;
/// Members may also download and upload the cluster config through the
/// daemon: editing the config grants any right on every machine, so it is
/// a group of its own (README, "Who may do what on the device").
pub const CONFIG_GROUP: &str = "malai-admin";

/// How long connecting to a bus may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The named errors of the interfaces: `sh.malai.Malai1.Error.*`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "sh.malai.Malai1.Error")]
pub enum Error {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The caller may not call this method (not root, not in group malai).
    AccessDenied(String),
    /// The daemon could not do what was asked.
    Failed(String),
    /// The cluster's rules refused the command.
    Denied(String),
    /// The cluster has no machine of that name.
    NoSuchMachine(String),
    /// The machine did not answer.
    Unreachable(String),
    /// The uploaded cluster.toml does not validate: every error, with its line.
    Invalid(String),
    /// cluster.toml changed since the upload's base: the current version and hash.
    Stale(String),
    /// The daemon serves another MALAI_HOME than the call asked for: its own.
    OtherHome(String),
}

/// A message bus the daemon or the CLI may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bus {
    Address(String),
    Session,
    System,
}

impl Bus {
    /// The bus the daemon serves on: `MALAI_DBUS_ADDRESS`, else the system
    /// bus for the system service (root, or the user malai) and the session
    /// bus for everyone else. `None`: D-Bus is
    /// disabled.
    pub fn for_daemon() -> Option<Bus> {
        match address_override() {
            Some(Override::Disabled) => None,
            Some(Override::Address(a)) => Some(Bus::Address(a)),
            None if crate::local_users::is_system_service() => Some(Bus::System),
            None => Some(Bus::Session),
        }
    }

    /// Where the CLI looks for a daemon, in order: `MALAI_DBUS_ADDRESS`
    /// alone, else the user's own daemon (session bus), then the system
    /// service (system bus).
    pub fn for_client() -> Vec<Bus> {
        match address_override() {
            Some(Override::Disabled) => Vec::new(),
            Some(Override::Address(a)) => vec![Bus::Address(a)],
            None => vec![Bus::Session, Bus::System],
        }
    }

    /// A connection to this bus, without any object served yet.
    pub async fn connect(&self) -> anyhow::Result<Connection> {
        let builder = match self {
            Bus::Address(a) => zbus::connection::Builder::address(a.as_str()),
            Bus::Session => zbus::connection::Builder::session(),
            Bus::System => zbus::connection::Builder::system(),
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, builder.build()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context(format!("connecting to {self}"))),
            Err(_) => anyhow::bail!(
                "connecting to {self}: no answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            ),
        }
    }
}

impl std::fmt::Display for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bus::Address(a) => write!(f, "the bus at {a} ({ADDRESS_ENV})"),
            Bus::Session => f.write_str("the session bus"),
            Bus::System => f.write_str("the system bus"),
        }
    }
}

enum Override {
    Disabled,
    Address(String),
}

fn address_override() -> Option<Override> {
    let v = std::env::var(ADDRESS_ENV).ok().filter(|v| !v.is_empty())?;
    Some(if v == "disabled" {
        Override::Disabled
    } else {
        Override::Address(v)
    })
}

/// The object path of a cluster: `/sh/malai/Malai1/cluster/<alias>`, with
/// every byte of the alias that a path element cannot hold (`-`, and `_`
/// itself) written `_xx` in hex, as systemd does.
pub fn cluster_path(alias: &str) -> String {
    let mut path = format!("{ROOT_PATH}/cluster/");
    for b in alias.bytes() {
        if b.is_ascii_alphanumeric() {
            path.push(b as char);
        } else {
            path.push_str(&format!("_{b:02x}"));
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_paths_are_valid_object_paths() {
        for (alias, want) in [
            ("company", "/sh/malai/Malai1/cluster/company"),
            ("my-corp_2", "/sh/malai/Malai1/cluster/my_2dcorp_5f2"),
            ("9lives", "/sh/malai/Malai1/cluster/9lives"),
        ] {
            let path = cluster_path(alias);
            assert_eq!(path, want);
            zbus::ObjectPath::try_from(path.as_str()).expect("a valid object path");
        }
    }

    #[test]
    fn names_carry_the_major_version() {
        for name in [BUS_NAME, DAEMON_IFACE, CLUSTER_IFACE] {
            assert!(name.starts_with("sh.malai.Malai1"), "{name}");
        }
        zbus::names::WellKnownName::try_from(BUS_NAME).expect("a valid bus name");
        zbus::names::InterfaceName::try_from(DAEMON_IFACE).expect("a valid interface name");
        zbus::names::InterfaceName::try_from(CLUSTER_IFACE).expect("a valid interface name");
    }
}
