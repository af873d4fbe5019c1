//! The network side: one iroh endpoint per cluster identity, built from the
//! `[network]` settings, the ALPNs of our protocols, dialling with a timeout,
//! and a pool that reuses one connection per peer and protocol.

pub mod frame;
pub mod gate;
pub mod links;
pub mod serve;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use iroh::endpoint::{
    ConnectError, ConnectingError, Connection, ConnectionError, PortmapperConfig,
    QuicTransportConfig, TransportErrorCode, VarInt, presets,
};
use iroh::{Endpoint, EndpointAddr, NetReportConfig, RelayMode};
use tokio::sync::Mutex;

use crate::config::{NetworkSettings, OwnRelay, Relay};
use crate::identity::{Id52, Identity};

/// Remote exec: one bidirectional stream per command.
pub const EXEC_ALPN: &[u8] = b"malai/exec/1";
/// Config distribution and editing: one request/answer per stream.
pub const CONFIG_ALPN: &[u8] = b"malai/config/1";
/// Service forwarding: one bidirectional stream per forwarded connection.
pub const FORWARD_ALPN: &[u8] = b"malai/forward/1";
/// Joining a cluster with an invite (`join`): the one protocol a cluster
/// manager serves to keys it does not know.
pub const JOIN_ALPN: &[u8] = b"malai/join/1";
/// Session recordings, from an exec host to the cluster's recorder: one
/// stream per recording.
pub const RECORD_ALPN: &[u8] = b"malai/record/1";

/// How long a dial may take before we call the peer unreachable (iroh's own
/// limit for a dead address is about 30 s).
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// A peer that vanishes without closing (its process was killed, its network
/// cut) is declared gone after `IDLE_TIMEOUT`; keep-alives every
/// `KEEP_ALIVE` keep live but quiet connections (a `sleep`, a shell at its
/// prompt) open. On that timeout a host kills the abandoned command.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// Streams a peer may have open on one connection at once; together with
/// the per-peer command cap this bounds what one peer can make us hold.
const MAX_STREAMS_PER_CONNECTION: u32 = 32;
/// The initial congestion window: 32 full packets (as large QUIC deployments
/// use) instead of noq's ~10, so that a new connection's first request
/// leaves with the handshake's last flight instead of waiting on pacing
/// (measured in docs/BENCHMARKS.md: 4-9 ms per cold exec at 20-50 ms RTT).
const INITIAL_WINDOW: u64 = 32 * 1200;

/// The relay an identity's endpoint keeps a connection to, which is also
/// the relay its peers are dialled through: the members of a cluster share
/// the cluster's relay, so a peer's id and that relay's URL reach it behind
/// any NAT, with no address written down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayChoice {
    Disabled,
    /// iroh's public relays (peers found by discovery).
    Public,
    Own(OwnRelay),
}

impl std::fmt::Display for RelayChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayChoice::Disabled => write!(f, "disabled"),
            RelayChoice::Public => write!(f, "iroh's public relays"),
            RelayChoice::Own(own) => write!(f, "{}", own.url),
        }
    }
}

impl RelayChoice {
    /// malai.toml's choice over the cluster's relay: unset follows the
    /// cluster (else iroh's public relays); "default", "disabled" and a URL
    /// override it. malai.toml's `relay_ca` applies to its own URL, and to
    /// the cluster's relay when the cluster names no CA.
    pub fn resolve(net: &NetworkSettings, cluster: Option<&OwnRelay>) -> RelayChoice {
        match (&net.relay, cluster) {
            (Relay::Disabled, _) => RelayChoice::Disabled,
            (Relay::Public, _) | (Relay::Cluster, None) => RelayChoice::Public,
            (Relay::Url(url), _) => RelayChoice::Own(OwnRelay {
                url: url.clone(),
                ca_pem: net.relay_ca.clone(),
            }),
            (Relay::Cluster, Some(own)) => RelayChoice::Own(OwnRelay {
                url: own.url.clone(),
                ca_pem: own.ca_pem.clone().or_else(|| net.relay_ca.clone()),
            }),
        }
    }

    /// The relay to name in a dial, when it is our own.
    #[must_use]
    pub fn dial_via(&self) -> Option<iroh::RelayUrl> {
        match self {
            RelayChoice::Own(own) => Some(own.url()),
            RelayChoice::Disabled | RelayChoice::Public => None,
        }
    }
}

