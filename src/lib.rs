//! malai: run commands on, and reach services of, a fleet of machines over an
//! encrypted peer-to-peer network. The binary is a thin shell over this
//! library, so that tests reach every module.

pub mod acl;
pub mod audit;
pub mod cli;
pub mod cluster;
pub mod command;
pub mod config;
pub mod copy;
pub mod daemon;
pub mod dbus;
pub mod exec;
pub mod exit;
pub mod explain;
pub mod fanout;
pub mod forward;
pub mod fsutil;
pub mod handover;
pub mod helper;
pub mod home;
pub mod html;
pub mod identity;
pub mod join;
pub mod local_users;
pub mod p2p;
pub mod personalize;
pub mod plan;
pub mod policy;
pub mod record;
pub mod selection;
pub mod sockets;
pub mod ssh_compat;
pub mod state;
pub mod status;
pub mod status_page;
pub mod sync;
pub mod target;
