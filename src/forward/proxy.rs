//! The host's HTTP proxy for `protocol = "http"` services: HTTP/1.1 served
//! (by hyper) on the forwarded stream, each request sent on to the service
//! over one connection to 127.0.0.1:port (opened again when the service
//! closes it). For every request the `malai-client-*` headers the client
//! sent are removed, under any spelling a framework could confuse with ours
//! (`Malai_Client_Id52` becomes `HTTP_MALAI_CLIENT_ID52` in CGI and WSGI, as
//! the real one does), and ours are added unless `inject_headers = false`;
//! so an application can trust them. Keep-alive works on both sides;
//! `Upgrade` (WebSocket) is passed through and then piped as bytes. A
//! request the service's connection closed under (an idle keep-alive
//! connection it dropped just then) is sent once more on a new connection
//! when it never left or has no body and a safe method.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::host::{ClientInfo, Opened};

/// The peer's id52, as iroh authenticated it.
pub const CLIENT_ID52: &str = "malai-client-id52";
/// The peer's machine alias in the cluster (absent when it is not a machine).
pub const CLIENT_MACHINE: &str = "malai-client-machine";
/// The cluster's alias on the host.
pub const CLIENT_CLUSTER: &str = "malai-client-cluster";
const OURS: [&str; 3] = [CLIENT_ID52, CLIENT_MACHINE, CLIENT_CLUSTER];

/// Headers that describe one hop, not the message (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
];

type Body = BoxBody<Bytes, hyper::Error>;

/// Serves HTTP/1.1 on `io` until the client closes it, proxying each
/// request to the service of `opened`.
pub async fn serve<IO>(opened: Opened, io: IO) -> anyhow::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let proxy = Arc::new(Proxy {
        inject: opened
            .service
            .inject_headers
            .then(|| client_headers(&opened.client)),
        upstream: Mutex::new(Upstream {
            addr: opened.upstream_addr(),
            first: Some(opened.upstream),
            sender: None,
        }),
    });
    let service = hyper::service::service_fn(move |req| {
        let proxy = proxy.clone();
        async move { Ok::<_, std::convert::Infallible>(proxy.handle(req).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await?;
    Ok(())
}

struct Proxy {
    /// The headers to add to each request; `None` with inject_headers off.
    inject: Option<Vec<(HeaderName, HeaderValue)>>,
    upstream: Mutex<Upstream>,
}

/// The one connection to the service, opened again when it closes.
struct Upstream {
    addr: SocketAddr,
    /// The connection the host opened when it decided (so that a service
    /// that is down is reported before any byte flows).
    first: Option<TcpStream>,
    sender: Option<SendRequest<Body>>,
}

impl Upstream {
    async fn sender(&mut self) -> io::Result<&mut SendRequest<Body>> {
        let usable = match &mut self.sender {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            let tcp = match self.first.take() {
                Some(t) => t,
                None => TcpStream::connect(self.addr).await?,
            };
            let _ = tcp.set_nodelay(true);
            let (sender, conn) = hyper::client::conn::http1::Builder::new()
                .handshake(TokioIo::new(tcp))
                .await
                .map_err(io::Error::other)?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            self.sender = Some(sender);
        }
        Ok(self.sender.as_mut().expect("just set"))
    }
}

impl Proxy {
    async fn handle(&self, mut req: Request<Incoming>) -> Response<Body> {
        strip_client_headers(req.headers_mut());
        if let Some(inject) = &self.inject {
            for (name, value) in inject {
                req.headers_mut().insert(name.clone(), value.clone());
            }
        }
        let upgrade = wants_upgrade(req.headers());
        strip_hop_by_hop(req.headers_mut(), upgrade.as_ref());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let replay = replayable(&req);

        let sent = self.send(req.map(BodyExt::boxed), replay).await;
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => return error_page(StatusCode::BAD_GATEWAY, &format!("the service: {e}")),
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let service_upgrade = hyper::upgrade::on(&mut resp);
                tokio::spawn(async move {
                    if let (Ok(client), Ok(service)) = tokio::join!(client_upgrade, service_upgrade)
                    {
                        let mut client = TokioIo::new(client);
                        let mut service = TokioIo::new(service);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut service).await;
                    }
                });
            }
            return resp.map(BodyExt::boxed);
        }
        strip_hop_by_hop(resp.headers_mut(), None);
        resp.map(BodyExt::boxed)
    }

    /// Sends `req` to the service; when the service's connection closed
    /// under it, once more on a new connection if the request never left
    /// or `replay` (its bodiless copy) may be sent twice.
    async fn send(
        &self,
        req: Request<Body>,
        replay: Option<Request<()>>,
    ) -> io::Result<Response<Incoming>> {
        let mut upstream = self.upstream.lock().await;
        let mut failed = match upstream.sender().await?.try_send_request(req).await {
            Ok(resp) => return Ok(resp),
            Err(e) => e,
        };
        let closed = failed.error().is_incomplete_message() || failed.error().is_canceled();
        let again = match (failed.take_message(), replay) {
            (Some(unsent), _) => unsent,
            (None, Some(copy)) if closed => copy.map(|()| full_body(Bytes::new())),
            (None, _) => return Err(io::Error::other(failed.into_error())),
        };
        tracing::debug!("the service closed its connection under a request: sending it again");
        upstream.sender = None;
        upstream
            .sender()
            .await?
            .send_request(again)
            .await
            .map_err(io::Error::other)
    }
}

