//! What is forwarded where, from the files alone (malai.toml and this
//! device's config of each cluster), for `malai forward list`: each
//! `[forward.NAME]` with its address and the service and machine it
//! reaches, and the HTTP listener with the services it routes to.

use serde::Serialize;

use crate::acl;
use crate::config::{LocalConfig, Protocol};
use crate::home::ClusterDir;

#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub forwards: Vec<ForwardEntry>,
    pub http: HttpEntry,
}

#[derive(Debug, Clone, Serialize)]
pub struct ForwardEntry {
    pub name: String,
    pub listen: String,
    /// `SERVICE.CLUSTER`.
    pub service: String,
    pub cluster: String,
    /// The machine that hosts it, as this device's config says.
    pub machine: Option<String>,
    pub protocol: Option<&'static str>,
    /// Why connections to it would be refused here, if they would.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpEntry {
    /// `[http] listen`; `None` when only a socket from systemd (named
    /// `http`) would enable it.
    pub listen: Option<String>,
    pub services: Vec<HttpService>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpService {
    /// `SERVICE.CLUSTER`.
    pub service: String,
    pub machine: String,
    pub url: String,
}

/// The listing for `local` and the cluster directories `clusters`.
pub fn listing(local: &LocalConfig, clusters: &[ClusterDir]) -> Listing {
    let find = |alias: &str| clusters.iter().find(|c| c.alias == alias);
    let forwards = local
        .forwards
        .iter()
        .map(|(name, f)| {
            let service = f.service.clone();
            let found = find(&f.cluster).map(|c| (c, c.config.as_ref()));
            let (machine, protocol, problem) = match found {
                None => (None, None, Some(format!("cluster {:?} is not loaded", f.cluster))),
                Some((_, None)) => (
                    None,
                    None,
                    Some("this device has no config for the cluster yet".into()),
                ),
                Some((_, Some(config))) => match config.services.get(&service) {
                    Some(s) => (Some(s.machine.clone()), Some(s.protocol.as_str()), None),
                    None => (
                        None,
                        None,
                        Some(format!("no service {service:?} in this device's config (not defined, or this device is not in its allow_from)")),
                    ),
                },
            };
            ForwardEntry {
                name: name.clone(),
                listen: f.listen.to_string(),
                service: format!("{service}.{}", f.cluster),
                cluster: f.cluster.clone(),
                machine,
                protocol,
                problem,
            }
        })
        .collect();

    let port = local.http.as_ref().map_or(80, |h| h.listen.port());
    let port_text = if port == 80 {
        String::new()
    } else {
        format!(":{port}")
    };
    let mut services = Vec::new();
    for c in clusters {
        let Some(config) = &c.config else { continue };
        let me = c.identity.id52();
        for (name, s) in &config.services {
            if s.protocol == Protocol::Http && acl::matching(config, &s.allow_from, &me).is_some() {
                services.push(HttpService {
                    service: format!("{name}.{}", c.alias),
                    machine: s.machine.clone(),
                    url: format!("http://{name}.{}.localhost{port_text}/", c.alias),
                });
            }
        }
    }
    Listing {
        forwards,
        http: HttpEntry {
            listen: local.http.as_ref().map(|h| h.listen.to_string()),
            services,
        },
    }
}

/// The listing as a person reads it.
pub fn render(l: &Listing) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if l.forwards.is_empty() {
        out.push_str("No [forward.NAME] in malai.toml.\n");
    }
    for f in &l.forwards {
        let on = f
            .machine
            .as_deref()
            .map(|m| format!(" on {m} ({})", f.protocol.unwrap_or("?")))
            .unwrap_or_default();
        let _ = writeln!(out, "{}: {} -> {}{on}", f.name, f.listen, f.service);
        if let Some(p) = &f.problem {
            let _ = writeln!(out, "  problem: {p}");
        }
    }
    match &l.http.listen {
        Some(addr) => {
            let _ = writeln!(out, "http: {addr} (SERVICE.CLUSTER.localhost)");
        }
        None => out.push_str(
            "http: off in malai.toml ([http] listen), on only if systemd passes the socket `http` (malai-http.socket)\n",
        ),
    }
    for s in &l.http.services {
        let _ = writeln!(out, "  {} on {}: {}", s.service, s.machine, s.url);
    }
    out
}
