//! `malai.toml`: this device's own settings. `[aliases]` for short command
//! names, `[network]` for relays, discovery, bind address and fixed ports.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::diag::{Diagnostics, Source};
use super::names::name_error;

/// Words an alias may not take, because they are (or will be) subcommands.
pub const RESERVED_WORDS: &[&str] = &[
    "cluster", "config", "daemon", "forward", "help", "identity", "machine", "rescan", "service",
    "status", "version",
];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalConfig {
    /// alias name -> words it expands to (first word is `machine.cluster`).
    pub aliases: BTreeMap<String, Vec<String>>,
    pub network: NetworkSettings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSettings {
    pub relay: Relay,
    pub discovery: bool,
    pub bind: IpAddr,
    /// cluster alias -> fixed UDP port of that cluster's identity.
    pub ports: BTreeMap<String, u16>,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings {
            relay: Relay::Default,
            discovery: true,
            bind: IpAddr::from([0, 0, 0, 0]),
            ports: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relay {
    /// iroh's public relays.
    Default,
    Disabled,
    Url(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocal {
    #[serde(default)]
    aliases: BTreeMap<Spanned<String>, Spanned<String>>,
    network: Option<RawNetwork>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    relay: Option<Spanned<String>>,
    discovery: Option<bool>,
    bind: Option<Spanned<String>>,
    #[serde(default)]
    ports: BTreeMap<Spanned<String>, Spanned<i64>>,
}

pub fn parse(path: &Path, text: &str) -> Result<LocalConfig, Diagnostics> {
    let src = Source::new(path, text);
    let raw: RawLocal = toml::from_str(text).map_err(|e| Diagnostics(vec![src.from_toml(&e)]))?;
    let mut diags = Vec::new();
    let mut config = LocalConfig::default();

    for (name, target) in &raw.aliases {
        if RESERVED_WORDS.contains(&name.get_ref().as_str()) {
            diags.push(src.diag(
                name.span(),
                format!(
                    "alias {:?} shadows the subcommand `malai {}`",
                    name.get_ref(),
                    name.get_ref()
                ),
                "choose another name for the alias",
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
        match words.first().map(|w| crate::target::Target::parse(w)) {
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

    if let Some(net) = raw.network {
        if let Some(relay) = net.relay {
            config.network.relay = match relay.get_ref().as_str() {
                "default" => Relay::Default,
                "disabled" => Relay::Disabled,
                url if url.starts_with("https://") || url.starts_with("http://") => {
                    Relay::Url(url.to_owned())
                }
                other => {
                    diags.push(src.diag(
                        relay.span(),
                        format!(
                            "relay {other:?} is neither \"default\", \"disabled\" nor a relay URL"
                        ),
                        "write relay = \"default\", \"disabled\" or \"https://relay.example.com\"",
                    ));
                    Relay::Default
                }
            };
        }
        if let Some(discovery) = net.discovery {
            config.network.discovery = discovery;
        }
        if let Some(bind) = net.bind {
            match bind.get_ref().parse::<IpAddr>() {
                Ok(ip) => config.network.bind = ip,
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
                    config.network.ports.insert(cluster.get_ref().clone(), p);
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

    if diags.is_empty() {
        Ok(config)
    } else {
        Err(Diagnostics(diags))
    }
}