/// Binds an endpoint for `identity` with the network settings of malai.toml
/// and the relay `relay`. `port` fixes the UDP port (0: any). A daemon's
/// endpoint passes the gate of its cluster, which refuses strangers right
/// after the handshake.
pub async fn bind(
    identity: &Identity,
    net: &NetworkSettings,
    relay: &RelayChoice,
    port: u16,
    alpns: Vec<Vec<u8>>,
    gate: Option<&gate::Gate>,
) -> anyhow::Result<Endpoint> {
    let mut congestion = noq_proto::congestion::CubicConfig::default();
    congestion.initial_window(INITIAL_WINDOW);
    let transport = QuicTransportConfig::builder()
        .congestion_controller_factory(Arc::new(congestion))
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS_PER_CONNECTION))
        // No protocol of ours uses unidirectional streams.
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .keep_alive_interval(KEEP_ALIVE)
        .max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("idle timeout fits")))
        .build();
    let mut builder = if net.discovery {
        Endpoint::builder(presets::N0)
    } else {
        Endpoint::builder(presets::Minimal)
    };
    builder = builder
        .secret_key(identity.secret_key().clone())
        .alpns(alpns)
        .transport_config(transport);
    if let Some(gate) = gate {
        builder = builder.hooks(gate.hooks());
    }
    builder = match relay {
        RelayChoice::Public => builder.relay_mode(RelayMode::Default),
        RelayChoice::Disabled => builder.relay_mode(RelayMode::Disabled),
        RelayChoice::Own(own) => {
            if let Some(ca) = own.ca() {
                builder = builder.ca_tls_config(iroh::tls::CaTlsConfig::custom_roots(ca));
            }
            builder.relay_mode(RelayMode::custom([own.url()]))
        }
    };
    if !net.discovery {
        builder = builder.clear_address_lookup();
    }
    if !net.discovery && *relay == RelayChoice::Disabled {
        // A closed network: no UPnP multicast, no probes of public servers.
        builder = builder
            .portmapper_config(PortmapperConfig::Disabled)
            .net_report_config(NetReportConfig::minimal());
    }
    let builder = builder
        .clear_ip_transports()
        .bind_addr(SocketAddr::new(net.bind, port))
        .context("bind address")?;
    builder
        .bind()
        .await
        .with_context(|| format!("binding UDP {}:{port}", net.bind))
}

/// Closes a CLI's endpoint when its work is done, without waiting a round
/// trip for the peer to acknowledge the close: the `CONNECTION_CLOSE` goes
/// out at once (the short wait lets the driver send it) and the process is
/// about to exit. If it got lost, the peer only waits for its idle timeout.
pub async fn close_without_waiting(endpoint: Endpoint) {
    const SEND_CLOSE: Duration = Duration::from_millis(5);
    if tokio::time::timeout(SEND_CLOSE, endpoint.close())
        .await
        .is_err()
    {
        // Dropping an endpoint whose close is unfinished logs an error on
        // the user's terminal; the process ends soon and frees it all.
        std::mem::forget(endpoint);
    }
}

/// The addresses to give peers for an endpoint: its bound sockets, with an
/// unspecified IP replaced by loopback (useful for local hints and tests).
pub fn local_addrs(endpoint: &Endpoint) -> Vec<SocketAddr> {
    endpoint
        .bound_sockets()
        .into_iter()
        .map(|mut a| {
            if a.ip().is_unspecified() {
                a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            a
        })
        .collect()
}

/// Where a peer may be reached: address hints, and the relay it keeps a
/// connection to (the cluster's own relay), if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    pub addrs: Vec<SocketAddr>,
    pub relay: Option<iroh::RelayUrl>,
}

impl Reach {
    /// At these addresses, through no relay.
    pub fn at(addrs: &[SocketAddr]) -> Reach {
        Reach {
            addrs: addrs.to_vec(),
            relay: None,
        }
    }
}

