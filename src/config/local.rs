//! `malai.toml`: this device's own settings. `[aliases]` for short command
//! names, `[network]` for relays, discovery, bind address and fixed ports,
//! `[forward.NAME]` for local TCP listeners that reach a cluster's service,
//! `[http]` for the listener that routes `SERVICE.CLUSTER.localhost`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::diag::{Diagnostic, Diagnostics, Source};
use super::names::name_error;

/// Words an alias may not take, because they are (or will be) subcommands.
pub const RESERVED_WORDS: &[&str] = &[
    "acl",
    "cluster",
    "complete",
    "config",
    "copy-helper",
    "cp",
    "daemon",
    "forward",
    "generate",
    "help",
    "helper",
    "identity",
    "ls",
    "machine",
    "recordings",
    "rescan",
    "service",
    "status",
    "version",
];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalConfig {
    /// alias name -> words it expands to (first word is `machine.cluster`).
    pub aliases: BTreeMap<String, Vec<String>>,
    pub network: NetworkSettings,
    /// `[forward.NAME]`: local listeners carried to a service, by name (the
    /// name is also the `FileDescriptorName=` of a socket unit for it).
    pub forwards: BTreeMap<String, Forward>,
    /// `[http]`: the HTTP-by-name listener, off unless configured (or
    /// passed by systemd as the socket named `http`).
    pub http: Option<HttpListener>,
    /// What is wrong but does not stop anything (an alias a subcommand
    /// shadows, perhaps one a newer malai added): shown by `rescan` and
    /// logged by the daemon.
    pub warnings: Vec<Diagnostic>,
}

/// The `FileDescriptorName=` of the HTTP-by-name listener's socket.
pub const HTTP_SOCKET_NAME: &str = "http";

