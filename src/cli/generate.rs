//! `malai generate DIR` (hidden): man pages and bash, zsh and fish
//! completions from the clap definitions, for the Debian package
//! (`packaging/build-deb`). Writes `DIR/man/malai*.1` (one page per visible
//! subcommand) and `DIR/completions/{malai.bash,_malai,malai.fish}`.

use std::path::PathBuf;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write `man/` and `completions/`.
    dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let cmd = super::Cli::command();
    let man = args.dir.join("man");
    std::fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("writing man pages into {}", man.display()))?;
    let completions = args.dir.join("completions");
    std::fs::create_dir_all(&completions)
        .with_context(|| format!("creating {}", completions.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = visible(&cmd);
        let path = clap_complete::generate_to(shell, &mut cmd, "malai", &completions)
            .with_context(|| format!("writing {shell} completions"))?;
        let text = std::fs::read_to_string(&path)?;
        std::fs::write(&path, with_targets(shell, &text)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(crate::exit::OK)
}

/// Where the target of a remote command goes (the first word that is not
/// an option), each shell also offers `malai complete WORD`: machines,
/// fan-out targets and aliases.
fn with_targets(shell: Shell, generated: &str) -> anyhow::Result<String> {
    Ok(match shell {
        Shell::Bash => format!(
            "{}\n{BASH_TARGETS}",
            generated.replace("complete -F _malai ", "complete -F _malai_targets ",)
        ),
        Shell::Zsh => {
            let dispatch = "if [ \"$funcstack[1]\" = \"_malai\" ]; then\n    _malai \"$@\"\nelse\n    compdef _malai malai\nfi";
            anyhow::ensure!(
                generated.contains(dispatch),
                "clap_complete's zsh script changed: update generate.rs"
            );
            generated.replace(dispatch, ZSH_TARGETS)
        }
        Shell::Fish => format!("{generated}\n{FISH_TARGETS}"),
        _ => generated.to_owned(),
    })
}

const BASH_TARGETS: &str = r#"# Targets (malai complete WORD) where the first word that is not an option goes.
_malai_targets() {
    local i word
    for (( i = 1; i < COMP_CWORD; i++ )); do
        word="${COMP_WORDS[i]}"
        case "$word" in
            -j|--jobs|--timeout) (( i++ )) ;;
            -*) ;;
            *) _malai "$@"; return ;;
        esac
    done
    _malai "$@"
    local cur="${COMP_WORDS[COMP_CWORD]}"
    [[ "$cur" == -* ]] && return
    local IFS=$'\n'
    COMPREPLY+=( $(malai complete -- "$cur" 2>/dev/null) )
}
"#;

const ZSH_TARGETS: &str = r#"# Targets (malai complete WORD) where the first word that is not an option goes.
_malai_targets() {
    local i
    for (( i = 2; i < CURRENT; i++ )); do
        case "${words[i]}" in
            -j|--jobs|--timeout) (( i++ )) ;;
            -*) ;;
            *) _malai "$@"; return ;;
        esac
    done
    if [[ "$PREFIX" != -* ]]; then
        local -a targets
        targets=(${(f)"$(malai complete -- "$PREFIX" 2>/dev/null)"})
        compadd -Q -- $targets
    fi
    _malai "$@"
}

if [ "$funcstack[1]" = "_malai" ]; then
    _malai_targets "$@"
else
    compdef _malai_targets malai
fi"#;

const FISH_TARGETS: &str = r#"# Targets (malai complete WORD) where the first word that is not an option goes.
complete -c malai -n "__fish_malai_needs_command" -f -a "(malai complete -- (commandline -ct) 2>/dev/null)"
"#;

/// `cmd` without its hidden subcommands: clap_mangen leaves them out by
/// itself, clap_complete would offer them (this one, `generate`, included).
fn visible(cmd: &clap::Command) -> clap::Command {
    let mut out = clap::Command::new("malai")
        .version(env!("CARGO_PKG_VERSION"))
        .allow_external_subcommands(cmd.is_allow_external_subcommands_set())
        .args(cmd.get_arguments().cloned())
        .subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = cmd.get_about() {
        out = out.about(about.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_man_page_per_visible_verb_and_three_completions() {
        let dir = tempfile::tempdir().unwrap();
        let code = run(Args {
            dir: dir.path().to_owned(),
        })
        .unwrap();
        assert_eq!(code, crate::exit::OK);
        let man = |name: &str| std::fs::read_to_string(dir.path().join("man").join(name));
        assert!(man("malai.1").unwrap().contains(".TH malai 1"));
        assert!(man("malai-cluster-init.1").is_ok());
        assert!(man("malai-daemon.1").is_ok());
        assert!(man("malai-generate.1").is_err(), "hidden verbs get no page");
        for file in ["malai.bash", "_malai", "malai.fish"] {
            let text = std::fs::read_to_string(dir.path().join("completions").join(file)).unwrap();
            assert!(text.contains("rescan"), "{file} completes the verbs");
            assert!(text.contains("--check"), "{file} completes their flags");
            assert!(!text.contains("generate"), "{file} offers no hidden verb");
        }
    }
}
