//! What a command for a peer starts with: argv (never a shell string), a
//! clean environment from a short allow-list, its own session and process
//! group (so a disconnect can kill all of it), pipes or a PTY, and, when the
//! daemon is root, the target user's uid, gid and groups; `clone` starts
//! it.

use std::os::fd::OwnedFd;

use anyhow::Context;
use nix::unistd::{Uid, User};
use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;

use super::{WindowSize, env_allowed};

/// What to run, as decided by the ACL.
pub struct Spec {
    /// Empty: the user's login shell.
    pub argv: Vec<String>,
    pub username: Option<String>,
    pub env: Vec<(String, String)>,
    pub pty: Option<WindowSize>,
    pub stdio: StdioMode,
    /// A command rule's argv: pagers and editors are neutralised, so that
    /// the rule cannot be widened into a shell (`RULE_ENV`).
    pub rule: bool,
}

#[cfg(test)]
impl Spec {
    /// `argv` as this process's user, with pipes: what the tests start.
    pub fn piped(argv: &[&str]) -> Spec {
        Spec {
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            username: None,
            env: Vec::new(),
            pty: None,
            stdio: StdioMode::Piped,
            rule: false,
        }
    }
}

/// Where a command's stdin, stdout and stderr go (ignored on a PTY).
pub enum StdioMode {
    /// Pipes the exec host streams to its peer.
    Piped,
    /// The caller's own, terminal and session included (a command the CLI
    /// runs on this device itself).
    Inherit,
    /// Descriptors a CLI passed to the daemon over D-Bus; the command gets
    /// a session of its own, so that it can be killed as a whole.
    Fds([OwnedFd; 3]),
}

/// The environment of a command rule, set after the client's: programs
/// that page or edit (systemctl, git, man, less, crontab -e...) get `cat`
/// or a program that fails instead of something that can start a shell,
/// and less refuses its shell escapes and its editor.
const RULE_ENV: &[(&str, &str)] = &[
    ("PAGER", "cat"),
    ("MANPAGER", "cat"),
    ("GIT_PAGER", "cat"),
    ("SYSTEMD_PAGER", "cat"),
    ("SYSTEMD_PAGERSECURE", "1"),
    ("LESSSECURE", "1"),
    ("EDITOR", "/bin/false"),
    ("VISUAL", "/bin/false"),
    ("SYSTEMD_EDITOR", "/bin/false"),
];

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The user a command runs as: the named one, or the daemon's own. Naming
/// another user needs root.
fn target_user(username: Option<&str>) -> anyhow::Result<(User, bool)> {
    let me = Uid::current();
    let Some(name) = username else {
        let user = User::from_uid(me)?.context("the daemon's user has no passwd entry")?;
        return Ok((user, false));
    };
    let user =
        User::from_name(name)?.with_context(|| format!("no user {name:?} on this machine"))?;
    if user.uid == me {
        return Ok((user, false));
    }
    if !me.is_root() {
        anyhow::bail!(
            "the rule runs as {name:?}, but the daemon is not root and cannot switch users"
        );
    }
    Ok((user, true))
}

/// What a command runs with, worked out from its `Spec` and the target
/// user: the in-process spawn and the privileged helper's transient unit
/// both start exactly this.
pub struct Prepared {
    /// argv[0] as given (resolved on `PATH` where it runs).
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub user: User,
    /// The user is not the current one (needs root).
    pub switch: bool,
    pub cwd: std::path::PathBuf,
}

/// The user, argv (the login shell for an empty one), environment and
/// working directory of `spec`.
pub fn prepare(spec: &Spec) -> anyhow::Result<Prepared> {
    let (user, switch) = target_user(spec.username.as_deref())?;
    let shell = user.shell.to_string_lossy().into_owned();
    let shell = if shell.is_empty() {
        "/bin/sh".to_owned()
    } else {
        shell
    };
    let argv = if spec.argv.is_empty() {
        vec![shell.clone(), "-l".to_owned()]
    } else {
        spec.argv.clone()
    };
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), PATH.into()),
        ("HOME".into(), user.dir.to_string_lossy().into_owned()),
        ("USER".into(), user.name.clone()),
        ("LOGNAME".into(), user.name.clone()),
        ("SHELL".into(), shell),
    ];
    env.extend(spec.env.iter().filter(|(k, _)| env_allowed(k)).cloned());
    if spec.pty.is_some() && !spec.env.iter().any(|(k, _)| k == "TERM") {
        env.push(("TERM".into(), "xterm-256color".into()));
    }
    if spec.rule {
        env.extend(
            RULE_ENV
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
    }
    let cwd = if user.dir.is_dir() {
        user.dir.clone()
    } else {
        "/".into()
    };
    Ok(Prepared {
        argv,
        env,
        user,
        switch,
        cwd,
    })
}

/// The absolute path of `program` on the commands' `PATH` (a name with a
/// slash is taken as it is).
pub fn resolve(program: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &std::path::Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = std::path::PathBuf::from(program);
        return is_exec(&p).then_some(p);
    }
    PATH.split(':')
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|p| is_exec(p))
}

/// Gives a PTY's slave side to the user who runs on it, as login and sshd
/// do (the mode first: after the chown only its owner could change it).
pub fn give_terminal(slave: &OwnedFd, uid: Uid) -> anyhow::Result<()> {
    rustix::fs::fchmod(slave, rustix::fs::Mode::from_raw_mode(0o620))?;
    rustix::fs::fchown(
        slave,
        Some(rustix::process::Uid::from_raw(uid.as_raw())),
        None,
    )
    .context("giving the terminal to the user")?;
    Ok(())
}

pub fn open_pty(size: WindowSize) -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .context("openpt")?;
    rustix::pty::grantpt(&master).context("grantpt")?;
    rustix::pty::unlockpt(&master).context("unlockpt")?;
    let name = rustix::pty::ptsname(&master, Vec::new()).context("ptsname")?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .context("opening the PTY")?;
    resize(&master, size)?;
    Ok((master, slave))
}

pub fn resize(master: &OwnedFd, size: WindowSize) -> anyhow::Result<()> {
    let ws = rustix::termios::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(master, ws).context("setting the window size")?;
    Ok(())
}

/// Sends `signal` to the whole process group of a command.
pub fn kill_group(pgid: i32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), signal);
}

/// Sends `signal` to every process of the session `sid` (the command and
/// everything it started, background jobs of a shell included, which live in
/// process groups of their own). Only while the leader is not reaped: its
/// pid may be another process's after that (`process::Control`).
pub fn kill_session(sid: i32, signal: nix::sys::signal::Signal) {
    kill_group(sid, signal);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command name: state ppid pgrp session ...
        let session = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(3))
            .and_then(|s| s.parse::<i32>().ok());
        if session == Some(sid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }
}
