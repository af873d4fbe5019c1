//! The client side of `malai/forward/1`: open a stream to the machine that
//! hosts a service (looked up in this device's config of its cluster), over
//! the cluster's pooled connection; and the `[forward.NAME]` listeners,
//! which carry each accepted TCP connection on its own stream. A refused
//! connection is closed and the reason logged.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use iroh::endpoint::{RecvStream, SendStream};
use tokio::net::{TcpListener, TcpStream};

use super::host::{self, Opened, Refusal};
use super::pipe;
use super::proto::{Answer, HANDSHAKE_TIMEOUT, Open};
use crate::cluster::{ByAlias, Cluster};
use crate::p2p::{FORWARD_ALPN, frame};

/// The running clusters by alias, as the daemon publishes them: looked up
/// for each connection, so a rescan that restarts a cluster is picked up
/// at once.
pub type Clusters = tokio::sync::watch::Receiver<ByAlias>;

/// A stream to a service, ready to carry bytes.
pub enum Stream {
    /// On another machine, over QUIC.
    Remote {
        send: SendStream,
        recv: RecvStream,
        /// The host's alias, for logs.
        machine: String,
    },
    /// On this device itself: decided and connected here.
    Local(Opened),
}

/// Why a stream to a service was not opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// No such cluster or service in this device's config (for a service
    /// of another machine: this device is not in its `allow_from`).
    Unknown(String),
    /// The host refused this device.
    Denied(String),
    /// The host could not be reached, or could not reach the service.
    Failed(String),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Unknown(r) => write!(f, "unknown service: {r}"),
            Refused::Denied(r) => write!(f, "denied: {r}"),
            Refused::Failed(r) => write!(f, "failed: {r}"),
        }
    }
}

/// The running cluster `alias`, if any.
pub fn cluster(clusters: &Clusters, alias: &str) -> Option<Arc<Cluster>> {
    clusters.borrow().get(alias).cloned()
}

/// Opens a stream to `service` of `cluster`.
pub async fn connect(cluster: &Cluster, service: &str) -> Result<Stream, Refused> {
    let Some(config) = cluster.config() else {
        return Err(Refused::Unknown(format!(
            "this device has no config for cluster {:?} yet",
            cluster.alias()
        )));
    };
    let Some(svc) = config.services.get(service) else {
        return Err(Refused::Unknown(format!(
            "no service {service:?} in this device's config of cluster {:?} (not defined, or this device is not in its allow_from)",
            cluster.alias()
        )));
    };
    let Some(machine) = config.machines.get(&svc.machine) else {
        return Err(Refused::Unknown(format!(
            "service {service:?} is on machine {:?}, which is not in the config",
            svc.machine
        )));
    };
    let me = cluster.id52();
    if machine.id52 == me {
        return match host::open(cluster, me, service).await {
            Ok(opened) => Ok(Stream::Local(opened)),
            Err(Refusal::Denied(r)) => Err(Refused::Denied(r)),
            Err(Refusal::Failed(r)) => Err(Refused::Failed(r)),
        };
    }
    let what = format!("{}.{}", svc.machine, cluster.alias());
    let mut last = String::new();
    // A pooled connection may have died unnoticed (the host restarted):
    // one more try on a fresh one.
    for _ in 0..2 {
        let conn = cluster
            .pool()
            .get(
                cluster.endpoint(),
                &machine.id52,
                &machine.addrs,
                FORWARD_ALPN,
            )
            .await
            .map_err(|e| Refused::Failed(format!("{what}: {e:#}")))?;
        match open_on(&conn, service).await {
            Ok((send, recv, Answer::Ok)) => {
                return Ok(Stream::Remote {
                    send,
                    recv,
                    machine: svc.machine.clone(),
                });
            }
            Ok((_, _, Answer::Denied { reason })) => {
                return Err(Refused::Denied(format!("{what}: {reason}")));
            }
            Ok((_, _, Answer::Failed { reason })) => {
                return Err(Refused::Failed(format!("{what}: {reason}")));
            }
            Err(e) => {
                last = format!("{what}: {e:#}");
                cluster.pool().forget(&machine.id52, FORWARD_ALPN).await;
            }
        }
    }
    Err(Refused::Failed(last))
}

