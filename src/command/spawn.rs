//! Starting a command for a peer: argv (never a shell string), a clean
//! environment from a short allow-list, its own session and process group
//! (so a disconnect can kill all of it), pipes or a PTY, and, when the daemon
//! is root, the target user's uid, gid and groups.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::process::Stdio;

use anyhow::Context;
use nix::unistd::{Gid, Uid, User};
use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use tokio::process::{Child, Command};

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

pub struct Spawned {
    pub child: Child,
    /// The process group and session id of the command (it is the session
    /// leader): `killpg` and `kill_session` target.
    pub pgid: i32,
    /// The PTY's master side, when the command runs on one.
    pub pty_master: Option<OwnedFd>,
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

pub fn spawn(spec: Spec) -> anyhow::Result<Spawned> {
    let prepared = prepare(&spec)?;
    let (argv, user, switch) = (&prepared.argv, &prepared.user, prepared.switch);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd.env_clear()
        .envs(prepared.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&prepared.cwd);

    let inherit = matches!(spec.stdio, StdioMode::Inherit) && spec.pty.is_none();
    let mut pty_master = None;
    let mut slave_for_child = None;
    if let Some(size) = spec.pty {
        let (master, slave) = open_pty(size)?;
        cmd.stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave.try_clone()?));
        slave_for_child = Some(slave);
        pty_master = Some(master);
    } else {
        match spec.stdio {
            StdioMode::Inherit => {
                cmd.stdin(Stdio::inherit())
                    .stdout(Stdio::inherit())
                    .stderr(Stdio::inherit());
            }
            StdioMode::Piped => {
                cmd.stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
            }
            StdioMode::Fds([stdin, stdout, stderr]) => {
                cmd.stdin(Stdio::from(stdin))
                    .stdout(Stdio::from(stdout))
                    .stderr(Stdio::from(stderr));
            }
        }
    }

    let ids = if switch {
        let name = CString::new(user.name.clone()).context("user name")?;
        let groups = nix::unistd::getgrouplist(&name, user.gid).context("groups of the user")?;
        Some((user.uid, user.gid, groups))
    } else {
        None
    };
    let with_pty = spec.pty.is_some();
    if let (Some(slave), true) = (&slave_for_child, switch) {
        give_terminal(slave, user.uid)?;
    }
    set_up_child(&mut cmd, !inherit, with_pty, ids);

    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run {:?}", argv[0]))?;
    drop(slave_for_child);
    let pgid = child.id().context("child has no pid")? as i32;
    Ok(Spawned {
        child,
        pgid,
        pty_master,
    })
}

/// In the child, between fork and exec: every inherited descriptor above
/// stderr marked close-on-exec, a new session (so the command and
/// everything it starts can be killed together; not for a command that
/// keeps the caller's terminal), the PTY as controlling terminal, then the
/// user's groups, gid and uid, in that order.
#[allow(unsafe_code)]
fn set_up_child(
    cmd: &mut Command,
    new_session: bool,
    with_pty: bool,
    ids: Option<(Uid, Gid, Vec<Gid>)>,
) {
    // SAFETY: the closure runs in the forked child before exec and only makes
    // system calls (close_range, setsid, ioctl, setgroups, setgid, setuid)
    // on values prepared before the fork; it allocates nothing and takes no
    // locks.
    unsafe {
        cmd.pre_exec(move || {
            // Not closed here: the standard library still needs its own
            // close-on-exec pipe to report a failed exec.
            if !cloexec_above_stderr() {
                return Err(std::io::Error::last_os_error());
            }
            if new_session {
                rustix::process::setsid()?;
            }
            if with_pty {
                rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
            }
            if let Some((uid, gid, groups)) = &ids {
                nix::unistd::setgroups(groups)?;
                nix::unistd::setgid(*gid)?;
                nix::unistd::setuid(*uid)?;
            }
            Ok(())
        });
    }
}

/// Every descriptor above stderr closes at exec, whatever flag it was
/// received or opened with: a second guard behind close-on-exec on each
/// descriptor the daemon or the helper takes in (D-Bus callers' stdio,
/// terminals, a peer's pipes). Between fork and exec: one raw system call,
/// async-signal-safe; `false` with errno set when it failed.
#[allow(unsafe_code)]
pub fn cloexec_above_stderr() -> bool {
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC only sets flags on
    // this process's descriptors.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) == 0
    }
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

/// The exit code a client reports: the code, or 128+N for signal N.
pub fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => (128 + sig) as u8,
        (None, None) => 255,
    }
}