/// A bodiless copy of `req` when sending it twice is safe: a GET, HEAD or
/// OPTIONS whose body is empty (RFC 9110 9.2.2: safe, idempotent).
fn replayable(req: &Request<Incoming>) -> Option<Request<()>> {
    use hyper::Method;
    use hyper::body::Body as _;
    let safe = [Method::GET, Method::HEAD, Method::OPTIONS].contains(req.method());
    if !safe || !req.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// A body of our own, whole in memory.
fn full_body(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// The headers that tell the application who the peer is.
pub fn client_headers(client: &ClientInfo) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    let mut add = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            out.push((HeaderName::from_static(name), v));
        }
    };
    add(CLIENT_ID52, &client.id52.to_string());
    if let Some(machine) = &client.machine {
        add(CLIENT_MACHINE, machine);
    }
    add(CLIENT_CLUSTER, &client.cluster);
    out
}

/// Removes every header that could pass for one of ours: same name in any
/// case, with `_` for `-`.
pub fn strip_client_headers(headers: &mut HeaderMap) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let normal = name.as_str().to_ascii_lowercase().replace('_', "-");
            OURS.contains(&normal.as_str())
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(&name);
    }
}

/// The `Upgrade` value of a request that asks to switch protocols.
fn wants_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(UPGRADE).cloned()).flatten()
}

/// Removes the hop-by-hop headers (and those `Connection` names); for an
/// upgrade, keeps `Connection: upgrade` and the `Upgrade` it asks for.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<&HeaderValue>) {
    let named: Vec<String> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        headers.remove(name);
    }
    if let Some(protocol) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, protocol.clone());
    }
}

fn error_page(status: StatusCode, message: &str) -> Response<Body> {
    let body = format!("{status}: {message}\n");
    let mut resp = Response::new(full_body(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_sent_headers_are_stripped_under_any_spelling() {
        let mut h = HeaderMap::new();
        h.insert("malai-client-id52", HeaderValue::from_static("forged"));
        h.append("malai-client-id52", HeaderValue::from_static("forged2"));
        h.insert("Malai_Client_Machine", HeaderValue::from_static("forged"));
        h.insert("MALAI-CLIENT-CLUSTER", HeaderValue::from_static("forged"));
        h.insert("malai-client-other", HeaderValue::from_static("kept"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_client_headers(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["accept", "malai-client-other"]);
    }

    #[test]
    fn hop_by_hop_headers_go_but_an_upgrade_is_kept() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, X-Trace"));
        h.insert("x-trace", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("host", HeaderValue::from_static("a.b.localhost"));
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["host"]);

        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        let up = wants_upgrade(&h);
        assert_eq!(up, Some(HeaderValue::from_static("websocket")));
        strip_hop_by_hop(&mut h, up.as_ref());
        assert_eq!(h[CONNECTION], "upgrade");
        assert_eq!(h[UPGRADE], "websocket");
    }
}