/// One `[forward.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub listen: SocketAddr,
    /// The service's name in its cluster.
    pub service: String,
    /// The alias of the cluster it belongs to.
    pub cluster: String,
    /// Line and column of `service = ...`, for the check that the cluster
    /// exists (which needs the home, so it runs after parsing).
    pub service_at: (usize, usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpListener {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSettings {
    pub relay: Relay,
    /// `relay_ca = "PATH"`: the PEM read from it, for a relay URL given
    /// here or for a machine's first contact before it has a config.
    pub relay_ca: Option<String>,
    pub discovery: bool,
    pub bind: IpAddr,
    /// cluster alias -> fixed UDP port of that cluster's identity.
    pub ports: BTreeMap<String, u16>,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings {
            relay: Relay::Cluster,
            relay_ca: None,
            discovery: true,
            bind: IpAddr::from([0, 0, 0, 0]),
            ports: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relay {
    /// Unset: the cluster's relay when its config names one, else iroh's
    /// public relays.
    Cluster,
    /// `"default"`: iroh's public relays, whatever the cluster says.
    Public,
    /// `"disabled"`: no relay (peers need addresses, or discovery).
    Disabled,
    /// This relay, whatever the cluster says.
    Url(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocal {
    #[serde(default)]
    aliases: BTreeMap<Spanned<String>, Spanned<String>>,
    network: Option<RawNetwork>,
    #[serde(default)]
    forward: BTreeMap<Spanned<String>, RawForward>,
    http: Option<RawHttp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForward {
    listen: Spanned<String>,
    service: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    relay: Option<Spanned<String>>,
    relay_ca: Option<Spanned<String>>,
    discovery: Option<bool>,
    bind: Option<Spanned<String>>,
    #[serde(default)]
    ports: BTreeMap<Spanned<String>, Spanned<i64>>,
}

pub fn parse(path: &Path, text: &str) -> Result<LocalConfig, Diagnostics> {
    let src = Source::new(path, text);
    let raw: RawLocal = src.parse().map_err(|d| Diagnostics(vec![d]))?;
    let mut diags = Vec::new();
    let mut config = LocalConfig::default();
    aliases(&src, &raw.aliases, &mut config, &mut diags);
    if let Some(net) = &raw.network {
        network(&src, net, &mut config.network, &mut diags);
    }
    listeners(&src, &raw, &mut config, &mut diags);
    if diags.is_empty() {
        Ok(config)
    } else {
        Err(Diagnostics(diags))
    }
}

/// `[aliases]`: each a target and words. An alias named like a subcommand
/// is ignored with a warning: the subcommand wins, and a newer malai that
/// adds a verb never fails to start over an alias written before it.
fn aliases(
    src: &Source<'_>,
    raw: &BTreeMap<Spanned<String>, Spanned<String>>,
    config: &mut LocalConfig,
    diags: &mut Vec<Diagnostic>,
) {
    for (name, target) in raw {
        if RESERVED_WORDS.contains(&name.get_ref().as_str()) {
            config.warnings.push(src.diag(
                name.span(),
                format!(
                    "alias {:?} is ignored: `malai {}` is a subcommand",
                    name.get_ref(),
                    name.get_ref()
                ),
                "rename the alias",
            ));
            continue;
        }
        if name.get_ref().contains('.') || name_error(name.get_ref()).is_some() {
            diags.push(src.diag(
                name.span(),
                format!("invalid alias name {:?}", name.get_ref()),
                "use letters, digits, '-' and '_' only (a dot would read as machine.cluster)",
            ));
            continue;
        }
        let words = match shell_words::split(target.get_ref()) {
            Ok(words) => words,
            Err(e) => {
                diags.push(src.diag(
                    target.span(),
                    format!("alias {:?}: cannot split into words: {e}", name.get_ref()),
                    "close every quote",
                ));
                continue;
            }
        };
        match words.first().map(|w| super::Target::parse(w)) {
            Some(Ok(_)) => {
                config.aliases.insert(name.get_ref().clone(), words);
            }
            Some(Err(e)) => diags.push(src.diag(
                target.span(),
                format!(
                    "alias {:?}: target {:?} is not machine.cluster: {e}",
                    name.get_ref(),
                    words[0]
                ),
                "start the alias with the machine and cluster, e.g. \"web01.company ps aux\"",
            )),
            None => diags.push(src.diag(
                target.span(),
                format!("alias {:?} is empty", name.get_ref()),
                "write the target and command, e.g. \"web01.company ps aux\"",
            )),
        }
    }
}

/// `[network]`.
fn network(
    src: &Source<'_>,
    net: &RawNetwork,
    settings: &mut NetworkSettings,
    diags: &mut Vec<Diagnostic>,
) {
    if let Some(relay) = &net.relay {
        settings.relay = match relay.get_ref().as_str() {
            "default" => Relay::Public,
            "disabled" => Relay::Disabled,
            url => match super::relay::check_url(url) {
                Ok(()) => Relay::Url(url.to_owned()),
                Err(e) => {
                    diags.push(src.diag(
                        relay.span(),
                        format!("{e}: neither \"default\", \"disabled\" nor a relay URL"),
                        "write relay = \"default\", \"disabled\" or \"https://relay.example.com\", or remove it to use the cluster's relay",
                    ));
                    Relay::Cluster
                }
            },
        };
    }
    if let Some(path) = &net.relay_ca {
        let read = std::fs::read_to_string(path.get_ref())
            .map_err(|e| format!("cannot read relay_ca {:?}: {e}", path.get_ref()))
            .and_then(|pem| {
                super::relay::certificates(&pem)
                    .map(|_| pem)
                    .map_err(|e| format!("relay_ca {:?}: {e}", path.get_ref()))
            });
        match read {
            Ok(pem) => settings.relay_ca = Some(pem),
            Err(e) => diags.push(src.diag(
                path.span(),
                e,
                "give the path of the PEM file of the CA that signed the relay's certificate",
            )),
        }
    }
    if let Some(discovery) = net.discovery {
        settings.discovery = discovery;
    }
    if let Some(bind) = &net.bind {
        match bind.get_ref().parse::<IpAddr>() {
            Ok(ip) => settings.bind = ip,
            Err(_) => diags.push(src.diag(
                bind.span(),
                format!("bind {:?} is not an IP address", bind.get_ref()),
                "write bind = \"0.0.0.0\", \"127.0.0.1\" or another local address",
            )),
        }
    }
    for (cluster, port) in &net.ports {
        match u16::try_from(*port.get_ref()) {
            Ok(p) if p > 0 => {
                settings.ports.insert(cluster.get_ref().clone(), p);
            }
            _ => diags.push(src.diag(
                port.span(),
                format!(
                    "port {} for cluster {:?} is not between 1 and 65535",
                    port.get_ref(),
                    cluster.get_ref()
                ),
                "pick a free UDP port between 1 and 65535, or remove the line to use any port",
            )),
        }
    }
}

/// `[http]` and `[forward.NAME]`: each listen address once.
fn listeners(
    src: &Source<'_>,
    raw: &RawLocal,
    config: &mut LocalConfig,
    diags: &mut Vec<Diagnostic>,
) {
    // Each listen address once, whether a forward's or the HTTP listener's.
    let mut listening: BTreeMap<SocketAddr, String> = BTreeMap::new();
    if let Some(http) = &raw.http
        && let Some(addr) = listen_addr(src, &http.listen, diags)
    {
        listening.insert(addr, "[http]".into());
        config.http = Some(HttpListener { listen: addr });
    }
    for (name, f) in &raw.forward {
        let n = name.get_ref();
        if let Some(why) = name_error(n) {
            diags.push(src.diag(
                name.span(),
                format!("invalid forward name {n:?}: {why}"),
                "rename the forward; its name is also the FileDescriptorName= of its socket unit",
            ));
            continue;
        }
        if n == HTTP_SOCKET_NAME {
            diags.push(src.diag(
                name.span(),
                format!("a forward may not be named {n:?}: that is the name of the HTTP listener's socket"),
                "rename the forward, or use [http] listen = \"127.0.0.1:80\" for HTTP by name",
            ));
            continue;
        }
        let listen = listen_addr(src, &f.listen, diags);
        if let Some(addr) = listen
            && let Some(first) = listening.insert(addr, format!("[forward.{n}]"))
        {
            diags.push(src.diag(
                f.listen.span(),
                format!("{addr} is already the listen address of {first}"),
                "give each forward its own address or port",
            ));
        }
        let target = match f.service.get_ref().split_once('.') {
            Some((service, cluster))
                if name_error(service).is_none() && name_error(cluster).is_none() =>
            {
                Some((service.to_owned(), cluster.to_owned()))
            }
            _ => {
                diags.push(src.diag(
                    f.service.span(),
                    format!(
                        "forward {n:?}: service {:?} is not SERVICE.CLUSTER",
                        f.service.get_ref()
                    ),
                    "write the service's name and its cluster's alias, e.g. service = \"postgres.company\"",
                ));
                None
            }
        };
        if let (Some(listen), Some((service, cluster))) = (listen, target) {
            config.forwards.insert(
                n.clone(),
                Forward {
                    listen,
                    service,
                    cluster,
                    service_at: src.line_col(f.service.span().start),
                },
            );
        }
    }
}

fn listen_addr(
    src: &Source,
    text: &Spanned<String>,
    diags: &mut Vec<Diagnostic>,
) -> Option<SocketAddr> {
    match text.get_ref().parse::<SocketAddr>() {
        Ok(addr) if addr.port() != 0 => Some(addr),
        _ => {
            diags.push(src.diag(
                text.span(),
                format!(
                    "listen {:?} is not an IP:PORT address with a port",
                    text.get_ref()
                ),
                "write listen = \"127.0.0.1:5432\" (loopback keeps the forward to this device)",
            ));
            None
        }
    }
}

impl LocalConfig {
    /// Every forward whose cluster is not one of `clusters` (the cluster
    /// directories of this home), as diagnostics on `path`.
    pub fn unknown_clusters(&self, path: &Path, clusters: &[String]) -> Diagnostics {
        Diagnostics(
            self.forwards
                .iter()
                .filter(|(_, f)| !clusters.contains(&f.cluster))
                .map(|(name, f)| {
                    Diagnostic {
                    file: path.to_owned(),
                    position: Some(f.service_at),
                    message: format!(
                        "forward {name:?}: no cluster {:?} on this device",
                        f.cluster
                    ),
                    help: Some(
                        "write the alias of a cluster this device is in (`malai status` lists them)"
                            .into(),
                    ),
                }
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_and_the_http_listener() {
        let text = "[http]\nlisten = \"127.0.0.1:80\"\n[forward.pg]\nlisten = \"127.0.0.1:5432\"\nservice = \"postgres.company\"\n";
        let config = parse(Path::new("malai.toml"), text).unwrap();
        assert_eq!(
            config.http.as_ref().unwrap().listen.to_string(),
            "127.0.0.1:80"
        );
        let pg = &config.forwards["pg"];
        assert_eq!(pg.listen.to_string(), "127.0.0.1:5432");
        assert_eq!(
            (pg.service.as_str(), pg.cluster.as_str()),
            ("postgres", "company")
        );
        assert_eq!(pg.service_at, (5, 11));
        let unknown = config.unknown_clusters(Path::new("malai.toml"), &["other".into()]);
        assert_eq!(unknown.0.len(), 1);
        assert!(
            config
                .unknown_clusters(Path::new("malai.toml"), &["company".into()])
                .is_empty()
        );
        assert_eq!(
            parse(Path::new("malai.toml"), "").unwrap().http,
            None,
            "[http] is opt-in"
        );
    }
}