/// Connects to `peer` (at `reach`, plus whatever discovery finds) for
/// `alpn`. A peer that refuses the connection before its handshake (all
/// its handshake slots taken: `gate::MAX_HANDSHAKES`) is asked again,
/// after a growing pause, until `DIAL_TIMEOUT`.
pub async fn dial(
    endpoint: &Endpoint,
    peer: &Id52,
    reach: &Reach,
    alpn: &[u8],
) -> anyhow::Result<Connection> {
    let mut addr = EndpointAddr::new(peer.public_key());
    for a in &reach.addrs {
        addr = addr.with_ip_addr(*a);
    }
    if let Some(relay) = &reach.relay {
        addr = addr.with_relay_url(relay.clone());
    }
    let attempts = async {
        let mut pause = Duration::from_millis(20);
        loop {
            match endpoint.connect(addr.clone(), alpn).await {
                Err(e) if refused_before_handshake(&e) => {
                    tracing::debug!("{peer} is busy with handshakes; asking again in {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                done => return done,
            }
        }
    };
    match tokio::time::timeout(DIAL_TIMEOUT, attempts).await {
        Ok(conn) => conn.with_context(|| format!("connecting to {peer}")),
        Err(_) => anyhow::bail!("{peer} did not answer within {} s", DIAL_TIMEOUT.as_secs()),
    }
}

/// Whether the peer refused a connection before its handshake, as a peer
/// whose handshake slots are all taken does.
fn refused_before_handshake(e: &ConnectError) -> bool {
    let closed = match e {
        ConnectError::Connection { source, .. } => source,
        ConnectError::Connecting {
            source: ConnectingError::ConnectionError { source, .. },
            ..
        } => source,
        _ => return false,
    };
    matches!(closed, ConnectionError::ConnectionClosed(close)
        if close.error_code == TransportErrorCode::CONNECTION_REFUSED)
}

/// Connections by (peer, ALPN).
type ConnMap = HashMap<(Id52, Vec<u8>), Connection>;

/// Reuses one live connection per (peer, protocol); dials through the
/// relay of the endpoint it serves.
#[derive(Debug, Clone, Default)]
pub struct Pool {
    conns: Arc<Mutex<ConnMap>>,
    relay: Option<iroh::RelayUrl>,
    relay_name: String,
}

impl Pool {
    /// A pool for an endpoint bound with `relay`.
    pub fn new(relay: &RelayChoice) -> Pool {
        Pool {
            conns: Arc::default(),
            relay: relay.dial_via(),
            relay_name: relay.to_string(),
        }
    }

    /// The relay of the endpoint, as status shows it.
    pub fn relay_name(&self) -> String {
        self.relay_name.clone()
    }

    /// Drops a connection that failed, so the next use dials afresh.
    pub async fn forget(&self, peer: &Id52, alpn: &[u8]) {
        self.conns.lock().await.remove(&(*peer, alpn.to_vec()));
    }

    pub async fn get(
        &self,
        endpoint: &Endpoint,
        peer: &Id52,
        addrs: &[SocketAddr],
        alpn: &[u8],
    ) -> anyhow::Result<Connection> {
        let key = (*peer, alpn.to_vec());
        if let Some(c) = self.conns.lock().await.get(&key)
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        // Dial without holding the lock, so dials to different peers run at
        // once; two racing dials to one peer both succeed and one is kept.
        let reach = Reach {
            addrs: addrs.to_vec(),
            relay: self.relay.clone(),
        };
        let conn = dial(endpoint, peer, &reach, alpn).await?;
        self.conns.lock().await.insert(key, conn.clone());
        Ok(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that refuses the first connections before their handshake
    /// (as one whose handshake slots are all taken does) is asked again:
    /// the dial succeeds once it accepts.
    #[tokio::test]
    async fn a_dial_refused_before_the_handshake_asks_again() {
        let net = NetworkSettings {
            relay: Relay::Disabled,
            discovery: false,
            bind: std::net::Ipv4Addr::LOCALHOST.into(),
            ..NetworkSettings::default()
        };
        let bind = |id: Identity, alpns: Vec<Vec<u8>>| {
            let net = net.clone();
            async move {
                bind(&id, &net, &RelayChoice::Disabled, 0, alpns, None)
                    .await
                    .unwrap()
            }
        };
        let server_id = Identity::generate();
        let peer = server_id.id52();
        let server = bind(server_id, vec![EXEC_ALPN.to_vec()]).await;
        let client = bind(Identity::generate(), Vec::new()).await;
        let reach = Reach::at(&local_addrs(&server));
        let accepting = {
            let server = server.clone();
            tokio::spawn(async move {
                for _ in 0..3 {
                    server.accept().await.unwrap().refuse();
                }
                let conn = server
                    .accept()
                    .await
                    .unwrap()
                    .accept()
                    .unwrap()
                    .await
                    .unwrap();
                conn.closed().await;
            })
        };
        let conn = dial(&client, &peer, &reach, EXEC_ALPN).await.unwrap();
        assert_eq!(conn.alpn(), EXEC_ALPN);
        conn.close(0u32.into(), b"done");
        accepting.await.unwrap();
        client.close().await;
        server.close().await;
    }

    #[test]
    fn malai_toml_overrides_the_clusters_relay() {
        let own = |url: &str, ca: Option<&str>| OwnRelay {
            url: url.into(),
            ca_pem: ca.map(Into::into),
        };
        let cluster = own("https://relay.company:3443", Some("CLUSTER CA"));
        let mut net = NetworkSettings::default();
        assert_eq!(
            RelayChoice::resolve(&net, Some(&cluster)),
            RelayChoice::Own(cluster.clone()),
            "unset follows the cluster"
        );
        assert_eq!(RelayChoice::resolve(&net, None), RelayChoice::Public);
        net.relay_ca = Some("LOCAL CA".into());
        assert_eq!(
            RelayChoice::resolve(&net, Some(&own("https://r:1", None))),
            RelayChoice::Own(own("https://r:1", Some("LOCAL CA"))),
            "a local CA for a cluster relay that names none"
        );
        net.relay = Relay::Url("https://mine:3443".into());
        assert_eq!(
            RelayChoice::resolve(&net, Some(&cluster)),
            RelayChoice::Own(own("https://mine:3443", Some("LOCAL CA")))
        );
        net.relay = Relay::Disabled;
        assert_eq!(
            RelayChoice::resolve(&net, Some(&cluster)),
            RelayChoice::Disabled
        );
        net.relay = Relay::Public;
        assert_eq!(
            RelayChoice::resolve(&net, Some(&cluster)),
            RelayChoice::Public
        );
    }
}
