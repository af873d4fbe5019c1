//! `malai.lock`: held (flock) by the one daemon that owns a MALAI_HOME, with
//! its PID inside, so a second daemon refuses to start and the CLI can find
//! the running one.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg, OFlag};

use crate::home::Home;

pub struct HomeLock {
    _lock: Flock<File>,
}

/// Takes the home's lock or says which daemon holds it.
pub fn acquire(home: &Home) -> anyhow::Result<HomeLock> {
    let path = home.lock_path();
    std::fs::create_dir_all(&home.root)
        .with_context(|| format!("creating {}", home.root.display()))?;
    // O_NOFOLLOW: the file is truncated and written below, so a symlink
    // planted at its name (a MALAI_HOME others can write to) must fail the
    // open rather than aim that write at another file. At most 0644 even
    // under umask 0: the CLI reads the PID, only the daemon writes it.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    crate::fsutil::hand_over(&path, &file)?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, _)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            anyhow::bail!(
                "another malai daemon (pid {}) already owns {}; stop it first",
                pid.trim(),
                home.root.display()
            );
        }
    };
    lock.set_len(0)?;
    lock.rewind()?;
    writeln!(lock, "{}", std::process::id())?;
    lock.sync_all()?;
    Ok(HomeLock { _lock: lock })
}

/// The PID of the daemon holding the home's lock, if one does.
pub fn running_daemon(home: &Home) -> Option<i32> {
    let mut file = File::open(home.lock_path()).ok()?;
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_free) => None,
        Err(_) => text.trim().parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_symlink_at_the_lock_path_is_refused_not_truncated() {
        let shared = tempfile::tempdir().unwrap();
        std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let victim_dir = tempfile::tempdir().unwrap();
        let victim = victim_dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let home = Home::at(shared.path());
        std::os::unix::fs::symlink(&victim, home.lock_path()).unwrap();
        assert!(acquire(&home).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }
}
