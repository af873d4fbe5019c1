//! `malai forward open SERVICE.CLUSTER [--listen IP:PORT]`: a forward in
//! the foreground, as `ssh -L` makes one: a listener on this device (by
//! default 127.0.0.1 and the service's own port), each connection carried
//! to the service on its own stream with this device's key for the
//! cluster, until Ctrl-C; no malai.toml edit, no daemon. Only this user
//! (and, for root, the group malai) may connect through it, as with the
//! daemon's listeners.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;

use super::client;
use super::proto::Answer;
use crate::config::NetworkSettings;
use crate::home::ClusterDir;
use crate::p2p::{self, FORWARD_ALPN, Pool, RelayChoice};

/// Where the service is, as this device's config says.
struct Upstream {
    machine: String,
    id: crate::identity::Id52,
    addrs: Vec<SocketAddr>,
    port: u16,
}

fn upstream(dir: &ClusterDir, service: &str) -> anyhow::Result<Upstream> {
    let cluster = &dir.alias;
    let config = dir.config.as_ref().with_context(|| {
        format!("cluster {cluster:?} has no config yet: the cluster manager has not sent one")
    })?;
    let svc = config.services.get(service).with_context(|| {
        format!(
            "no service {service:?} in this device's config of cluster {cluster:?} (not defined, or this device is not in its allow_from)"
        )
    })?;
    let machine = config.machines.get(&svc.machine).with_context(|| {
        format!(
            "service {service:?} is on machine {:?}, which is not in the config",
            svc.machine
        )
    })?;
    if machine.id52 == dir.identity.id52() {
        anyhow::bail!(
            "service {service:?} is on this device: connect to 127.0.0.1:{} directly",
            svc.port
        );
    }
    Ok(Upstream {
        machine: svc.machine.clone(),
        id: machine.id52,
        addrs: machine.addrs.clone(),
        port: svc.port,
    })
}

/// Serves the forward until `stop` resolves; `listening` is told the
/// address once the listener is bound (the port is free again on return).
pub async fn serve(
    dir: &ClusterDir,
    network: &NetworkSettings,
    service: &str,
    listen: Option<SocketAddr>,
    stop: impl std::future::Future<Output = ()>,
    listening: impl FnOnce(SocketAddr, &str),
) -> anyhow::Result<()> {
    let up = upstream(dir, service)?;
    let listen = listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], up.port)));
    let listener = TcpListener::bind(listen).await.with_context(|| {
        format!("cannot listen on {listen} (pick another with --listen IP:PORT)")
    })?;
    let relay = RelayChoice::resolve(network, dir.relay.as_ref());
    let endpoint = p2p::bind(&dir.identity, network, &relay, 0, Vec::new(), None).await?;
    let pool = Pool::new(&relay);
    let name = format!("{service}.{}", dir.alias);
    listening(
        listener.local_addr()?,
        &format!("{name} (on {})", up.machine),
    );
    tokio::pin!(stop);
    let mut carried = tokio::task::JoinSet::new();
    loop {
        let (tcp, from) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("malai: {name}: accept failed: {e}");
                    continue;
                }
            },
        };
        if !client::local_user_may_connect(&tcp, from, &name) {
            continue;
        }
        let (endpoint, pool, name, service) = (
            endpoint.clone(),
            pool.clone(),
            name.clone(),
            service.to_owned(),
        );
        let (id, addrs) = (up.id, up.addrs.clone());
        carried.spawn(async move {
            let opened = async {
                let conn = pool.get(&endpoint, &id, &addrs, FORWARD_ALPN).await?;
                client::open_on(&conn, &service).await
            };
            match opened.await {
                Ok((send, recv, Answer::Ok)) => {
                    let _ = tcp.set_nodelay(true);
                    let _ = super::pipe::tcp_quic(tcp, send, recv).await;
                }
                Ok((_, _, Answer::Denied { reason })) => {
                    eprintln!("malai: {name}: denied: {reason}")
                }
                Ok((_, _, Answer::Failed { reason })) => {
                    eprintln!("malai: {name}: failed: {reason}")
                }
                Err(e) => {
                    eprintln!("malai: {name}: {e:#}");
                    pool.forget(&id, FORWARD_ALPN).await;
                }
            }
        });
    }
    drop(listener);
    carried.abort_all();
    p2p::close_without_waiting(endpoint).await;
    Ok(())
}
