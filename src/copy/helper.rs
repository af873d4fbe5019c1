//! `malai copy-helper receive DEST` and `malai copy-helper send [-r]
//! PATH...` (hidden): the machine's side of `malai cp`, which the exec host
//! starts as the machine's user with the stream on stdin or stdout.

use std::path::PathBuf;

#[derive(Debug, clap::Subcommand)]
pub enum Helper {
    /// Reads a tar stream on stdin into DEST.
    Receive { dest: PathBuf },
    /// Writes PATHs as a tar stream on stdout.
    Send {
        #[arg(short, long)]
        recursive: bool,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

/// The argv the exec host runs for a copy: this very binary.
pub fn argv(op: &crate::exec::proto::CopyOp) -> std::io::Result<Vec<String>> {
    use crate::exec::proto::CopyOp;
    let exe = std::env::current_exe()?.to_string_lossy().into_owned();
    let mut argv = vec![exe, "copy-helper".to_owned()];
    match op {
        CopyOp::Receive { dest } => {
            argv.extend(["receive".to_owned(), "--".to_owned(), dest.clone()])
        }
        CopyOp::Send { paths, recursive } => {
            argv.push("send".to_owned());
            if *recursive {
                argv.push("--recursive".to_owned());
            }
            argv.push("--".to_owned());
            argv.extend(paths.iter().cloned());
        }
    }
    Ok(argv)
}

pub fn run(helper: Helper) -> anyhow::Result<u8> {
    match helper {
        Helper::Receive { dest } => {
            super::unpack::unpack(std::io::stdin().lock(), &dest)?;
        }
        Helper::Send { recursive, paths } => {
            super::pack::pack(&paths, recursive, std::io::stdout().lock())?;
        }
    }
    Ok(crate::exit::OK)
}
