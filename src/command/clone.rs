//! Starting a command: one `clone3` that shares this process's memory
//! until the child execs (`CLONE_VM | CLONE_VFORK`, what `posix_spawn`
//! does), optionally straight into a control group (`CLONE_INTO_CGROUP`,
//! as systemd does), with a pidfd to wait on (`CLONE_PIDFD`).
//!
//! Why not std's `Command`: a `pre_exec` (setsid, the terminal, the user's
//! ids) forces it to `fork`, which copies the page tables of the whole
//! daemon, faults copy-on-write pages in the child and tears the copy down
//! at exec: 0.6–0.9 ms on the path of every command of a large
//! multi-threaded daemon, measured. Without the copy, a start costs what it
//! costs a small program. And moving a running child into its group
//! instead (a write to `cgroup.procs`) makes the kernel wait for an RCU
//! grace period, 1 to 18 ms measured while the other core is busy.
//!
//! The child runs on a stack of its own in this process's memory while the
//! calling thread waits (other threads go on): everything it needs is
//! prepared before the clone, it makes system calls only (no allocation, no
//! lock, no glibc set*id broadcast, nothing another thread touches), and
//! every signal is blocked across the clone and reset to its default in the
//! child before it is unblocked, so no handler of the daemon ever runs in
//! the child (and the command gets default dispositions, SIGPIPE included,
//! and an empty signal mask). A failure before exec comes back as errno on a
//! close-on-exec pipe. On architectures without the small trampoline below
//! the same child is started by a plain copy (`clone3` without
//! `CLONE_VM`), and where `clone3` is refused (a container's seccomp
//! profile) by a plain `clone`.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::Context;

use super::spawn::{self, Spec, StdioMode};

/// A command started.
pub struct Cloned {
    pub pid: i32,
    pub pidfd: OwnedFd,
    /// The PTY's master side, when the command runs on one.
    pub pty_master: Option<OwnedFd>,
    /// This side of its pipes (`StdioMode::Piped`): stdin to write, stdout
    /// and stderr to read.
    pub pipes: [Option<OwnedFd>; 3],
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

const CLONE_VM: u64 = 0x100;
const CLONE_VFORK: u64 = 0x4000;
const CLONE_PIDFD: u64 = 0x1000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The child's stack: ample for the system calls it makes, with an
/// inaccessible page below it.
const STACK: usize = 64 * 1024;
const GUARD: usize = 4096;

fn cstring(s: &str) -> anyhow::Result<CString> {
    CString::new(s).with_context(|| format!("{s:?} holds a NUL byte"))
}

/// Everything the child reads, prepared before the clone.
struct Child<'a> {
    /// What becomes its stdin, stdout and stderr; `None`: this process's.
    stdio: Option<[libc::c_int; 3]>,
    new_session: bool,
    with_pty: bool,
    ids: Option<&'a (libc::uid_t, libc::gid_t, Vec<libc::gid_t>)>,
    cwd: &'a CStr,
    exe: &'a CStr,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    err_fd: libc::c_int,
}

/// Starts `spec` as a new process (inside the control group whose
/// directory `cgroup` is open, when given).
pub fn spawn(spec: Spec, cgroup: Option<&OwnedFd>) -> anyhow::Result<Cloned> {
    start(spec, cgroup, false)
}

