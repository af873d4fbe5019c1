//! Starting a command directly inside its control group: `clone3` with
//! `CLONE_INTO_CGROUP`, as systemd does for its services. Moving a running
//! child in instead (a write to `cgroup.procs`) makes the kernel wait for
//! an RCU grace period, 1 to 18 ms measured while the other core is busy;
//! created in place, the child costs what a plain fork and exec do. The
//! child gets a pidfd (`CLONE_PIDFD`) to wait on. std's `Command` cannot
//! do this, so this is a small fork-and-exec of its own: everything the
//! child needs is prepared before the clone, and the child makes raw
//! system calls only (no allocation, no lock, no glibc set*id broadcast),
//! then reports a failure before exec on a close-on-exec pipe.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::Context;

use super::spawn::{self, Spec, StdioMode};

/// A command started in its group.
pub struct Cloned {
    pub pid: i32,
    pub pidfd: OwnedFd,
    /// The PTY's master side, when the command runs on one.
    pub pty_master: Option<OwnedFd>,
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_PIDFD: u64 = 0x1000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

fn cstring(s: &str) -> anyhow::Result<CString> {
    CString::new(s).with_context(|| format!("{s:?} holds a NUL byte"))
}

/// Starts `spec` (its stdio: descriptors, or a PTY made here) as a new
/// process inside the cgroup whose directory `cgroup` is open.
#[allow(unsafe_code)]
pub fn spawn_in(spec: Spec, cgroup: &OwnedFd) -> anyhow::Result<Cloned> {
    let prepared = spawn::prepare(&spec)?;
    let exe = spawn::resolve(&prepared.argv[0])
        .with_context(|| format!("cannot run {:?}: no such program", prepared.argv[0]))?;
    let exe = CString::new(exe.into_os_string().into_encoded_bytes())?;
    let argv: Vec<CString> = prepared
        .argv
        .iter()
        .map(|a| cstring(a))
        .collect::<anyhow::Result<_>>()?;
    let envp: Vec<CString> = prepared
        .env
        .iter()
        .map(|(k, v)| cstring(&format!("{k}={v}")))
        .collect::<anyhow::Result<_>>()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    let cwd = CString::new(prepared.cwd.clone().into_os_string().into_encoded_bytes())?;

    let (stdio, pty_master) = child_stdio(spec.pty, spec.stdio, &prepared)?;
    let user = &prepared.user;
    let with_pty = pty_master.is_some();
    let ids = if prepared.switch {
        let name = cstring(&user.name)?;
        let groups: Vec<libc::gid_t> = nix::unistd::getgrouplist(&name, user.gid)
            .context("groups of the user")?
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        Some((user.uid.as_raw(), user.gid.as_raw(), groups))
    } else {
        None
    };
    let (err_read, err_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;

    let mut pidfd: libc::c_int = -1;
    let args = CloneArgs {
        flags: CLONE_PIDFD | CLONE_INTO_CGROUP,
        pidfd: std::ptr::addr_of_mut!(pidfd) as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    let raw_stdio = [
        stdio[0].as_raw_fd(),
        stdio[1].as_raw_fd(),
        stdio[2].as_raw_fd(),
    ];
    let err_fd = err_write.as_raw_fd();
    // SAFETY: clone3 without CLONE_VM gives the child a copy of this
    // address space with one thread. The child below makes raw system
    // calls only, on values prepared above, and never returns: it execs or
    // exits with `_exit`.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::addr_of!(args),
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        // The child.
        unsafe {
            child(
                raw_stdio,
                with_pty,
                ids.as_ref(),
                &cwd,
                &exe,
                &argv_ptrs,
                &envp_ptrs,
                err_fd,
            )
        }
    }
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("clone3 into the command's group");
    }
    drop(err_write);
    drop(stdio);
    // SAFETY: CLONE_PIDFD stored a new descriptor owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let mut errno = [0u8; 4];
    let n = rustix::io::read(&err_read, &mut errno).unwrap_or(0);
    if n == 4 {
        let err = std::io::Error::from_raw_os_error(i32::from_ne_bytes(errno));
        // It exited with 127; reap it.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
        return Err(err).with_context(|| format!("cannot run {:?}", prepared.argv[0]));
    }
    Ok(Cloned {
        pid: pid as i32,
        pidfd,
        pty_master,
    })
}

/// The child's stdin, stdout and stderr: the descriptors given, or the
/// slave side of a new PTY (given to the user), with its master side.
fn child_stdio(
    pty: Option<super::WindowSize>,
    stdio: StdioMode,
    prepared: &spawn::Prepared,
) -> anyhow::Result<([OwnedFd; 3], Option<OwnedFd>)> {
    match (pty, stdio) {
        (Some(size), _) => {
            let (master, slave) = spawn::open_pty(size)?;
            if prepared.switch {
                spawn::give_terminal(&slave, prepared.user.uid)?;
            }
            Ok((
                [slave.try_clone()?, slave.try_clone()?, slave],
                Some(master),
            ))
        }
        (None, StdioMode::Fds(fds)) => Ok((fds, None)),
        (None, _) => anyhow::bail!("a command in a control group needs its descriptors or a PTY"),
    }
}

/// In the child: stdio, a session of its own (the PTY its controlling
/// terminal), every other descriptor close-on-exec, the user's groups, gid
/// and uid, the working directory, exec. A failure writes errno to
/// `err_fd` and exits 127.
#[allow(unsafe_code, clippy::too_many_arguments)]
unsafe fn child(
    stdio: [libc::c_int; 3],
    with_pty: bool,
    ids: Option<&(libc::uid_t, libc::gid_t, Vec<libc::gid_t>)>,
    cwd: &CString,
    exe: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    err_fd: libc::c_int,
) -> ! {
    // SAFETY (whole body): raw system calls on prepared values; see
    // `spawn_in`.
    unsafe {
        let fail = || fail(err_fd);
        for (target, fd) in stdio.into_iter().enumerate() {
            if libc::dup2(fd, target as libc::c_int) < 0 {
                fail();
            }
        }
        if !spawn::cloexec_above_stderr() {
            fail();
        }
        if libc::setsid() < 0 {
            fail();
        }
        if with_pty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            fail();
        }
        if let Some((uid, gid, groups)) = ids {
            // Raw: glibc's wrappers would signal threads this child does
            // not have.
            if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
                || libc::syscall(libc::SYS_setresgid, *gid, *gid, *gid) != 0
                || libc::syscall(libc::SYS_setresuid, *uid, *uid, *uid) != 0
            {
                fail();
            }
        }
        if libc::chdir(cwd.as_ptr()) != 0 {
            let root = c"/";
            if libc::chdir(root.as_ptr()) != 0 {
                fail();
            }
        }
        libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail()
    }
}

/// In the child: errno to the parent, then exit 127.
#[allow(unsafe_code)]
unsafe fn fail(err_fd: libc::c_int) -> ! {
    // SAFETY: raw system calls in the child, as above.
    unsafe {
        let bytes = (*libc::__errno_location()).to_ne_bytes();
        libc::write(err_fd, bytes.as_ptr().cast(), 4);
        libc::_exit(127)
    }
}
