//! `malai cp`: files as a tar stream (the `tar` crate) over an exec stream.
//! The sending side packs each path under its base name, symlinks as
//! links, modes and mtimes kept (`pack`); the receiving side writes each
//! file atomically (a temporary file in the target directory, fsync,
//! rename: never a partial file under the final name) and refuses any entry
//! that would land outside the destination or write through a symlink
//! (`unpack`). On a machine both run as `malai copy-helper` (`helper`),
//! started by the exec host like any command of a peer that may run any
//! command there (`acl::copy`), as the machine's `username`.

pub mod helper;
pub mod pack;
pub mod unpack;
