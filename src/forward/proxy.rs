//! The host's HTTP proxy for `protocol = "http"` services: HTTP/1.1 served
//! (by hyper) on the forwarded stream, each request sent on to the service
//! over one connection to 127.0.0.1:port (opened again when the service
//! closes it). Each request head is rewritten in this order, so nothing
//! the client sends can remove or replace what the host adds:
//!
//! 1. the hop-by-hop headers go, as an RFC 9110 (7.6.1) proxy drops them:
//!    `Connection` and every header it names, `Keep-Alive`,
//!    `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding` (hyper
//!    frames the body again) and `Upgrade`, except a WebSocket upgrade;
//! 2. the `malai-client-*` headers the client sent go, under any spelling a
//!    framework could confuse with ours (`Malai_Client_Id52` becomes
//!    `HTTP_MALAI_CLIENT_ID52` in CGI and WSGI, as the real one does);
//! 3. ours are added, unless `inject_headers = false`.
//!
//! hyper parses and frames messages and keeps its own connections alive
//! or closes them as `Connection` says, but passes every header on as
//! received: dropping them is this module's work.
//!
//! Only WebSocket switches protocols (`Upgrade: websocket` with
//! `Connection: upgrade`, any case): after the service's 101 the two
//! connections are piped as bytes. Any other `Upgrade` (`h2c`, …) is
//! dropped like the other hop-by-hop headers, so the service answers the
//! request as plain HTTP/1.1 and the connection stays one this proxy
//! rewrites request by request (after an h2c switch the requests would flow
//! unseen, forged headers and all); the client goes on in HTTP/1.1, as RFC
//! 9110 (7.8) lets a server that ignores `Upgrade` do. That is what nginx
//! does with a header it was not told to pass. A 101 that does not answer
//! a WebSocket upgrade with `Upgrade: websocket` is answered 502, never
//! piped.
//!
//! A request that looks like a web page of another site making this
//! device's browser act (cross-site request forgery, DNS rebinding) is
//! answered 403 and never reaches the service: an unsafe method (anything
//! but GET, HEAD, OPTIONS, TRACE), or a WebSocket handshake (which CORS
//! does not guard), sent with `Sec-Fetch-Site: cross-site` or with an
//! `Origin` that is neither this device (`localhost`, `*.localhost`, a
//! loopback address) nor the request's own `Host`.
//!
//! A request the service's connection closed under (an idle keep-alive
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
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::host::{ClientInfo, Opened};

/// The only protocol a request may switch to (RFC 6455).
const WEBSOCKET: &str = "websocket";

/// The peer's id52, as iroh authenticated it.
pub const CLIENT_ID52: &str = "malai-client-id52";
/// The peer's machine alias in the cluster (absent when it is not a machine).
pub const CLIENT_MACHINE: &str = "malai-client-machine";
/// The cluster's alias on the host.
pub const CLIENT_CLUSTER: &str = "malai-client-cluster";
const OURS: [&str; 3] = [CLIENT_ID52, CLIENT_MACHINE, CLIENT_CLUSTER];

/// Headers that describe one hop, not the message (RFC 9110 7.6.1), and
/// `Proxy-Authenticate`, which answers a proxy's own authentication.
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
        if let Some(why) = cross_site(&req) {
            tracing::info!("http: refused {} {}: {why}", req.method(), req.uri().path());
            return error_page(StatusCode::FORBIDDEN, &why);
        }
        let websocket = rewrite_request(req.headers_mut(), self.inject.as_deref());
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        let replay = replayable(&req);

        let sent = self.send(req.map(BodyExt::boxed), replay).await;
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => return error_page(StatusCode::BAD_GATEWAY, &format!("the service: {e}")),
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            return switch(client_upgrade, resp);
        }
        strip_hop_by_hop(resp.headers_mut(), false);
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