/// `spawn`; with `copy`, always by a plain copy of this process (what runs
/// where a seccomp profile answers `clone3` with ENOSYS so that callers
/// fall back, as Docker's default does: glibc's own `fork` never uses it).
#[allow(unsafe_code)]
fn start(spec: Spec, cgroup: Option<&OwnedFd>, copy: bool) -> anyhow::Result<Cloned> {
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

    let user = &prepared.user;
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
    let with_pty = spec.pty.is_some();
    let new_session = with_pty || !matches!(spec.stdio, StdioMode::Inherit);
    let io = ChildIo::new(spec.pty, spec.stdio, &prepared)?;
    let (err_read, err_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let child = Child {
        stdio: io.child_fds(),
        new_session,
        with_pty,
        ids: ids.as_ref(),
        cwd: &cwd,
        exe: &exe,
        argv: &argv_ptrs,
        envp: &envp_ptrs,
        err_fd: err_write.as_raw_fd(),
    };

    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: CLONE_PIDFD,
        pidfd: std::ptr::addr_of_mut!(pidfd) as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if let Some(dir) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = dir.as_raw_fd() as u64;
    }
    let pid = if copy {
        copy_child(&child, &mut pidfd)
    } else {
        match clone_child(&mut args, &child) {
            // Refused (a seccomp profile): a plain copy, where no control
            // group is asked for.
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) && cgroup.is_none() => {
                copy_child(&child, &mut pidfd)
            }
            other => other,
        }
    }
    .context("starting the command (clone3)")?;
    drop(err_write);
    let ChildIo {
        pty_master, pipes, ..
    } = io;
    // SAFETY: CLONE_PIDFD stored a new descriptor owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let mut errno = [0u8; 4];
    let n = rustix::io::read(&err_read, &mut errno).unwrap_or(0);
    if n == 4 {
        let err = std::io::Error::from_raw_os_error(i32::from_ne_bytes(errno));
        // It exited with 127; reap it.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        return Err(err).with_context(|| format!("cannot run {:?}", prepared.argv[0]));
    }
    Ok(Cloned {
        pid,
        pidfd,
        pty_master,
        pipes,
    })
}

/// The descriptors of a command being started: what the child gets, and
/// this side (a PTY's master, the other ends of its pipes). The child's
/// ends are closed here once it runs.
struct ChildIo {
    child: Option<[OwnedFd; 3]>,
    pty_master: Option<OwnedFd>,
    pipes: [Option<OwnedFd>; 3],
}

impl ChildIo {
    fn new(
        pty: Option<super::WindowSize>,
        stdio: StdioMode,
        prepared: &spawn::Prepared,
    ) -> anyhow::Result<ChildIo> {
        let mut io = ChildIo {
            child: None,
            pty_master: None,
            pipes: [None, None, None],
        };
        match (pty, stdio) {
            (Some(size), _) => {
                let (master, slave) = spawn::open_pty(size)?;
                if prepared.switch {
                    spawn::give_terminal(&slave, prepared.user.uid)?;
                }
                io.child = Some([slave.try_clone()?, slave.try_clone()?, slave]);
                io.pty_master = Some(master);
            }
            (None, StdioMode::Fds(fds)) => io.child = Some(fds),
            (None, StdioMode::Piped) => {
                let pipe = || rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC);
                let (in_read, in_write) = pipe()?;
                let (out_read, out_write) = pipe()?;
                let (err_read, err_write) = pipe()?;
                io.child = Some([in_read, out_write, err_write]);
                io.pipes = [Some(in_write), Some(out_read), Some(err_read)];
            }
            (None, StdioMode::Inherit) => {}
        }
        // Above stderr, so that no dup2 onto 0, 1 or 2 in the child
        // overwrites a descriptor it has yet to dup (a daemon started with
        // stdio closed gets 0 to 2 from pipe2 or open).
        if let Some(fds) = io.child.as_mut() {
            for fd in fds.iter_mut() {
                if fd.as_raw_fd() <= 2 {
                    *fd = rustix::io::fcntl_dupfd_cloexec(&*fd, 3)?;
                }
            }
        }
        Ok(io)
    }

    fn child_fds(&self) -> Option<[libc::c_int; 3]> {
        self.child
            .as_ref()
            .map(|[i, o, e]| [i.as_raw_fd(), o.as_raw_fd(), e.as_raw_fd()])
    }
}

/// Blocks every signal of the calling thread (glibc's own two included)
/// until dropped, when the mask before is put back.
struct SignalsBlocked(u64);

impl SignalsBlocked {
    #[allow(unsafe_code)]
    fn all() -> SignalsBlocked {
        let (all, mut old) = (u64::MAX, 0u64);
        // SAFETY: rt_sigprocmask on this thread with kernel-sized sets.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &all as *const u64,
                &mut old as *mut u64,
                8usize,
            );
        }
        SignalsBlocked(old)
    }
}

