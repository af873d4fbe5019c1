//! What the first word of `malai <word> ...` means: a `machine.cluster`
//! target, or an alias from malai.toml that expands to one.

use crate::config::LocalConfig;
pub use crate::config::Target;
pub use crate::selection::{Pick, Selection};

/// A remote command as the user asked for it: where, and the argv to run
/// (empty for an interactive shell).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub target: Target,
    pub argv: Vec<String>,
}

/// What `malai <words>...` asks for: one machine, or a fan-out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    One(Invocation),
    Many(Selection, Vec<String>),
}

/// `resolve`, where the target may also be a fan-out (`Selection`).
pub fn resolve_any(local: &LocalConfig, words: &[String]) -> Result<Resolved, String> {
    let expanded = expand(local, words)?;
    if let Some(selection) = Selection::parse(&expanded[0]) {
        return Ok(Resolved::Many(selection?, arguments(&expanded)?));
    }
    resolve(local, words).map(Resolved::One)
}

/// The words with an alias in front expanded, the user's arguments after.
fn expand(local: &LocalConfig, words: &[String]) -> Result<Vec<String>, String> {
    let (first, rest) = words
        .split_first()
        .ok_or_else(|| "no target given".to_string())?;
    Ok(match local.aliases.get(first) {
        Some(alias) => alias.iter().chain(rest).cloned().collect(),
        None => words.to_vec(),
    })
}

/// The argv after the target, without a leading `--`; one word with
/// blanks or quotes split as ssh's remote shell would (`ssh_compat`).
fn arguments(expanded: &[String]) -> Result<Vec<String>, String> {
    let mut argv = expanded[1..].to_vec();
    if argv.first().is_some_and(|a| a == "--") {
        argv.remove(0);
    }
    crate::ssh_compat::command_argv(argv)
}

/// Resolves `malai <words>...`: an alias expands to its words with the
/// user's arguments appended; otherwise the first word must be a target.
/// A leading `--` among the arguments is dropped, as ssh users expect.
pub fn resolve(local: &LocalConfig, words: &[String]) -> Result<Invocation, String> {
    let expanded = expand(local, words)?;
    let first = &words[0];
    let target = Target::parse(&expanded[0]).map_err(|e| {
        if local.aliases.contains_key(first) {
            format!("alias {first:?}: {e}")
        } else {
            format!("{first:?} is neither a subcommand, an alias in malai.toml nor a target: {e}")
        }
    })?;
    Ok(Invocation {
        target,
        argv: arguments(&expanded)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn target_parsing() {
        assert_eq!(
            Target::parse("web01.company").unwrap(),
            Target {
                machine: "web01".into(),
                cluster: "company".into()
            }
        );
        assert!(Target::parse("web01").is_err());
        assert!(Target::parse("a.b.c").is_err());
        assert!(Target::parse(".company").is_err());
    }

    #[test]
    fn alias_appends_arguments() {
        let mut local = LocalConfig::default();
        local
            .aliases
            .insert("web".into(), words("web01.company ps aux"));
        let inv = resolve(&local, &words("web -ef")).unwrap();
        assert_eq!(inv.target.to_string(), "web01.company");
        assert_eq!(inv.argv, words("ps aux -ef"));
    }

    #[test]
    fn fan_out_targets() {
        let local = LocalConfig::default();
        let many = resolve_any(&local, &words("web01,web02,web01.company -- uptime")).unwrap();
        let Resolved::Many(sel, argv) = many else {
            panic!("a fan-out")
        };
        assert_eq!(sel.pick, Pick::Named(vec!["web01".into(), "web02".into()]));
        assert_eq!(sel.cluster, "company");
        assert_eq!(argv, words("uptime"));
        let all = Selection::parse("@all.company").unwrap().unwrap();
        assert_eq!(all.pick, Pick::All);
        assert_eq!(all.to_string(), "@all.company");
        let group = Selection::parse("@web.company").unwrap().unwrap();
        assert_eq!(group.pick, Pick::Group("web".into()));
        assert!(Selection::parse("web01.company").is_none());
        assert!(Selection::parse("web01,.company").unwrap().is_err());
        assert!(Selection::parse("@all").unwrap().is_err());
        assert!(matches!(
            resolve_any(&local, &words("web01.company true")),
            Ok(Resolved::One(_))
        ));
    }

    #[test]
    fn plain_target_and_double_dash() {
        let local = LocalConfig::default();
        let inv = resolve(&local, &words("db.x -- ls -l")).unwrap();
        assert_eq!(inv.argv, words("ls -l"));
        let shell = resolve(&local, &words("db.x")).unwrap();
        assert!(shell.argv.is_empty());
        assert!(resolve(&local, &words("nothing")).is_err());
    }
}
