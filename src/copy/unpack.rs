//! The receiving side of a copy: a tar stream into a destination, scp's
//! way: into DEST when it is a directory, else as DEST (one file, or one
//! tree). Each regular file goes to a temporary name in its directory,
//! is synced, gets its mode and mtime, and is renamed over the final name;
//! a stream cut short leaves the old file or none. An entry whose path is
//! absolute or climbs (`..`), or whose directory on the way is a symlink,
//! is refused: a hostile sender cannot write outside the destination.

use std::fs::{self, File, FileTimes};
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};

/// What a copy wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    pub files: u64,
    pub bytes: u64,
}

/// Reads the tar stream `input` into `dest`.
pub fn unpack(input: impl Read, dest: &Path) -> anyhow::Result<Written> {
    let into = dest.is_dir();
    let mut archive = tar::Archive::new(input);
    let mut written = Written::default();
    let mut top: Option<std::ffi::OsString> = None;
    // Directories get their mode and mtime after what is in them.
    let mut dirs: Vec<(PathBuf, u32, SystemTime)> = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let parts = relative_parts(&path)?;
        let first = parts[0].clone();
        if top.as_ref().is_some_and(|t| *t != first) && !into {
            bail!(
                "{} is not a directory: several files go into a directory",
                dest.display()
            );
        }
        top.get_or_insert(first);
        // Where it goes, and the part of that path the stream chose.
        let (target, chosen) = if into {
            (dest.join(&path), parts.as_slice())
        } else {
            let rest: PathBuf = parts[1..].iter().collect();
            (
                if parts.len() == 1 {
                    dest.to_owned()
                } else {
                    dest.join(rest)
                },
                &parts[1..],
            )
        };
        no_symlink_on_the_way(&target, chosen)?;
        let header = entry.header();
        let mode = header.mode()? & 0o777;
        let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(header.mtime()?);
        let kind = header.entry_type();
        if kind.is_dir() {
            match fs::symlink_metadata(&target) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => bail!("{} exists and is not a directory", target.display()),
                Err(_) => fs::create_dir(&target)
                    .with_context(|| format!("creating {}", target.display()))?,
            }
            dirs.push((target, mode, mtime));
        } else if kind.is_file() || kind.is_gnu_sparse() {
            // A sparse file reads back whole, holes as zeros.
            let size = entry.size();
            written.bytes += write_file(&mut entry, size, &target, mode, mtime)?;
            written.files += 1;
        } else if kind.is_symlink() {
            let to = entry
                .link_name()?
                .with_context(|| format!("{}: a symlink without a target", path.display()))?
                .into_owned();
            replace_with(&target, |tmp| std::os::unix::fs::symlink(&to, tmp))?;
        } else {
            bail!(
                "{}: only files, directories and symlinks are copied",
                path.display()
            );
        }
    }
    for (dir, mode, mtime) in dirs.into_iter().rev() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode))?;
        File::open(&dir)?.set_times(FileTimes::new().set_modified(mtime))?;
    }
    Ok(written)
}

/// The components of an entry's path, all plain names.
fn relative_parts(path: &Path) -> anyhow::Result<Vec<std::ffi::OsString>> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => parts.push(n.to_owned()),
            Component::CurDir => {}
            _ => bail!(
                "refused {}: an entry must stay inside the destination",
                path.display()
            ),
        }
    }
    anyhow::ensure!(!parts.is_empty(), "refused an entry with an empty path");
    Ok(parts)
}

/// Refuses `target` when a directory the stream named on its way (the last
/// `chosen.len() - 1` parents) is a symlink: a stream that sent `a -> /etc`
/// then `a/passwd` writes nothing.
fn no_symlink_on_the_way(target: &Path, chosen: &[std::ffi::OsString]) -> anyhow::Result<()> {
    let mut dir = target.parent();
    for _ in 1..chosen.len() {
        let Some(d) = dir else { break };
        if fs::symlink_metadata(d).is_ok_and(|m| m.file_type().is_symlink()) {
            bail!("refused {}: {} is a symlink", target.display(), d.display());
        }
        dir = d.parent();
    }
    Ok(())
}