impl Drop for SignalsBlocked {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: as in `all`.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &self.0 as *const u64,
                std::ptr::null_mut::<u64>(),
                8usize,
            );
        }
    }
}

/// An anonymous mapping for the child's stack, with a guard page below.
struct Stack {
    base: *mut libc::c_void,
}

impl Stack {
    #[allow(unsafe_code)]
    fn new() -> std::io::Result<Stack> {
        // SAFETY: a fresh private anonymous mapping, unmapped on drop.
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                GUARD + STACK,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            let stack = Stack { base };
            if libc::mprotect(base, GUARD, libc::PROT_NONE) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(stack)
        }
    }
}

impl Drop for Stack {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; the child that used it has
        // exec'd or exited (CLONE_VFORK).
        unsafe {
            libc::munmap(self.base, GUARD + STACK);
        }
    }
}

/// Clones the child that runs `child` (never returning here in it): its
/// pid. The calling thread waits until the child has exec'd or exited.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn clone_child(args: &mut CloneArgs, child: &Child<'_>) -> std::io::Result<i32> {
    let stack = Stack::new()?;
    args.flags |= CLONE_VM | CLONE_VFORK;
    args.stack = stack.base as u64 + GUARD as u64;
    args.stack_size = STACK as u64;
    let blocked = SignalsBlocked::all();
    let ret: i64;
    // SAFETY: clone3 with a stack of its own: the kernel starts the child
    // with its stack pointer at the top of `stack` (16-byte aligned, as the
    // call below needs) and every other register as here; it calls
    // `child_main(child)`, which never returns. This thread is suspended
    // until the child has exec'd or exited (CLONE_VFORK), so `child` and
    // the stack outlive its use. `syscall` clobbers rcx and r11 only.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") std::ptr::from_ref::<CloneArgs>(args),
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") std::ptr::from_ref::<Child<'_>>(child),
            in("r13") child_main as unsafe extern "C" fn(*const Child<'_>) -> !,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    drop(blocked);
    drop(stack);
    if ret < 0 {
        return Err(std::io::Error::from_raw_os_error(-ret as i32));
    }
    Ok(ret as i32)
}

/// Elsewhere: a plain copy of this process (no stack to switch to).
#[cfg(not(target_arch = "x86_64"))]
#[allow(unsafe_code)]
fn clone_child(args: &mut CloneArgs, child: &Child<'_>) -> std::io::Result<i32> {
    // SAFETY: clone3 without CLONE_VM copies this process, as fork does.
    copied(child, || unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::from_ref::<CloneArgs>(args),
            std::mem::size_of::<CloneArgs>(),
        )
    })
}

/// A plain copy of this process by `clone` (no stack to switch to, no
/// shared memory), with a pidfd in `pidfd`: where `clone3` is refused.
#[allow(unsafe_code)]
fn copy_child(child: &Child<'_>, pidfd: &mut libc::c_int) -> std::io::Result<i32> {
    // SAFETY: clone without CLONE_VM or a stack copies this process, as
    // fork does. The third argument is where CLONE_PIDFD stores the pidfd,
    // on every architecture.
    copied(child, || unsafe {
        libc::syscall(
            libc::SYS_clone,
            (CLONE_PIDFD as libc::c_ulong) | libc::SIGCHLD as libc::c_ulong,
            0usize,
            std::ptr::from_mut::<libc::c_int>(pidfd),
            0usize,
            0usize,
        )
    })
}

/// Makes the child by `clone`, a system call that copies this process
/// (the child returns from it with 0, on its own copy of this stack), with
/// every signal blocked across it; the child runs `child_main` and never
/// returns. The child's pid.
#[allow(unsafe_code)]
fn copied(child: &Child<'_>, clone: impl FnOnce() -> libc::c_long) -> std::io::Result<i32> {
    let blocked = SignalsBlocked::all();
    let pid = clone();
    if pid == 0 {
        // SAFETY: in the copy, with one thread: see `child_main`.
        unsafe { child_main(child) }
    }
    drop(blocked);
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(pid as i32)
}

