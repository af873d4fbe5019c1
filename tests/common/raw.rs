//! A raw client built from the library: one request as any key (a
//! stranger's, a member's, the CM's), on loopback, on `malai/config/1` or
//! any other protocol, to see what a daemon answers to what the CLI would
//! never send.

use std::net::SocketAddr;
use std::path::Path;

use malai::identity::{Id52, Identity};
use malai::p2p::{self, CONFIG_ALPN, frame};
use malai::sync::envelope::Envelope;
use malai::sync::proto::{ConfigRequest, PushAnswer};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The network settings of a test client on loopback: no relay, no
/// discovery.
pub fn loopback_network() -> malai::config::NetworkSettings {
    let settings = "[network]\nrelay = \"disabled\"\ndiscovery = false\nbind = \"127.0.0.1\"\n";
    malai::config::local::parse(Path::new("malai.toml"), settings)
        .unwrap_or_else(|d| panic!("{d}"))
        .network
}

/// An endpoint for `id` on loopback, as a test client (no ALPN of its own,
/// no gate).
pub async fn endpoint(id: &Identity) -> iroh::Endpoint {
    p2p::bind(
        id,
        &loopback_network(),
        &p2p::RelayChoice::Disabled,
        0,
        Vec::new(),
        None,
    )
    .await
    .unwrap()
}

/// One request to `to` at `addr`, as `from`; the answer, of the type that
/// answers the request's kind.
pub fn config_request<A: DeserializeOwned>(
    from: &Identity,
    to: &Id52,
    addr: SocketAddr,
    request: ConfigRequest,
) -> A {
    try_config_request(from, to, addr, request).unwrap_or_else(|e| panic!("{e}"))
}

/// A `Push` of `envelope` to `to` at `addr`, as `from`; the answer.
pub fn push(from: &Identity, to: &Id52, addr: SocketAddr, envelope: Envelope) -> PushAnswer {
    config_request(from, to, addr, ConfigRequest::Push { envelope })
}

/// `config_request`, for a sender the host may refuse outright: what went
/// wrong on the connection, as text.
pub fn try_config_request<A: DeserializeOwned>(
    from: &Identity,
    to: &Id52,
    addr: SocketAddr,
    request: ConfigRequest,
) -> Result<A, String> {
    try_request(from, to, addr, CONFIG_ALPN, &request)
}

/// One `request` on protocol `alpn` to `to` at `addr`, as `from`: its
/// answer, or what went wrong on the connection (the host's close reason
/// when it refused), as text.
pub fn try_request<R: Serialize, A: DeserializeOwned>(
    from: &Identity,
    to: &Id52,
    addr: SocketAddr,
    alpn: &[u8],
    request: &R,
) -> Result<A, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let endpoint = endpoint(from).await;
        let answer = async {
            let conn = p2p::dial(&endpoint, to, &p2p::Reach::at(&[addr]), alpn)
                .await
                .map_err(|e| format!("{e:#}"))?;
            let exchange = async {
                let (mut send, mut recv) = conn.open_bi().await?;
                frame::write_msg(&mut send, request).await?;
                send.finish()?;
                anyhow::Ok(frame::read_msg::<_, A>(&mut recv).await?)
            };
            let answer = exchange.await.map_err(|e| match conn.close_reason() {
                Some(reason) => format!("{reason}"),
                None => format!("{e:#}"),
            });
            conn.close(0u32.into(), b"done");
            answer
        }
        .await;
        endpoint.close().await;
        answer
    })
}