/// The service's 101: the client's and the service's connections piped as
/// bytes once both have switched, when it answers the WebSocket upgrade
/// the client asked for (`client`); else 502, and neither is piped.
fn switch(client: Option<OnUpgrade>, mut resp: Response<Incoming>) -> Response<Body> {
    let to_websocket = tokens(resp.headers(), &UPGRADE).any(is_websocket);
    let Some(client) = client.filter(|_| to_websocket) else {
        return error_page(
            StatusCode::BAD_GATEWAY,
            "the service switched protocols, and not to the WebSocket asked for",
        );
    };
    let service = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        if let (Ok(client), Ok(service)) = tokio::join!(client, service) {
            let mut client = TokioIo::new(client);
            let mut service = TokioIo::new(service);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut service).await;
        }
    });
    resp.map(BodyExt::boxed)
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

/// Rewrites a request head for the service (the steps of this module's
/// header, in that order: what `Connection` names goes before ours are
/// added, so it cannot name them away); whether it keeps a WebSocket
/// upgrade.
fn rewrite_request(headers: &mut HeaderMap, inject: Option<&[(HeaderName, HeaderValue)]>) -> bool {
    let websocket = wants_websocket(headers);
    strip_hop_by_hop(headers, websocket);
    strip_client_headers(headers);
    for (name, value) in inject.unwrap_or_default() {
        headers.insert(name.clone(), value.clone());
    }
    websocket
}

/// The comma-separated tokens of every `name` line, trimmed.
fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether a request asks to switch to WebSocket: `Connection: upgrade`
/// and `websocket` among the `Upgrade` protocols (tokens, any case).
fn wants_websocket(headers: &HeaderMap) -> bool {
    tokens(headers, &CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"))
        && tokens(headers, &UPGRADE).any(is_websocket)
}

/// Whether an `Upgrade` token names WebSocket.
fn is_websocket(protocol: &str) -> bool {
    protocol.eq_ignore_ascii_case(WEBSOCKET)
}

/// Removes the hop-by-hop headers and those `Connection` names; for a
/// WebSocket upgrade, then sets `Connection: upgrade` and
/// `Upgrade: websocket` (only: any other protocol offered beside it goes).
fn strip_hop_by_hop(headers: &mut HeaderMap, websocket: bool) {
    let named: Vec<String> = tokens(headers, &CONNECTION)
        .map(str::to_ascii_lowercase)
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        headers.remove(name);
    }
    if websocket {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static(WEBSOCKET));
    }
}