/// In the child: default signal dispositions, stdio, a session of its own
/// (the PTY its controlling terminal), every other descriptor
/// close-on-exec, the user's groups, gid and uid, the working directory,
/// an empty signal mask, exec. A failure writes errno to `err_fd` and exits
/// 127.
#[allow(unsafe_code)]
unsafe extern "C" fn child_main(child: *const Child<'_>) -> ! {
    // SAFETY (whole body): system calls on values prepared before the
    // clone, read only; see the module's header.
    unsafe {
        let c = &*child;
        let fail = || fail(c.err_fd);
        // The kernel's struct sigaction, all zero on every layout: SIG_DFL,
        // no flags, an empty mask. Raw, as glibc refuses its own two.
        let dfl = [0u64; 4];
        for signal in 1..=64 {
            // SIGKILL and SIGSTOP refuse it, harmlessly.
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                dfl.as_ptr(),
                std::ptr::null_mut::<u64>(),
                8usize,
            );
        }
        if let Some(stdio) = c.stdio {
            for (target, fd) in stdio.into_iter().enumerate() {
                if libc::dup2(fd, target as libc::c_int) < 0 {
                    fail();
                }
            }
        }
        if !cloexec_above_stderr() {
            fail();
        }
        if c.new_session && libc::setsid() < 0 {
            fail();
        }
        if c.with_pty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            fail();
        }
        if let Some((uid, gid, groups)) = c.ids {
            // Raw: glibc's wrappers would signal threads this child does
            // not have.
            if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
                || libc::syscall(libc::SYS_setresgid, *gid, *gid, *gid) != 0
                || libc::syscall(libc::SYS_setresuid, *uid, *uid, *uid) != 0
            {
                fail();
            }
        }
        if libc::chdir(c.cwd.as_ptr()) != 0 {
            let root = c"/";
            if libc::chdir(root.as_ptr()) != 0 {
                fail();
            }
        }
        let none = 0u64;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &none as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        );
        libc::execve(c.exe.as_ptr(), c.argv.as_ptr(), c.envp.as_ptr());
        fail()
    }
}

