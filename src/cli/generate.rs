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
        clap_complete::generate_to(shell, &mut cmd, "malai", &completions)
            .with_context(|| format!("writing {shell} completions"))?;
    }
    Ok(crate::exit::OK)
}

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
