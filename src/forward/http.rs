//! HTTP by name: one listener (`[http] listen`, or the socket systemd passes
//! as `http`) that routes each connection by the `Host:` of its first
//! request, `SERVICE.CLUSTER.localhost[:port]`, to that service's host. The
//! head is read with httparse, only to route; the bytes read so far and all
//! that follow go to the host as they are, and the host's proxy handles
//! keep-alive, the headers and a WebSocket `Upgrade`. So a connection stays
//! with the service its first request named (browsers keep one connection
//! per host name anyway).
//! An unknown `SERVICE.CLUSTER.localhost` (or `localhost` itself) gets a
//! page listing the services this device may reach; any other name, a bare
//! 404 (a page of another site that DNS rebinding points here learns
//! nothing); a refusal by the host, 403 and a log line.

use std::fmt::Write as _;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::client::{self, Clusters, Refused, Stream};
use crate::acl;
use crate::config::Protocol;
use crate::html::escape;

/// The most a request head may take before the routing gives up (431).
const MAX_HEAD: usize = 64 * 1024;
/// How long a client may take to send its first request head.
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// The name suffix that routes here.
const SUFFIX: &str = ".localhost";

/// The name of the daemon's own status page (`status_page`).
const STATUS_NAME: &str = "malai.localhost";

/// Accepts connections on `listener` and routes each by name;
/// `malai.localhost` is the status page, which lists `forwards`.
pub async fn serve(
    listener: TcpListener,
    clusters: Clusters,
    forwards: super::listeners::Forwards,
) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(80);
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("http listener: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        if !super::client::local_user_may_connect(&tcp, from, "http") {
            continue;
        }
        let (clusters, forwards) = (clusters.clone(), forwards.clone());
        tokio::spawn(async move {
            if let Err(e) = route(tcp, port, &clusters, &forwards).await {
                tracing::debug!("http connection from {from} ended: {e:#}");
            }
        });
    }
}

/// What the `Host:` of a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Name {
    /// `SERVICE.CLUSTER.localhost`, lowercase.
    Service { service: String, cluster: String },
    /// Anything else (`localhost`, an address, another name).
    Other,
}

/// Parses a `Host:` value; also returns its port, if any.
pub fn parse_host(host: &str) -> (Name, Option<u16>) {
    let host = host.trim().to_ascii_lowercase();
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => match p.parse::<u16>() {
            Ok(p) => (n.to_owned(), Some(p)),
            Err(_) => (host.clone(), None),
        },
        _ => (host.clone(), None),
    };
    let name = name.strip_suffix('.').unwrap_or(&name);
    let parsed = name
        .strip_suffix(SUFFIX)
        .and_then(|rest| rest.split_once('.'))
        .filter(|(s, c)| !s.is_empty() && !c.is_empty() && !c.contains('.'))
        .map_or(Name::Other, |(s, c)| Name::Service {
            service: s.to_owned(),
            cluster: c.to_owned(),
        });
    (parsed, port)
}

