//! The host side of `malai/forward/1`: for each stream a peer opens, look
//! the service up in this machine's own config, decide with its
//! `allow_from` (the peer is the id52 iroh authenticated; default deny),
//! log the decision, connect to 127.0.0.1:port and carry the bytes: piped
//! as they are for tcp, proxied request by request for http (`proxy`). A
//! config put in force that no longer allows the peer ends the connection.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};
use tokio::net::TcpStream;

use super::proto::{Answer, HANDSHAKE_TIMEOUT, Open};
use super::{pipe, proxy};
use crate::acl::{self, Decision};
use crate::audit;
use crate::cluster::{Cluster, InForce};
use crate::config::{Protocol, Service};
use crate::identity::Id52;
use crate::p2p::frame;

/// The largest `Open`: a service name and its JSON framing.
const MAX_OPEN: usize = 4096;

/// Why a stream to a service was not opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The ACL said no (or this machine does not host the service).
    Denied(String),
    /// Allowed, but the service's port could not be reached.
    Failed(String),
}

/// An allowed stream, connected to the service.
#[derive(Debug)]
pub struct Opened {
    pub name: String,
    pub service: Service,
    /// The first connection to 127.0.0.1:port (http opens more as needed).
    pub upstream: TcpStream,
    /// What the http proxy tells the application about the peer.
    pub client: ClientInfo,
}

/// Who is on the other end, for the `malai-client-*` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub id52: Id52,
    /// The peer's machine alias in this cluster, if it is a machine.
    pub machine: Option<String>,
    /// This cluster's alias here.
    pub cluster: String,
}

impl Opened {
    pub fn upstream_addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.service.port).into()
    }
}

/// Decides whether `peer` may reach `name` here, logs the decision, and
/// connects to the service.
pub async fn open(cluster: &Cluster, peer: Id52, name: &str) -> Result<Opened, Refusal> {
    let in_force = cluster.in_force();
    let who = audit::Who {
        cluster: cluster.alias(),
        peer: &peer,
        config_version: in_force.version,
        uid: None,
        claimed: None,
        recording: None,
    };
    let grant = match decide(cluster, peer, name, &in_force) {
        Decision::Deny(reason) => {
            audit::service(who, name, audit::Decision::Denied(&reason));
            return Err(Refusal::Denied(reason));
        }
        Decision::Allow(grant) => grant,
    };
    // Allowed: there is a usable config, and it hosts the service here.
    let config = in_force
        .config
        .clone()
        .expect("an allowed request has a config");
    let service = config.services[name].clone();
    let addr: SocketAddr = (Ipv4Addr::LOCALHOST, service.port).into();
    let upstream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = format!("cannot connect to {addr}: {e}");
            audit::service(who, name, audit::Decision::Failed(&reason));
            return Err(Refusal::Failed(reason));
        }
        Err(_) => {
            let reason = format!("{addr} did not accept within {HANDSHAKE_TIMEOUT:?}");
            audit::service(who, name, audit::Decision::Failed(&reason));
            return Err(Refusal::Failed(reason));
        }
    };
    let _ = upstream.set_nodelay(true);
    let reason = format!("on {addr} ({})", grant.reason);
    audit::service(who, name, audit::Decision::Allowed(&reason));
    Ok(Opened {
        name: name.to_owned(),
        client: ClientInfo {
            id52: peer,
            machine: config
                .machine_by_id52(&peer)
                .map(|(alias, _)| alias.to_owned()),
            cluster: cluster.alias().to_owned(),
        },
        service,
        upstream,
    })
}

/// Whether `peer` may reach service `name` here under the config `f`: when
/// a forward opens, and again with each config put in force.
fn decide(cluster: &Cluster, peer: Id52, name: &str, f: &InForce) -> Decision {
    match f.for_peer(&peer, &cluster.cm_id52()) {
        Err(reason) => Decision::Deny(reason),
        Ok(config) => acl::may_use_service(config, &cluster.id52(), &peer, name),
    }
}

#[derive(Debug, Clone)]
pub struct ForwardHandler {
    pub cluster: Arc<Cluster>,
}

impl ProtocolHandler for ForwardHandler {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let peer = Id52::from_public_key(conn.remote_id());
        while let Ok((mut send, recv)) = conn.accept_bi().await {
            let Some(permit) = self.cluster.gate().admit_stream(peer, &mut send) else {
                continue;
            };
            let cluster = self.cluster.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = serve(&cluster, peer, send, recv).await {
                    tracing::info!(malai_cluster = %cluster.alias(), malai_peer = %peer, "forward stream ended: {e:#}");
                }
            });
        }
        Ok(())
    }
}

async fn serve(
    cluster: &Cluster,
    peer: Id52,
    mut send: SendStream,
    mut recv: RecvStream,
) -> anyhow::Result<()> {
    let req: Open = frame::read_request(&mut recv, MAX_OPEN).await?;
    let opened = match open(cluster, peer, &req.service).await {
        Ok(o) => o,
        Err(refusal) => {
            let answer = match refusal {
                Refusal::Denied(reason) => Answer::Denied { reason },
                Refusal::Failed(reason) => Answer::Failed { reason },
            };
            frame::write_msg(&mut send, &answer).await?;
            send.finish()?;
            let _ = send.stopped().await;
            return Ok(());
        }
    };
    frame::write_msg(&mut send, &Answer::Ok).await?;
    let name = opened.name.clone();
    let carry = async {
        match opened.service.protocol {
            Protocol::Tcp => {
                let upstream = opened.upstream;
                let moved = pipe::tcp_quic(upstream, send, recv).await?;
                tracing::debug!(
                    malai_cluster = %cluster.alias(), malai_peer = %peer, malai_service = name,
                    "forward to {name:?} closed: {} bytes up, {} down", moved.up, moved.down
                );
            }
            Protocol::Http => {
                proxy::serve(opened, tokio::io::join(recv, send)).await?;
            }
        }
        anyhow::Ok(())
    };
    // A config that no longer allows the peer here ends the connection:
    // dropping `carry` resets the stream and closes the upstream socket.
    tokio::select! {
        carried = carry => carried,
        revoked = cluster.revoked(|f| decide(cluster, peer, &req.service, f)) => {
            let who = audit::Who {
                cluster: cluster.alias(),
                peer: &peer,
                config_version: revoked.version,
                uid: None,
                claimed: None,
                recording: None,
            };
            let why = revoked.to_string();
            audit::service(who, &req.service, audit::Decision::Revoked(&why));
            Ok(())
        }
    }
}

/// Carries a connection of this device to a service it hosts itself (a
/// forward on the host): the same decision and the same pipe or proxy as for
/// a peer, with the TCP connection in place of the QUIC stream.
pub async fn serve_local<IO>(opened: Opened, mut io: IO) -> anyhow::Result<()>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match opened.service.protocol {
        Protocol::Tcp => {
            let mut upstream = opened.upstream;
            tokio::io::copy_bidirectional(&mut io, &mut upstream).await?;
        }
        Protocol::Http => proxy::serve(opened, io).await?,
    }
    Ok(())
}