/// Writes the `size` bytes of `data` to a temporary file beside
/// `target`, with `mode` and `mtime`, synced, then renamed over `target`;
/// a stream that ends before `size` bytes leaves `target` as it was.
fn write_file(
    data: &mut impl Read,
    size: u64,
    target: &Path,
    mode: u32,
    mtime: SystemTime,
) -> anyhow::Result<u64> {
    replace_with(target, |tmp| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)?;
        let bytes = std::io::copy(data, &mut file)?;
        if bytes != size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the stream ended after {bytes} of its {size} bytes"),
            ));
        }
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.set_times(FileTimes::new().set_modified(mtime))?;
        file.sync_all()
    })?;
    Ok(size)
}

/// Makes `target` by `make(temporary path)` then a rename over it; the
/// temporary is removed when anything fails.
fn replace_with(
    target: &Path,
    make: impl FnOnce(&Path) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .context("a destination needs a file name")?;
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    let tmp = dir.join(format!(
        ".{}.malai-{}",
        name.to_string_lossy(),
        data_encoding::HEXLOWER.encode(&nonce)
    ));
    let made = make(&tmp).and_then(|()| fs::rename(&tmp, target));
    if let Err(e) = made {
        let _ = fs::remove_file(&tmp);
        return Err(anyhow::Error::new(e).context(format!("writing {}", target.display())));
    }
    crate::fsutil::sync_dir(dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o640);
        h.set_mtime(1_000_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data).unwrap();
    }

    #[test]
    fn a_file_keeps_its_mode_and_mtime_and_replaces_the_old_one_whole() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        fs::write(&dest, "old").unwrap();
        let stream = tar_of(|b| file(b, "src-name", b"new bytes"));
        let w = unpack(&stream[..], &dest).unwrap();
        assert_eq!(w, Written { files: 1, bytes: 9 });
        assert_eq!(fs::read(&dest).unwrap(), b"new bytes");
        let meta = fs::metadata(&dest).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        assert_eq!(
            meta.modified().unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000)
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
        // Into a directory: under its own name.
        unpack(&stream[..], dir.path()).unwrap();
        assert_eq!(fs::read(dir.path().join("src-name")).unwrap(), b"new bytes");
    }

    #[test]
    fn a_stream_cut_short_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        fs::write(&dest, "old").unwrap();
        let stream = tar_of(|b| file(b, "f", &vec![7u8; 100_000]));
        let err = unpack(&stream[..50_000], &dest).unwrap_err();
        assert!(format!("{err:#}").contains("the stream ended"), "{err:#}");
        assert!(fs::read(&dest).unwrap() == b"old", "the old file stays");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }

    #[test]
    fn a_hostile_stream_writes_nothing_outside_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let dest = dir.path().join("d");
        fs::create_dir(&dest).unwrap();
        // A symlink to elsewhere, then a file through it.
        let stream = tar_of(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, "a", outside.path()).unwrap();
            file(b, "a/planted", b"x");
        });
        let err = unpack(&stream[..], &dest).unwrap_err();
        assert!(format!("{err:#}").contains("is a symlink"), "{err:#}");
        assert!(!outside.path().join("planted").exists());
        // A path that climbs out: the tar crate's writer refuses to make
        // one, so write the header's name by hand.
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.extend_from_slice(b"x");
        raw.resize(512 * 2, 0);
        raw.extend_from_slice(&[0u8; 1024]);
        let err = unpack(&raw[..], &dest).unwrap_err();
        assert!(format!("{err:#}").contains("stay inside"), "{err:#}");
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn a_tree_round_trips_with_its_symlinks_and_modes() {
        let src = tempfile::tempdir().unwrap();
        let tree = src.path().join("tree");
        fs::create_dir_all(tree.join("sub")).unwrap();
        fs::write(tree.join("sub/run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(tree.join("sub/run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::symlink("sub/run.sh", tree.join("link")).unwrap();
        let mut stream = Vec::new();
        super::super::pack::pack(&[&tree], true, &mut stream).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let copy = dst.path().join("copy");
        unpack(&stream[..], &copy).unwrap();
        assert_eq!(fs::read(copy.join("sub/run.sh")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(
            fs::metadata(copy.join("sub/run.sh"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o750
        );
        assert_eq!(
            fs::read_link(copy.join("link")).unwrap(),
            Path::new("sub/run.sh")
        );
        // Again into the directory that now exists: under its own name.
        unpack(&stream[..], &copy).unwrap();
        assert!(copy.join("tree/sub/run.sh").exists());
    }
}
