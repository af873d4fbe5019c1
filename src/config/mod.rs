//! Config files: the shared diagnostics, the cluster.toml / machine.toml
//! schema, malai.toml, and the grammars of names, principals and
//! `MACHINE.CLUSTER` targets.

pub mod cluster;
pub mod diag;
pub mod local;
pub mod names;
pub mod target;

pub use cluster::{ClusterConfig, CommandRule, FileKind, Machine, Protocol, Service};
pub use diag::{Diagnostic, Diagnostics};
pub use local::{LocalConfig, NetworkSettings, Relay};
pub use names::Principal;
pub use target::Target;