/// Asks the host at the other end of `conn` for `service` on a new
/// stream: the stream and the host's answer.
pub async fn open_on(
    conn: &iroh::endpoint::Connection,
    service: &str,
) -> anyhow::Result<(SendStream, RecvStream, Answer)> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let open = Open {
        service: service.to_owned(),
    };
    frame::write_msg(&mut send, &open).await?;
    let answer: Answer =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, frame::read_msg(&mut recv)).await??;
    Ok((send, recv, answer))
}

/// Carries `tcp` on `stream` until both sides are done.
pub async fn carry(tcp: TcpStream, stream: Stream) -> anyhow::Result<()> {
    let _ = tcp.set_nodelay(true);
    match stream {
        Stream::Remote { send, recv, .. } => {
            pipe::tcp_quic(tcp, send, recv).await?;
        }
        Stream::Local(opened) => host::serve_local(opened, tcp).await?,
    }
    Ok(())
}

/// What a `[forward.NAME]` listener carries its connections to; changed in
/// place when a rescan edits the forward but not its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub cluster: String,
    pub service: String,
}

/// Accepts connections on `listener` for the forward `name`, each carried
/// on its own stream to the service of `target`.
pub async fn serve_forward(
    name: String,
    listener: TcpListener,
    target: Arc<RwLock<Target>>,
    clusters: Clusters,
) {
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, usually: wait a little rather than spin.
                tracing::warn!(malai_forward = %name, "forward {name}: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        if !local_user_may_connect(&tcp, from, &name) {
            continue;
        }
        let target = target.read().expect("target lock").clone();
        let clusters = clusters.clone();
        let name = name.clone();
        tokio::spawn(async move { forward_one(&name, tcp, from, &target, &clusters).await });
    }
}

/// Whether the local user behind `tcp` may use this listener, which acts
/// with the device's identity (`local_users::may_use_listeners`); a
/// connection from elsewhere (a non-loopback listen address) has no local
/// owner and is refused too. A refused connection is closed at once.
pub fn local_user_may_connect(tcp: &TcpStream, from: SocketAddr, listener: &str) -> bool {
    let owner = tcp
        .local_addr()
        .ok()
        .and_then(|local| crate::local_users::tcp_peer_uid(local, from));
    match owner {
        Some(uid) if crate::local_users::may_use_listeners(uid) => true,
        Some(uid) => {
            tracing::warn!(
                malai_forward = listener,
                malai_uid = uid,
                "{listener}: refused a connection from {from}: local uid {uid} is not this daemon's user, root or in group {}",
                crate::local_users::ADMIN_GROUP
            );
            false
        }
        None => {
            tracing::warn!(
                malai_forward = listener,
                "{listener}: refused a connection from {from}: not a local user of this device"
            );
            false
        }
    }
}

async fn forward_one(
    name: &str,
    tcp: TcpStream,
    from: SocketAddr,
    target: &Target,
    clusters: &Clusters,
) {
    let Target { cluster, service } = target;
    let refused = |why: &Refused| {
        tracing::warn!(
            malai_forward = name, malai_cluster = %cluster, malai_service = %service,
            "forward {name}: connection from {from} to {service}.{cluster} refused, closing it: {why}"
        );
    };
    let Some(shared) = self::cluster(clusters, cluster) else {
        refused(&Refused::Unknown(format!(
            "cluster {cluster:?} is not running"
        )));
        return;
    };
    let stream = match connect(&shared, service).await {
        Ok(s) => s,
        Err(why) => {
            refused(&why);
            return;
        }
    };
    let on = match &stream {
        Stream::Remote { machine, .. } => machine.clone(),
        Stream::Local(_) => "this device".into(),
    };
    tracing::debug!(malai_forward = name, malai_cluster = %cluster, malai_service = %service, "forward {name}: {from} to {service}.{cluster} on {on}");
    if let Err(e) = carry(tcp, stream).await {
        tracing::debug!(
            malai_forward = name,
            "forward {name}: connection from {from} ended: {e:#}"
        );
    }
}
