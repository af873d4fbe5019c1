//! A cluster.toml's `[[test]]` tables, checked against its own rules: each
//! item of `allow` must be allowed and each of `deny` denied, as the ACL
//! engine decides (`explain`). A failing item is an error at its own
//! `file:line:col` naming the list that decided, like any other error of
//! the file: `rescan --check` exits 78, a rescan and an upload are refused.
//! `parse` is cluster::parse with the tests checked: what every place that
//! takes a cluster.toml in force uses.

use std::path::Path;

use crate::config::cluster::{self, FileKind};
use crate::config::{ClusterConfig, Diagnostic, Diagnostics};
use crate::explain::{self, Ask};

/// Parses and validates a cluster.toml or machine.toml; a cluster.toml's
/// `[[test]]` tables must pass.
pub fn parse(path: &Path, text: &str, kind: FileKind) -> Result<ClusterConfig, Diagnostics> {
    let config = cluster::parse(path, text, kind)?;
    let failed = check(path, &config);
    if failed.is_empty() {
        Ok(config)
    } else {
        Err(Diagnostics(failed))
    }
}

/// The `[[test]]` items of `config` that its rules do not bear out.
pub fn check(path: &Path, config: &ClusterConfig) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for test in &config.tests {
        let at = |line, col, message: String, help: &str| Diagnostic {
            file: path.to_owned(),
            position: Some((line, col)),
            message,
            help: Some(help.to_owned()),
        };
        let peer = match explain::peer(config, &test.peer) {
            Ok(peer) => peer,
            Err(why) => {
                let (_, line, col) = test
                    .allow
                    .first()
                    .or(test.deny.first())
                    .cloned()
                    .unwrap_or_default();
                out.push(at(
                    line,
                    col,
                    format!("[[test]] peer: {why}"),
                    "name a machine alias or an id52",
                ));
                continue;
            }
        };
        let expectations = test
            .allow
            .iter()
            .map(|i| (i, true))
            .chain(test.deny.iter().map(|i| (i, false)));
        for ((item, line, col), want) in expectations {
            let ask = match Ask::parse(item) {
                Ok(ask) => ask,
                Err(why) => {
                    out.push(at(
                        *line,
                        *col,
                        format!("[[test]] item {item:?}: {why}"),
                        "an item is a command line, \"shell\", \"service:NAME\" or \"edit\"",
                    ));
                    continue;
                }
            };
            let e = explain::explain(config, &test.machine, &peer, &ask);
            if e.allowed() == want {
                continue;
            }
            let expected = if want { "allowed" } else { "denied" };
            out.push(at(
                *line,
                *col,
                format!(
                    "test failed: {} on {} should be {expected} {ask}, but is {e}",
                    test.peer, test.machine
                ),
                "change the rules, or the test if the change is meant",
            ));
        }
    }
    out
}
