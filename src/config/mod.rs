//! Config files: the shared diagnostics, the cluster.toml / machine.toml
//! schema, malai.toml, the grammars of names, principals and
//! `MACHINE.CLUSTER` targets, relay URLs and CAs, command limits,
//! recording settings and durations.

pub mod cluster;
pub mod diag;
pub mod duration;
pub mod limits;
pub mod local;
pub mod names;
pub mod record;
pub mod relay;
pub mod target;

pub use cluster::{
    ClusterConfig, CommandRule, DEFAULT_SFTP_SERVER, FileKind, Machine, Protocol, Rights, Service,
};
pub use diag::{Diagnostic, Diagnostics};
pub use limits::{Limit, Limits};
pub use local::{LocalConfig, NetworkSettings, Relay};
pub use names::Principal;
pub use record::{Record, RecordPolicy};
pub use relay::OwnRelay;
pub use target::Target;
