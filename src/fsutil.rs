//! Durable file writes: every config, key and state file malai writes goes
//! through `write_atomic`, so a crash leaves the old file or the new one,
//! never a torn mix. Some land in directories other users may write to
//! (`malai config download -o FILE` writes in the working directory, as
//! root too), so nothing here follows a name someone else could have put
//! there: the temp file is created exclusively under a random name, its mode
//! is set on the descriptor, and rename(2) replaces a symlink at the
//! destination instead of following it.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::fcntl::OFlag;

/// Runs `f`, file work that blocks (the fsyncs of `write_atomic`, the
/// cluster directory's `flock` another command may hold), from async code
/// without holding a runtime worker: on the daemon's multi-threaded
/// runtime the worker hands its other tasks to a new thread while `f` runs
/// (`block_in_place`), so a slow disk or a held lock stalls this task
/// only, not every peer and cluster the daemon serves. Elsewhere (the
/// CLI's one thread, a test's runtime, no runtime) `f` runs in place, as
/// it would anyway.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// A home owned by another user that root is writing in, and that user.
static HANDOVER: std::sync::OnceLock<(std::path::PathBuf, u32, u32)> = std::sync::OnceLock::new();

/// For root working in a home another user owns (the system service's
/// `/var/lib/malai`, owned by `malai`): every file and directory malai
/// creates under `root` from now on is given to that user, so the daemon
/// can read what `malai cluster init` as root made. Nothing for anyone but
/// root, or a home root owns.
pub fn hand_over_under(root: &Path) {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    if let Ok(meta) = fs::symlink_metadata(root)
        && meta.is_dir()
        && meta.uid() != 0
    {
        let _ = HANDOVER.set((root.to_path_buf(), meta.uid(), meta.gid()));
    }
}

/// Gives `file` (at `path`) to the home's owner, when `hand_over_under`
/// named a home `path` is in.
pub fn hand_over(path: &Path, file: &File) -> io::Result<()> {
    if let Some((root, uid, gid)) = HANDOVER.get()
        && path.starts_with(root)
    {
        std::os::unix::fs::fchown(file, Some(*uid), Some(*gid))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically and durably: a temp file in the same
/// directory, fsync, rename over `path`, fsync of the directory. `mode` is
/// set explicitly with fchmod, so the process umask cannot widen it. A
/// symlink at `path` is replaced, never followed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_of(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    // Dropped on any error below, which unlinks the temp name (unlink never
    // follows a symlink, so even a name swapped meanwhile is harmless).
    let mut tmp = temp_file(dir, name, mode)?;
    let file = tmp.as_file_mut();
    hand_over(path, file)?;
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    // rename(2) replaces whatever `path` is, a symlink included, and does
    // not follow it.
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// A new, empty file `.NAME.RANDOM.tmp` in `dir`, made by `create_exclusive`;
/// a name that is taken (by chance or by someone who can write to `dir`) is
/// skipped for another random one. The name is unpredictable, so another
/// user cannot take them all in advance; a taken one is never opened.
fn temp_file(dir: &Path, name: &std::ffi::OsStr, mode: u32) -> io::Result<tempfile::NamedTempFile> {
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .make_in(dir, |p| create_exclusive(p, mode))
}

/// Creates a new file at `path` for writing with O_CREAT|O_EXCL|O_NOFOLLOW
/// (and O_CLOEXEC, as std always does): any entry already at `path` makes it
/// fail with `AlreadyExists` rather than be opened. O_EXCL alone refuses a
/// symlink, dangling or not (O_CREAT without it would create the target of
/// a dangling one); O_NOFOLLOW is kept too, so that refusing symlinks does
/// not rest on one flag. `mode` is narrowed by the umask here, never
/// widened; the caller sets it exactly.
fn create_exclusive(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .mode(mode)
        .open(path)
}

/// Creates a directory (and its parents) with `mode`, and fsyncs the parent
/// so the new entry survives a crash.
pub fn create_dir_durable(path: &Path, mode: u32) -> io::Result<()> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
        && !parent.exists()
    {
        create_dir_durable(parent, 0o755)?;
    }
    DirBuilder::new().mode(mode).create(path)?;
    // The exact mode (mkdir's is narrowed by the umask), set on a descriptor
    // of the directory just made: a symlink swapped in for it meanwhile
    // fails the open (O_NOFOLLOW) instead of having its target chmodded.
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW).bits())
        .open(path)?;
    hand_over(path, &dir)?;
    dir.set_permissions(fs::Permissions::from_mode(mode))?;
    sync_dir(parent_of(path))
}

