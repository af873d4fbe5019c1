//! `malai ls [CLUSTER] [--json]`: the machines this device knows in each
//! cluster, whether each answers now (a fresh handshake: its round trip,
//! direct or through the relay) and what this device may do there: from
//! the rules on the cluster manager, from the rights the CM sent it
//! elsewhere (`acl::rights`, `[rights.MACHINE]`). Each machine still
//! decides for itself.

use std::time::Duration;

use serde::Serialize;

use crate::config::{ClusterConfig, Rights};
use crate::exit::{EXEC_FAILED, Failure, OK};
use crate::home::{ClusterDir, Home};
use crate::identity::Id52;
use crate::p2p::{self, EXEC_ALPN, Reach, RelayChoice};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this cluster.
    pub cluster: Option<String>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for each machine's answer.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = crate::config::duration::parse)]
    pub timeout: Duration,
}

/// One machine, as `ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub cluster: String,
    pub machine: String,
    pub id52: String,
    /// This device itself.
    pub this_device: bool,
    /// Answered a handshake just now ("direct", "relay"), or why not.
    pub path: Option<&'static str>,
    pub rtt_ms: Option<f64>,
    pub error: Option<String>,
    pub rights: Rights,
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let home = Home::resolve()?;
    let (local, clusters, diags) = crate::home::load_all(&home, args.cluster.as_deref());
    let local = local.ok_or_else(|| {
        Failure::new(
            crate::exit::CONFIG,
            format!("malai.toml is invalid:\n{diags}"),
        )
    })?;
    for d in &diags.0 {
        eprintln!("warning: {d}");
    }
    if args.cluster.is_some() && clusters.is_empty() {
        return Err(Failure::new(EXEC_FAILED, diags.to_string()).into());
    }
    let rows = super::runtime()?.block_on(async {
        let mut rows = Vec::new();
        for c in &clusters {
            rows.extend(probe(c, &local.network, args.timeout).await);
        }
        rows
    });
    if args.json {
        super::print_json(&serde_json::json!({ "machines": rows }));
    } else {
        print!("{}", table(&rows));
    }
    Ok(OK)
}

/// What this device may do on machine `alias`, as its config knows it.
pub fn rights_here(config: &ClusterConfig, me: &Id52, alias: &str) -> Rights {
    let own = config.machines.get(alias).is_some_and(|m| m.id52 == *me);
    if own || config.received_version.is_none() {
        crate::acl::rights(config, alias, me)
    } else {
        config.rights.get(alias).cloned().unwrap_or_default()
    }
}

/// Every machine of `c`, each dialled at once (bounded by `timeout`).
async fn probe(
    c: &ClusterDir,
    network: &crate::config::NetworkSettings,
    timeout: Duration,
) -> Vec<Row> {
    let Some(config) = &c.config else {
        return Vec::new();
    };
    let me = c.identity.id52();
    let relay = RelayChoice::resolve(network, c.relay.as_ref());
    let endpoint = p2p::bind(&c.identity, network, &relay, 0, Vec::new(), None).await;
    let mut set = tokio::task::JoinSet::new();
    for (alias, m) in &config.machines {
        let mut row = Row {
            cluster: c.alias.clone(),
            machine: alias.clone(),
            id52: m.id52.to_string(),
            this_device: m.id52 == me,
            path: None,
            rtt_ms: None,
            error: None,
            rights: rights_here(config, &me, alias),
        };
        let endpoint = match (&endpoint, row.this_device) {
            (_, true) => {
                set.spawn(async move { row });
                continue;
            }
            (Ok(endpoint), false) => endpoint.clone(),
            (Err(e), false) => {
                row.error = Some(format!("{e:#}"));
                set.spawn(async move { row });
                continue;
            }
        };
        let (id, reach) = (
            m.id52,
            Reach {
                addrs: m.addrs.clone(),
                relay: relay.dial_via(),
            },
        );
        set.spawn(async move {
            match tokio::time::timeout(timeout, p2p::dial(&endpoint, &id, &reach, EXEC_ALPN)).await
            {
                Ok(Ok(conn)) => {
                    if let Some((path, rtt)) = p2p::links::selected_path(&conn) {
                        row.path = Some(path);
                        row.rtt_ms = Some(rtt);
                    }
                    conn.close(0u32.into(), b"ls");
                }
                Ok(Err(e)) => row.error = Some(format!("{e:#}")),
                Err(_) => {
                    row.error = Some(format!(
                        "no answer within {}",
                        crate::config::duration::format(timeout)
                    ));
                }
            }
            row
        });
    }
    let mut rows = Vec::new();
    while let Some(row) = set.join_next().await {
        rows.extend(row.ok());
    }
    rows.sort_by(|a, b| a.machine.cmp(&b.machine));
    if let Ok(endpoint) = endpoint {
        p2p::close_without_waiting(endpoint).await;
    }
    rows
}

/// The terminal table: machine, reach, rights.
fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let mut width = 7;
    for r in rows {
        width = width.max(r.machine.len() + r.cluster.len() + 1);
    }
    out.push_str(&format!(
        "{:width$}  {:<22}  {}\n",
        "MACHINE", "ANSWERS", "THIS DEVICE MAY"
    ));
    for r in rows {
        let name = format!("{}.{}", r.machine, r.cluster);
        let reach = match (r.this_device, r.path, r.rtt_ms) {
            (true, _, _) => "this device".to_owned(),
            (_, Some(path), Some(rtt)) => format!("yes, {path}, {rtt:.1} ms"),
            (_, Some(path), None) => format!("yes, {path}"),
            _ => "no".to_owned(),
        };
        out.push_str(&format!(
            "{name:width$}  {reach:<22}  {}\n",
            describe(&r.rights)
        ));
    }
    out
}

/// "any command, shell, rules: restart, services: db", or "nothing".
fn describe(r: &Rights) -> String {
    let mut parts = Vec::new();
    if r.any_command {
        parts.push("any command".to_owned());
    }
    if r.shell {
        parts.push("shell".to_owned());
    }
    if !r.commands.is_empty() {
        parts.push(format!("rules: {}", r.commands.join(", ")));
    }
    if !r.services.is_empty() {
        parts.push(format!("services: {}", r.services.join(", ")));
    }
    if parts.is_empty() {
        "nothing".to_owned()
    } else {
        parts.join("; ")
    }
}