/// Every descriptor above stderr closes at exec, whatever flag it was
/// received or opened with: a second guard behind close-on-exec on each
/// descriptor the daemon or the helper takes in (D-Bus callers' stdio,
/// terminals, a peer's pipes). In the child before exec: one raw system call,
/// async-signal-safe; `false` with errno set when it failed.
#[allow(unsafe_code)]
fn cloexec_above_stderr() -> bool {
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

/// In the child: errno to the parent, then exit 127.
#[allow(unsafe_code)]
unsafe fn fail(err_fd: libc::c_int) -> ! {
    // SAFETY: system calls in the child, as above.
    unsafe {
        let bytes = (*libc::__errno_location()).to_ne_bytes();
        libc::write(err_fd, bytes.as_ptr().cast(), 4);
        libc::_exit(127)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::super::process::Process;
    use super::*;

    /// Runs `argv` with pipes: its stdout and exit code.
    async fn run(argv: &[&str]) -> (String, u8) {
        let mut p = Process::spawn(Spec::piped(argv), None).expect("started");
        let mut out = String::new();
        p.stdout
            .take()
            .expect("a pipe")
            .read_to_string(&mut out)
            .await
            .expect("stdout");
        (out, p.wait().await.expect("exit code"))
    }

    /// The spawning process ignores SIGPIPE (every Rust program does) and
    /// blocks every signal across the clone: the command sees neither.
    #[tokio::test]
    async fn a_command_starts_with_default_signals_and_an_empty_mask() {
        let (status, code) = run(&["cat", "/proc/self/status"]).await;
        assert_eq!(code, 0);
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_else(|| panic!("no {name} in {status}"))
                .to_owned()
        };
        assert_eq!(field("SigIgn:"), "0000000000000000", "ignored signals");
        assert_eq!(field("SigBlk:"), "0000000000000000", "blocked signals");
    }

    /// Its own session and process group, led by itself.
    #[tokio::test]
    async fn a_command_leads_a_session_of_its_own() {
        let (stat, code) = run(&["cat", "/proc/self/stat"]).await;
        assert_eq!(code, 0);
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .expect("stat")
            .1
            .split_whitespace()
            .collect();
        // state ppid pgrp session
        assert_eq!(fields[2], fields[3], "group and session: {stat}");
        assert_eq!(
            fields[1],
            std::process::id().to_string(),
            "a child of this process"
        );
    }

    /// An exec that fails after the clone (an interpreter that does not
    /// exist) is an error naming the program, and the child is reaped.
    #[tokio::test]
    async fn a_failed_exec_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("script");
        std::fs::write(&script, "#!/nonexistent/interpreter\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = match Process::spawn(Spec::piped(&[script.to_str().unwrap()]), None) {
            Ok(_) => panic!("started a script whose interpreter does not exist"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains("cannot run") && err.contains("No such file"),
            "{err}"
        );
    }

    /// The copy used where `clone3` is refused starts the same command,
    /// with the same session, signals and pipes.
    #[tokio::test]
    async fn the_fallback_copy_starts_the_same_command() {
        let started =
            start(Spec::piped(&["cat", "/proc/self/status"]), None, true).expect("started");
        let mut p = Process::from_clone(started).expect("a process");
        let mut status = String::new();
        p.stdout
            .take()
            .expect("a pipe")
            .read_to_string(&mut status)
            .await
            .expect("stdout");
        assert_eq!(p.wait().await.expect("exit code"), 0);
        assert!(status.contains("SigIgn:\t0000000000000000"), "{status}");
        assert!(status.contains("SigBlk:\t0000000000000000"), "{status}");
    }

    /// In a process whose seccomp filter answers `clone3` with ENOSYS (as
    /// Docker's default profile does), a command still starts: the test
    /// runs itself again in a child process that installs such a filter.
    #[test]
    #[allow(unsafe_code)]
    fn where_clone3_is_refused_a_plain_copy_starts_the_command() {
        const CHILD: &str = "MALAI_TEST_CLONE3_REFUSED";
        const NAME: &str =
            "command::clone::tests::where_clone3_is_refused_a_plain_copy_starts_the_command";
        if std::env::var_os(CHILD).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{text}");
            assert!(text.contains("clone3 refused, command ran"), "{text}");
            return;
        }
        // The filter: clone3 fails with ENOSYS, everything else is allowed.
        let stmt = |code: u16, k: u32| libc::sock_filter {
            code,
            jt: 0,
            jf: 0,
            k,
        };
        let filter = [
            stmt(0x20, 0), // ld [nr]
            libc::sock_filter {
                code: 0x15, // jeq #SYS_clone3
                jt: 0,
                jf: 1,
                k: libc::SYS_clone3 as u32,
            },
            stmt(0x06, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
            stmt(0x06, libc::SECCOMP_RET_ALLOW),
        ];
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr().cast_mut(),
        };
        // SAFETY: no_new_privs, then a filter over every thread of this
        // child process of the test.
        unsafe {
            assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
            assert_eq!(
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    libc::SECCOMP_FILTER_FLAG_TSYNC,
                    &prog,
                ),
                0,
                "{}",
                std::io::Error::last_os_error()
            );
            let refused = libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize);
            assert_eq!(
                (refused, std::io::Error::last_os_error().raw_os_error()),
                (-1, Some(libc::ENOSYS))
            );
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (out, code) = rt.block_on(run(&["echo", "ran"]));
        assert_eq!((out.as_str(), code), ("ran\n", 0));
        println!("clone3 refused, command ran");
    }

    /// Many commands started at once from every worker thread, while the
    /// others go on: each runs with its own pipes and exit code.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn commands_started_concurrently_keep_their_own_pipes() {
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                tokio::spawn(async move {
                    let word = format!("w{i}");
                    let code = format!("exit {}", i % 7);
                    let script = format!("echo {word}; {code}");
                    let (out, status) = run(&["sh", "-c", &script]).await;
                    assert_eq!(out, format!("{word}\n"));
                    assert_eq!(status, (i % 7) as u8);
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("a task");
        }
    }
}
