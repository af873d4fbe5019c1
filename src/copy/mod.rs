//! `malai cp`: files as a tar stream (the `tar` crate) over an exec stream.
//! The sending side packs each path under its base name, symlinks as
//! links, modes and mtimes kept (`pack`); the receiving side writes each
//! file atomically (a temporary file in the target directory, fsync,
//! rename: never a partial file under the final name) and refuses any entry
//! that would land outside the destination or write through a symlink
//! (`unpack`). On a machine both run as `malai copy-helper` (`cli::cp`),
//! started by the exec host like any command of a peer that may run any
//! command there (`acl::copy`), as the machine's `username`.

pub mod pack;
pub mod unpack;

use serde::{Deserialize, Serialize};

/// What a copy asks of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum CopyOp {
    /// Read a tar stream on stdin into `dest`.
    Receive { dest: String },
    /// Write `paths` as a tar stream on stdout.
    Send { paths: Vec<String>, recursive: bool },
}

/// The argv the exec host runs for a copy: this very binary.
pub fn helper_argv(op: &CopyOp) -> std::io::Result<Vec<String>> {
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
