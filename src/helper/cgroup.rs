//! Each command in a control group of its own, inside the helper's
//! delegated subtree (`Delegate=yes` in malai-helper.service): the helper
//! moves itself into a leaf (`supervisor`), enables for its children the
//! controllers systemd delegated (pids, memory, cpu), makes one group per
//! command with its limits, and starts the command in it
//! (`command::clone`, `CLONE_INTO_CGROUP`). `cgroup.kill` then ends
//! the whole group, double forks and `setsid` escapes included. Under a
//! millisecond per command, against ~10 ms for a transient unit
//! (docs/BENCHMARKS.md); where a limit's controller is not
//! delegated (a host whose controllers are on cgroup v1), the launcher
//! falls back to a transient unit for commands with limits.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Limits;

/// The helper's delegated subtree.
pub struct Tree {
    base: PathBuf,
    /// Controllers the children may use.
    controllers: BTreeSet<String>,
}

/// One command's group.
pub struct Group {
    path: PathBuf,
}

/// This process's cgroup v2 path (`0::/...` in /proc/self/cgroup) under the
/// cgroup2 mount.
fn own_cgroup() -> io::Result<PathBuf> {
    let not = |what: &str| io::Error::other(format!("no cgroup v2 here: {what}"));
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")?;
    let rel = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| not("no 0:: line in /proc/self/cgroup"))?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ... - FSTYPE SOURCE SUPER"
    let mount = mounts
        .lines()
        .find(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|t| t.starts_with("cgroup2 "))
        })
        .and_then(|l| l.split_whitespace().nth(4))
        .ok_or_else(|| not("cgroup2 is not mounted"))?;
    Ok(Path::new(mount).join(rel.trim_start_matches('/')))
}

fn write(path: &Path, text: &str) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

impl Tree {
    /// Takes over the subtree systemd delegated to this process: moves it
    /// into `supervisor`, enables the delegated controllers for children.
    pub fn adopt() -> io::Result<Tree> {
        let base = own_cgroup()?;
        let supervisor = base.join("supervisor");
        match std::fs::create_dir(&supervisor) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        write(&supervisor.join("cgroup.procs"), "0")?;
        let available = std::fs::read_to_string(base.join("cgroup.controllers"))?;
        let controllers: BTreeSet<String> = available
            .split_whitespace()
            .filter(|c| ["pids", "memory", "cpu"].contains(c))
            .map(str::to_owned)
            .collect();
        if !controllers.is_empty() {
            let enable: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
            write(&base.join("cgroup.subtree_control"), &enable.join(" "))?;
        }
        Ok(Tree { base, controllers })
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Whether every limit set in `limits` has its controller here.
    pub fn supports(&self, limits: &Limits) -> bool {
        let has = |c: &str| self.controllers.contains(c);
        (limits.tasks_max.is_none() || has("pids"))
            && (limits.memory_max.is_none() || has("memory"))
            && (limits.cpu_quota.is_none() || has("cpu"))
    }

    /// A new group `name` with `limits`, and its directory open, for
    /// `clone3` to start the command in.
    pub fn create(&self, name: &str, limits: &Limits) -> io::Result<(Group, OwnedFd)> {
        let path = self.base.join(name);
        std::fs::create_dir(&path)?;
        let group = Group { path };
        let max = |v: u64| {
            if v == u64::MAX {
                "max".to_owned()
            } else {
                v.to_string()
            }
        };
        if let Some(l) = &limits.tasks_max {
            write(&group.path.join("pids.max"), &max(l.value))?;
        }
        if let Some(l) = &limits.memory_max {
            write(&group.path.join("memory.max"), &max(l.value))?;
        }
        if let Some(l) = &limits.cpu_quota {
            // CPU time per 100 ms period.
            write(
                &group.path.join("cpu.max"),
                &format!("{} 100000", l.value / 10),
            )?;
        }
        let dir = std::fs::File::open(&group.path)?;
        Ok((group, dir.into()))
    }
}

impl Group {
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Sends `signal` to every process of the group.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if signal == nix::sys::signal::Signal::SIGKILL
            && write(&self.path.join("cgroup.kill"), "1").is_ok()
        {
            return;
        }
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    /// Kills what is left in the group and removes it once it is empty.
    pub async fn remove(&self) {
        for _ in 0..100 {
            self.signal(nix::sys::signal::Signal::SIGKILL);
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await; // poll until the killed processes are gone
        }
        tracing::warn!("malai helper: could not remove {}", self.path.display());
    }
}