/// fsync of a directory, which makes renames and creations in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daemon runs on one worker: while one task waits on the disk, a
    /// task it woke (here, the one that ends the wait) still runs.
    #[test]
    fn blocking_work_leaves_the_one_worker_to_the_other_tasks() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let waited = rt.block_on(async {
            tokio::spawn(async {
                let (tx, rx) = std::sync::mpsc::channel();
                // Queued on this worker, behind the task that blocks.
                tokio::spawn(async move { tx.send(()) });
                blocking(|| rx.recv_timeout(std::time::Duration::from_secs(10)))
            })
            .await
            .unwrap()
        });
        assert_eq!(waited, Ok(()), "the woken task never ran");
    }

    #[test]
    fn blocking_work_runs_in_place_without_a_multi_threaded_runtime() {
        assert_eq!(blocking(|| 7), 7);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(async { blocking(|| 8) }), 8);
    }

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        write_atomic(&path, b"one", 0o644).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // no temp file is left behind
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    /// A directory any user may write to and rename in: 0777 without the
    /// sticky bit, where `fs.protected_symlinks` does not stop root from
    /// following another user's symlink (a sticky /tmp would hide the hole).
    fn shared_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        dir
    }

    /// A file outside the shared directory that a planted symlink points
    /// at: "precious", 0640.
    fn victim() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("victim");
        fs::write(&path, "precious").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        (dir, path)
    }

    fn assert_untouched(victim: &Path) {
        assert_eq!(fs::read_to_string(victim).unwrap(), "precious");
        let mode = fs::metadata(victim).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640, "the victim's mode is unchanged");
    }

    fn assert_regular(path: &Path, bytes: &[u8], mode: u32) {
        let meta = fs::symlink_metadata(path).unwrap();
        assert!(
            meta.file_type().is_file(),
            "{} is a regular file",
            path.display()
        );
        assert_eq!(meta.permissions().mode() & 0o7777, mode);
        assert_eq!(fs::read(path).unwrap(), bytes);
    }

    #[test]
    fn a_symlink_at_the_old_predictable_temp_name_is_not_followed() {
        let shared = shared_dir();
        let (_keep, victim) = victim();
        let path = shared.path().join("f.toml");
        let old_tmp = shared
            .path()
            .join(format!(".f.toml.tmp.{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &old_tmp).unwrap();
        write_atomic(&path, b"new", 0o600).unwrap();
        assert_untouched(&victim);
        assert_regular(&path, b"new", 0o600);
    }

    #[test]
    fn a_symlink_at_the_destination_is_replaced_not_followed() {
        let shared = shared_dir();
        let (_keep, victim) = victim();
        let path = shared.path().join("f.toml");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write_atomic(&path, b"new", 0o600).unwrap();
        assert_untouched(&victim);
        assert_regular(&path, b"new", 0o600);
    }

    /// The temp names cannot all be planted in advance, so the open itself
    /// must refuse a taken name: a symlink to a file, a dangling symlink
    /// (whose target O_CREAT alone would create) and a plain file.
    #[test]
    fn the_temp_file_open_refuses_any_existing_entry() {
        let shared = shared_dir();
        let (_keep, victim) = victim();
        let link = shared.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let dangling = shared.path().join("dangling");
        let target = shared.path().join("created-through-the-link");
        std::os::unix::fs::symlink(&target, &dangling).unwrap();
        let plain = shared.path().join("plain");
        fs::write(&plain, "theirs").unwrap();
        for taken in [&link, &dangling, &plain] {
            let err = create_exclusive(taken, 0o600).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{taken:?}");
        }
        assert_untouched(&victim);
        assert!(
            fs::symlink_metadata(&target).is_err(),
            "no file was created through the link"
        );
        assert_eq!(fs::read_to_string(&plain).unwrap(), "theirs");
    }

    #[test]
    fn temp_names_are_random_and_beside_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let name = std::ffi::OsStr::new("f.toml");
        let a = temp_file(dir.path(), name, 0o600).unwrap();
        let b = temp_file(dir.path(), name, 0o600).unwrap();
        assert_ne!(a.path(), b.path());
        for t in [&a, &b] {
            assert_eq!(t.path().parent(), Some(dir.path()));
            let n = t.path().file_name().unwrap().to_string_lossy().into_owned();
            assert!(n.starts_with(".f.toml.") && n.ends_with(".tmp"), "{n}");
            assert!(n.len() > ".f.toml..tmp".len() + 4, "{n} has a random part");
        }
    }

    #[test]
    fn directories_get_their_exact_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b");
        create_dir_durable(&path, 0o700).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&path), 0o700);
        assert_eq!(mode(&dir.path().join("a")), 0o755);
    }
}
