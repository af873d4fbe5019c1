//! The daemon's status page, `http://malai.localhost/` on its HTTP listener
//! (for the local users that listener serves): each cluster with its role
//! and config version, the machines a CM pushes to with their sync state,
//! every peer talked to with its path (direct or relay) and round trip,
//! the recent decisions, and the forwards. Read-only, plain HTML that works
//! without scripts, and nothing secret: no key, no config text.

use std::fmt::Write as _;

use serde::Serialize;

use crate::audit::Recent;
use crate::html::escape;
use crate::status::ClusterStatus;

/// A forward of malai.toml as the daemon runs it.
#[derive(Debug, Clone, Serialize)]
pub struct ForwardView {
    pub name: String,
    pub listen: String,
    /// `SERVICE.CLUSTER`.
    pub service: String,
    /// Listening now.
    pub running: bool,
}

/// The page.
pub fn render(clusters: &[ClusterStatus], forwards: &[ForwardView], recent: &[Recent]) -> String {
    let mut b = String::new();
    if clusters.is_empty() {
        b.push_str("<p>This daemon serves no cluster.</p>\n");
    }
    for c in clusters {
        cluster(&mut b, c);
    }
    b.push_str("<h2>Forwards</h2>\n");
    if forwards.is_empty() {
        b.push_str("<p>No forward in malai.toml.</p>\n");
    } else {
        table(
            &mut b,
            "forwards",
            &["name", "listen", "service", "state"],
            forwards.iter().map(|f| {
                vec![
                    f.name.clone(),
                    f.listen.clone(),
                    f.service.clone(),
                    if f.running {
                        "listening"
                    } else {
                        "not listening"
                    }
                    .to_owned(),
                ]
            }),
        );
    }
    // Peers by name where a cluster knows them.
    let name = |cluster: &str, id52: &str| {
        clusters
            .iter()
            .filter(|c| c.alias == cluster)
            .flat_map(|c| c.peers.iter().flatten())
            .find(|p| p.id52 == id52)
            .and_then(|p| p.alias.clone())
            .unwrap_or_else(|| short(id52))
    };
    b.push_str("<h2>Recent decisions</h2>\n");
    if recent.is_empty() {
        b.push_str("<p>None since the daemon started.</p>\n");
    } else {
        table(
            &mut b,
            "decisions",
            &["time", "cluster", "peer", "what", "decision"],
            recent.iter().rev().map(|r| {
                vec![
                    time(r.at),
                    r.cluster.clone(),
                    name(&r.cluster, &r.peer),
                    r.what.clone(),
                    r.detail.clone(),
                ]
            }),
        );
    }
    page("malai: status", &b)
}

fn cluster(b: &mut String, c: &ClusterStatus) {
    let _ = writeln!(
        b,
        "<section class=\"cluster\" id=\"cluster-{a}\">\n<h2>{a}: {r}</h2>",
        a = escape(&c.alias),
        r = escape(&c.role)
    );
    let mut facts = vec![("id52", c.id52.clone().unwrap_or_default())];
    if let Some(v) = c.config_version {
        facts.push(("config version", v.to_string()));
    }
    if let Some(cm) = c
        .cluster_manager
        .as_ref()
        .filter(|_| c.role != "cluster-manager")
    {
        facts.push(("cluster manager", cm.clone()));
    }
    if let Some(relay) = &c.relay {
        facts.push(("relay", relay.clone()));
    }
    if let Some(why) = &c.expired {
        facts.push(("refusing everyone but the CM", why.clone()));
    }
    if let Some(e) = &c.error {
        facts.push(("error", e.clone()));
    }
    b.push_str("<dl>\n");
    for (k, v) in facts {
        let _ = writeln!(b, "<dt>{}</dt><dd>{}</dd>", escape(k), escape(&v));
    }
    b.push_str("</dl>\n");
    if let Some(machines) = &c.machines {
        b.push_str("<h3>Machines</h3>\n");
        table(
            b,
            "machines",
            &["machine", "id52", "acknowledged", "sync", "last error"],
            machines.iter().map(|m| {
                vec![
                    m.alias.clone(),
                    short(&m.id52),
                    format!("v{}", m.acked_version),
                    m.sync.clone(),
                    m.last_error.clone().unwrap_or_default(),
                ]
            }),
        );
    }
    if let Some(peers) = &c.peers {
        b.push_str("<h3>Peers</h3>\n");
        table(
            b,
            "peers",
            &["peer", "id52", "path", "round trip", "last contact"],
            peers.iter().map(|p| {
                vec![
                    p.alias.clone().unwrap_or_default(),
                    short(&p.id52),
                    p.path.clone(),
                    p.rtt_ms.map(|ms| format!("{ms:.1} ms")).unwrap_or_default(),
                    time(p.last_contact),
                ]
            }),
        );
    }
    b.push_str("</section>\n");
}

fn table(b: &mut String, class: &str, head: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let _ = write!(b, "<table class=\"{class}\">\n<tr>");
    for h in head {
        let _ = write!(b, "<th>{}</th>", escape(h));
    }
    b.push_str("</tr>\n");
    for row in rows {
        b.push_str("<tr>");
        for cell in row {
            let _ = write!(b, "<td>{}</td>", escape(&cell));
        }
        b.push_str("</tr>\n");
    }
    b.push_str("</table>\n");
}

/// The first 12 characters of an id52 (the whole in a title).
fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

/// An HTTP date (`Fri, 14 Jul 2017 02:40:00 GMT`): UTC, unambiguous.
fn time(unix: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
}

/// The page's own style, in its `<head>`.
const STYLE: &str = "\n<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}\
     td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}dt{font-weight:bold}</style>\n";

fn page(title: &str, body: &str) -> String {
    crate::html::page(title, STYLE, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_peer_wrote_is_escaped() {
        let recent = [Recent {
            at: 0,
            cluster: "c".into(),
            peer: "p".into(),
            what: "<script>alert(1)</script>".into(),
            decision: "denied",
            detail: "denied: x".into(),
        }];
        let html = render(&[], &[], &recent);
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }
}
