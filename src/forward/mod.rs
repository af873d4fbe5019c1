//! Service forwarding over `malai/forward/1`: a TCP connection on this
//! device reaches a port on 127.0.0.1 of the machine that hosts a service,
//! for the peers the service's `allow_from` admits. One QUIC stream per TCP
//! connection, over the pooled connection to the host.
//!
//! - `proto`: the one request and answer at the start of each stream.
//! - `host`: the accepting side; decides, connects to 127.0.0.1:port, pipes
//!   (tcp) or proxies with the `malai-client-*` headers (`proxy`, http).
//! - `client`: opens a stream to a service's host; the `[forward.NAME]`
//!   listeners of malai.toml.
//! - `http`: the HTTP-by-name listener (`SERVICE.CLUSTER.localhost`).
//! - `listeners`: which listeners run, from malai.toml and the sockets
//!   systemd passed; reconciled on rescan.
//! - `list`: what is forwarded where, from the files (`malai forward list`).
//! - `open`: a forward in the foreground (`malai forward open`).
//! - `pipe`: bytes both ways with backpressure and half-close.

pub mod client;
pub mod host;
pub mod http;
pub mod list;
pub mod listeners;
pub mod open;
pub mod pipe;
pub mod proto;
pub mod proxy;
