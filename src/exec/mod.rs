//! Remote exec: the protocol, spawning commands (pipes or a PTY, as another
//! user when root), the host side that serves peers, and the client side.

pub mod client;
pub mod local;
pub mod proto;
pub mod server;
pub mod spawn;
