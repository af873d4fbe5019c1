//! `MACHINE.CLUSTER`: the name of one machine of one cluster, as the CLI,
//! aliases and forwards write it. Here, below both the config (which
//! validates aliases and forwards) and the CLI (which resolves them).

use std::fmt;

use super::names::name_error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub machine: String,
    pub cluster: String,
}

impl Target {
    pub fn parse(text: &str) -> Result<Target, String> {
        let Some((machine, cluster)) = text.split_once('.') else {
            return Err("expected MACHINE.CLUSTER, e.g. web01.company".into());
        };
        for (what, name) in [("machine", machine), ("cluster", cluster)] {
            if let Some(why) = name_error(name) {
                return Err(format!("bad {what} name {name:?}: {why}"));
            }
        }
        Ok(Target {
            machine: machine.to_owned(),
            cluster: cluster.to_owned(),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.machine, self.cluster)
    }
}
