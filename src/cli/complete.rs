//! `malai complete WORD` (hidden): the words a target may be that start
//! with WORD, one per line, for the shells' completion scripts (`generate`
//! adds the glue): `MACHINE.CLUSTER` for each machine this device knows,
//! `@all.CLUSTER` and `@GROUP.CLUSTER`, the aliases of malai.toml, and
//! after a comma the next machine of a list (`web01,web0` ->
//! `web01,web02.company`). Read from the files; nothing when they cannot
//! be read.

use crate::home::{self, Home};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The word typed so far.
    #[arg(default_value = "", allow_hyphen_values = true)]
    word: String,
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let Ok(home) = Home::resolve() else {
        return Ok(crate::exit::OK);
    };
    let (local, clusters, _) = home::load_all(&home, None);
    let mut known = Vec::new();
    for c in &clusters {
        let Some(config) = &c.config else { continue };
        let groups: Vec<&String> = if config.received_version.is_none() {
            config.groups.keys().collect()
        } else {
            config.machine_groups.keys().collect()
        };
        known.push(Known {
            cluster: c.alias.clone(),
            machines: config.machines.keys().cloned().collect(),
            groups: groups.into_iter().cloned().collect(),
        });
    }
    let aliases: Vec<String> = local
        .map(|l| l.aliases.into_keys().collect())
        .unwrap_or_default();
    for word in candidates(&args.word, &known, &aliases) {
        println!("{word}");
    }
    Ok(crate::exit::OK)
}

/// One cluster's names.
pub struct Known {
    pub cluster: String,
    pub machines: Vec<String>,
    pub groups: Vec<String>,
}

/// The targets that start with `word`.
pub fn candidates(word: &str, known: &[Known], aliases: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    // A list: what comes before the last comma stays as typed.
    let (list, _) = word
        .rsplit_once(',')
        .map_or(("", word), |(l, rest)| (l, rest));
    for k in known {
        for m in &k.machines {
            if list.is_empty() {
                out.push(format!("{m}.{}", k.cluster));
            } else {
                out.push(format!("{list},{m}.{}", k.cluster));
            }
        }
        if list.is_empty() {
            out.push(format!("@all.{}", k.cluster));
            out.extend(k.groups.iter().map(|g| format!("@{g}.{}", k.cluster)));
        }
    }
    if list.is_empty() {
        out.extend(aliases.iter().cloned());
    }
    out.retain(|c| c.starts_with(word));
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_groups_lists_and_aliases_complete() {
        let known = [Known {
            cluster: "company".into(),
            machines: vec!["web01".into(), "web02".into(), "db".into()],
            groups: vec!["web".into()],
        }];
        let aliases = ["logs".to_owned()];
        assert_eq!(
            candidates("web", &known, &aliases),
            ["web01.company", "web02.company"]
        );
        assert_eq!(
            candidates("@", &known, &aliases),
            ["@all.company", "@web.company"]
        );
        assert_eq!(candidates("l", &known, &aliases), ["logs"]);
        assert_eq!(
            candidates("web01,w", &known, &aliases),
            ["web01,web01.company", "web01,web02.company"]
        );
        assert!(candidates("x", &known, &aliases).is_empty());
    }
}