/// Why `req` looks sent by a page of another site (the module's header),
/// if it does.
fn cross_site<B>(req: &Request<B>) -> Option<String> {
    let headers = req.headers();
    let unsafe_method = !matches!(
        *req.method(),
        hyper::Method::GET | hyper::Method::HEAD | hyper::Method::OPTIONS | hyper::Method::TRACE
    );
    if !unsafe_method && !wants_websocket(headers) {
        return None;
    }
    let fetch_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if fetch_site.eq_ignore_ascii_case("cross-site") {
        return Some("a page of another site sent it (Sec-Fetch-Site: cross-site)".into());
    }
    let origin = headers.get(hyper::header::ORIGIN)?;
    let host = headers
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest.trim_end_matches('/'))
        .unwrap_or("");
    let name = match origin_host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => origin_host,
    }
    .trim_start_matches('[')
    .trim_end_matches(']')
    .to_ascii_lowercase();
    let this_device = name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if this_device || (!origin_host.is_empty() && origin_host.eq_ignore_ascii_case(host)) {
        return None;
    }
    Some(format!(
        "a page of another site sent it (Origin: {})",
        String::from_utf8_lossy(origin.as_bytes())
    ))
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
    fn unsafe_requests_from_another_site_are_refused_and_the_rest_pass() {
        let req = |method: &str, pairs: &[(&str, &str)]| {
            let mut b = Request::builder()
                .method(method)
                .uri("/")
                .header("host", "admin.company.localhost:8080");
            for (k, v) in pairs {
                b = b.header(*k, *v);
            }
            b.body(()).unwrap()
        };
        let evil = ("origin", "https://evil.example");
        let refused = [
            req("POST", &[evil]),
            req("DELETE", &[("origin", "null")]),
            req("PUT", &[("sec-fetch-site", "cross-site")]),
            req("POST", &[("origin", "http://192.168.1.9")]),
            req(
                "GET",
                &[evil, ("connection", "Upgrade"), ("upgrade", "websocket")],
            ),
        ];
        for r in &refused {
            assert!(cross_site(r).is_some(), "{r:?}");
        }
        let passed = [
            req("GET", &[evil]),
            req("HEAD", &[("sec-fetch-site", "cross-site")]),
            req("POST", &[]),
            req("POST", &[("origin", "http://admin.company.localhost:8080")]),
            req("POST", &[("origin", "http://app.company.localhost:8080")]),
            req("POST", &[("origin", "http://127.0.0.1:3000")]),
            req("POST", &[("origin", "http://[::1]:3000")]),
            req("POST", &[("sec-fetch-site", "same-site")]),
        ];
        for r in &passed {
            assert_eq!(cross_site(r), None, "{r:?}");
        }
    }

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

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_static(value));
        }
        h
    }

    fn ours() -> Vec<(HeaderName, HeaderValue)> {
        vec![
            (
                HeaderName::from_static(CLIENT_ID52),
                HeaderValue::from_static("real"),
            ),
            (
                HeaderName::from_static(CLIENT_CLUSTER),
                HeaderValue::from_static("company"),
            ),
        ]
    }

    #[test]
    fn hop_by_hop_headers_go_but_a_websocket_upgrade_is_kept() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Trace"),
            ("x-trace", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("host", "a.b.localhost"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["host"]);

        let mut h = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ]);
        assert!(wants_websocket(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[CONNECTION], "upgrade");
        assert_eq!(h[UPGRADE], WEBSOCKET);
    }

    #[test]
    fn only_websocket_is_an_upgrade() {
        for (connection, upgrade, websocket) in [
            ("upgrade", "websocket", true),
            ("Keep-Alive, UPGRADE", "WebSocket", true),
            ("upgrade", "h2c, websocket", true),
            ("upgrade", "h2c", false),
            ("Upgrade, HTTP2-Settings", "h2c", false),
            ("upgrade", "foo", false),
            ("upgrade", "websocketx, foo/2", false),
            ("keep-alive", "websocket", false),
        ] {
            let mut h = headers(&[("connection", connection), ("upgrade", upgrade)]);
            assert_eq!(wants_websocket(&h), websocket, "{connection} / {upgrade}");
            let kept = rewrite_request(&mut h, None);
            assert_eq!(kept, websocket, "{connection} / {upgrade}");
            let sent: Vec<_> = h.get_all(UPGRADE).iter().collect();
            if websocket {
                assert_eq!(sent, [WEBSOCKET], "only websocket is offered on");
                assert_eq!(h[CONNECTION], "upgrade");
            } else {
                assert!(sent.is_empty(), "{upgrade} is not offered on");
                assert!(!h.contains_key(CONNECTION));
            }
        }
    }

    #[test]
    fn connection_cannot_name_our_headers_away() {
        for connection in [
            "malai-client-id52",
            "close, MALAI-Client-Id52",
            "Malai_Client_Id52, malai-client-cluster",
        ] {
            let mut h = headers(&[
                ("connection", connection),
                ("malai-client-id52", "forged"),
                ("malai_client_id52", "forged"),
                ("accept", "*/*"),
            ]);
            let inject = ours();
            rewrite_request(&mut h, Some(&inject));
            let id: Vec<_> = h.get_all(CLIENT_ID52).iter().collect();
            assert_eq!(id, ["real"], "{connection}");
            assert_eq!(h[CLIENT_CLUSTER], "company", "{connection}");
            let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
            left.sort_unstable();
            assert_eq!(
                left,
                ["accept", CLIENT_CLUSTER, CLIENT_ID52],
                "{connection}"
            );
        }

        // Without injection a named or forged header of ours still goes.
        let mut h = headers(&[
            ("connection", "malai-client-id52"),
            ("Malai_Client_Id52", "forged"),
        ]);
        rewrite_request(&mut h, None);
        assert!(h.is_empty(), "{h:?}");
    }
}