async fn route(
    mut tcp: TcpStream,
    listen_port: u16,
    clusters: &Clusters,
    forwards: &super::listeners::Forwards,
) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let host = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut tcp, &mut buf)).await {
        Err(_) => return Ok(()),
        Ok(Err(Head::Closed)) => return Ok(()),
        Ok(Err(Head::TooLarge)) => {
            return respond(
                &mut tcp,
                431,
                "Request Header Fields Too Large",
                "The request head is too large.",
            )
            .await;
        }
        Ok(Err(Head::Malformed)) => {
            return respond(
                &mut tcp,
                400,
                "Bad Request",
                "This is malai's HTTP listener; it speaks HTTP/1.1.",
            )
            .await;
        }
        Ok(Ok(host)) => host.unwrap_or_default(),
    };
    let (name, port) = parse_host(&host);
    let port = port.unwrap_or(listen_port);
    let (service, cluster) = match name {
        Name::Service { service, cluster } => (service, cluster),
        Name::Other if host_name(&host) == STATUS_NAME => {
            let all: Vec<_> = clusters.borrow().values().cloned().collect();
            let status: Vec<_> = all.iter().map(|c| c.status()).collect();
            let forwards = forwards.read().expect("forwards lock").clone();
            let page = crate::status_page::render(&status, &forwards, &crate::audit::recent());
            return respond(&mut tcp, 200, "OK", &page).await;
        }
        Name::Other if is_local_name(&host) => {
            let page = index_page(clusters, port, None);
            return respond(&mut tcp, 200, "OK", &page).await;
        }
        Name::Other => {
            // Another name resolved to this listener (DNS rebinding, a
            // typo): no list of services for a page of some other site.
            let page = message_page(
                "Not Found",
                "This listener routes SERVICE.CLUSTER.localhost names only.",
            );
            return respond(&mut tcp, 404, "Not Found", &page).await;
        }
    };
    // Names in a Host: header arrive lowercase; match config names so too.
    let found = find(clusters, &cluster, &service);
    let Some((shared, service_name)) = found else {
        let page = index_page(clusters, port, Some(&format!("{service}.{cluster}")));
        return respond(&mut tcp, 404, "Not Found", &page).await;
    };
    let stream = match client::connect(&shared, &service_name).await {
        Ok(s) => s,
        Err(why) => {
            tracing::warn!(
                malai_cluster = %shared.alias(), malai_service = %service_name,
                "http: {service_name}.{} refused for {host:?}: {why}", shared.alias()
            );
            let (code, reason, text) = match &why {
                Refused::Denied(_) => (
                    403,
                    "Forbidden",
                    "The service's host does not allow this device.",
                ),
                Refused::Unknown(_) => (404, "Not Found", "This device knows no such service."),
                Refused::Failed(_) => (502, "Bad Gateway", "The service could not be reached."),
            };
            let page = message_page(
                reason,
                &format!("{service_name}.{}: {text}\n{why}", shared.alias()),
            );
            return respond(&mut tcp, code, reason, &page).await;
        }
    };
    match stream {
        Stream::Remote { mut send, recv, .. } => {
            send.write_all(&buf).await?;
            super::pipe::tcp_quic(tcp, send, recv).await?;
        }
        Stream::Local(opened) => {
            let (r, w) = tcp.into_split();
            let io = tokio::io::join(std::io::Cursor::new(buf).chain(r), w);
            super::host::serve_local(opened, io).await?;
        }
    }
    Ok(())
}

/// A `Host:` value, trimmed and lowercase, without its port.
fn without_port(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    match host.rsplit_once(':') {
        Some((n, p)) if p.parse::<u16>().is_ok() => n.to_owned(),
        _ => host,
    }
}

/// A `Host:` value's name, lowercase, without port or final dot.
fn host_name(host: &str) -> String {
    let name = without_port(host);
    name.strip_suffix('.').unwrap_or(&name).to_owned()
}

/// Whether a `Host:` value names this device: `localhost`, a name under
/// it, or an IP address.
fn is_local_name(host: &str) -> bool {
    let trimmed = without_port(host);
    let host = host.trim().to_ascii_lowercase();
    let name = trimmed.trim_start_matches('[').trim_end_matches(']');
    let name = name.strip_suffix('.').unwrap_or(name);
    name == "localhost"
        || name.ends_with(SUFFIX)
        || name.parse::<std::net::IpAddr>().is_ok()
        || host.parse::<std::net::IpAddr>().is_ok()
}

/// The running cluster and the service's configured name for a lowercase
/// `service`.`cluster` (only http services route here).
fn find(
    clusters: &Clusters,
    cluster: &str,
    service: &str,
) -> Option<(std::sync::Arc<crate::cluster::Cluster>, String)> {
    let all = clusters.borrow();
    let shared = all
        .iter()
        .find(|(alias, _)| alias.eq_ignore_ascii_case(cluster))
        .map(|(_, s)| s.clone())?;
    drop(all);
    let config = shared.config()?;
    let name = config
        .services
        .iter()
        .find(|(n, s)| n.eq_ignore_ascii_case(service) && s.protocol == Protocol::Http)
        .map(|(n, _)| n.clone())?;
    Some((shared, name))
}

enum Head {
    Closed,
    TooLarge,
    Malformed,
}

/// Reads until a whole request head is in `buf`; its `Host:` value.
async fn read_head(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Option<String>, Head> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(_)) => {
                return Ok(req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("host"))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned()));
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(Head::TooLarge),
            Err(_) => return Err(Head::Malformed),
        }
        if buf.len() >= MAX_HEAD {
            return Err(Head::TooLarge);
        }
        let mut chunk = [0u8; 8192];
        let n = tcp.read(&mut chunk).await.map_err(|_| Head::Closed)?;
        if n == 0 {
            return Err(Head::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Writes a whole response and closes the connection.
async fn respond(tcp: &mut TcpStream, code: u16, reason: &str, html: &str) -> anyhow::Result<()> {
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n",
        html.len()
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(html.as_bytes()).await?;
    tcp.shutdown().await?;
    Ok(())
}

/// The http services this device may reach, with links on `port`; says
/// first that `asked` is not one of them, when given.
pub fn index_page(clusters: &Clusters, port: u16, asked: Option<&str>) -> String {
    let mut items = Vec::new();
    for (alias, shared) in clusters.borrow().iter() {
        let Some(config) = shared.config() else {
            continue;
        };
        let me = shared.id52();
        for (name, s) in &config.services {
            if s.protocol == Protocol::Http && acl::matching(&config, &s.allow_from, &me).is_some()
            {
                items.push((format!("{name}.{alias}"), s.machine.clone()));
            }
        }
    }
    let port = if port == 80 {
        String::new()
    } else {
        format!(":{port}")
    };
    let mut body = String::new();
    if let Some(asked) = asked {
        let _ = writeln!(
            body,
            "<p>This device knows no HTTP service <b>{}</b>.</p>",
            escape(asked)
        );
    }
    if items.is_empty() {
        body.push_str("<p>This device may reach no HTTP service.</p>\n");
    } else {
        body.push_str("<p>The HTTP services this device may reach:</p>\n<ul>\n");
        for (name, machine) in &items {
            let _ = writeln!(
                body,
                "<li><a href=\"http://{n}.localhost{port}/\">{n}</a> (on {m})</li>",
                n = escape(name),
                m = escape(machine)
            );
        }
        body.push_str("</ul>\n");
    }
    let _ = writeln!(
        body,
        "<p><a href=\"http://{STATUS_NAME}{port}/\">This daemon's status</a></p>"
    );
    page("malai: services", &body)
}

fn message_page(title: &str, text: &str) -> String {
    page(
        &format!("malai: {title}"),
        &format!("<pre>{}</pre>\n", escape(text)),
    )
}

fn page(title: &str, body: &str) -> String {
    crate::html::page(title, "", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(s: &str, c: &str) -> Name {
        Name::Service {
            service: s.into(),
            cluster: c.into(),
        }
    }

    #[test]
    fn host_names() {
        assert_eq!(
            parse_host("admin.company.localhost"),
            (svc("admin", "company"), None)
        );
        assert_eq!(
            parse_host("Admin.Company.LOCALHOST:8080"),
            (svc("admin", "company"), Some(8080))
        );
        assert_eq!(
            parse_host("admin.company.localhost.:80"),
            (svc("admin", "company"), Some(80))
        );
        assert_eq!(parse_host("localhost:80"), (Name::Other, Some(80)));
        assert_eq!(parse_host("company.localhost"), (Name::Other, None));
        assert_eq!(parse_host("a.b.c.localhost"), (Name::Other, None));
        assert_eq!(parse_host("admin.company.example"), (Name::Other, None));
        assert_eq!(parse_host("[::1]:80"), (Name::Other, Some(80)));
        assert_eq!(parse_host(""), (Name::Other, None));
    }

    #[test]
    fn only_local_names_get_the_list() {
        for local in [
            "localhost",
            "localhost:8088",
            "127.0.0.1:80",
            "[::1]:80",
            "x.localhost",
            "::1",
        ] {
            assert!(is_local_name(local), "{local}");
        }
        for other in [
            "evil.example",
            "evil.example:80",
            "localhost.evil.example",
            "",
        ] {
            assert!(!is_local_name(other), "{other}");
        }
    }

    #[test]
    fn pages_escape_what_the_client_sent() {
        let (_publisher, clusters) = tokio::sync::watch::channel(Default::default());
        let page = index_page(&clusters, 8080, Some("<script>.x"));
        assert!(page.contains("&lt;script&gt;"), "{page}");
        assert!(!page.contains("<script>"));
    }
}
