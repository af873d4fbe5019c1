"""Everything the harness creates, and its removal: network namespaces
(named mbench<pid>-<role>, so runs never collide and a dead run's leftovers
are recognised), veth links, processes (stopped by their pid), the ssh test
user and the run directory. `Sandbox.close()` undoes all of it, in reverse
order, on success, on error and on SIGINT/SIGTERM.
"""

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

CLONE_NEWNET = 0x40000000
NETNS_PREFIX = "mbench"
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "setns: " + os.strerror(err))


@contextlib.contextmanager
def netns(name):
    """Runs the block with this thread in network namespace `name`: sockets
    made and processes spawned in it live there (no `ip netns exec`, whose
    own start-up would be timed with every command)."""
    if name is None:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open("/run/netns/" + name, os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def run(argv, check=True, **kw):
    """A setup command (not timed); its output, or an error naming it."""
    out = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and out.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(argv), out.returncode, out.stderr.strip()))
    return out.stdout


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def remove_stale():
    """Removes what a harness run that was killed (its pid is gone) left:
    its namespaces, the processes it started (by the pids it recorded, each
    checked to still refer to that run's directory), and the directory."""
    listing = run(["ip", "netns", "list"], check=False)
    for line in listing.splitlines():
        m = re.match(r"^(%s(\d+)-\S+)" % NETNS_PREFIX, line)
        if m and not pid_alive(int(m.group(2))):
            run(["ip", "netns", "del", m.group(1)], check=False)
    for name in os.listdir("/tmp"):
        m = re.match(r"^%s(\d+)\." % NETNS_PREFIX, name)
        if not m or pid_alive(int(m.group(1))):
            continue
        path = os.path.join("/tmp", name)
        try:
            with open(os.path.join(path, "pids")) as f:
                pids = [int(x) for x in f.read().split()]
        except OSError:
            pids = []
        for pid in pids:
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    cmd = f.read()
                with open("/proc/%d/environ" % pid, "rb") as f:
                    env = f.read()
            except OSError:
                continue
            if path.encode() in cmd or path.encode() in env:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if not os.path.exists(os.path.join(path, "kept")):  # --keep: left for a person to read
            shutil.rmtree(path, ignore_errors=True)


def other_runs_alive():
    return any(
        re.match(r"^%s(\d+)\." % NETNS_PREFIX, n) and pid_alive(int(n[len(NETNS_PREFIX):].split(".")[0]))
        and int(n[len(NETNS_PREFIX):].split(".")[0]) != os.getpid()
        for n in os.listdir("/tmp")
    )


class Sandbox:
    def __init__(self, keep=False):
        self.id = "%s%d" % (NETNS_PREFIX, os.getpid())
        self.dir = tempfile.mkdtemp(prefix=self.id + ".", dir="/tmp")
        os.chmod(self.dir, 0o755)  # the ssh test user reads its keys here
        self.keep = keep
        self.procs = []  # (name, Popen), stopped in reverse order
        self.namespaces = []
        self.undo = []  # other clean-ups, run in reverse order
        self.closed = False
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame):
        print("\nbench: signal %d: cleaning up" % signum, file=sys.stderr)
        self.close()
        sys.exit(128 + signum)

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    # -- namespaces -------------------------------------------------------

    def namespace(self, role):
        name = "%s-%s" % (self.id, role)
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        # No forwarding: traffic crosses a namespace only through a process.
        run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_forward=0"])
        return name

    def link(self, a, a_addr, b, b_addr, prefix=24):
        """A veth pair between namespaces a and b with these addresses (the
        names live only inside the namespaces, so nothing leaks into the
        root namespace)."""
        ifa, ifb = "to-" + b.rsplit("-", 1)[1][:10], "to-" + a.rsplit("-", 1)[1][:10]
        run(["ip", "-n", a, "link", "add", ifa, "type", "veth", "peer", "name", ifb, "netns", b])
        for ns, ifname, addr in ((a, ifa, a_addr), (b, ifb, b_addr)):
            run(["ip", "-n", ns, "addr", "add", "%s/%d" % (addr, prefix), "dev", ifname])
            run(["ip", "-n", ns, "link", "set", ifname, "up"])

    # -- processes --------------------------------------------------------

    def spawn(self, name, argv, ns=None, **kw):
        """Starts a long-lived process (in namespace `ns`), stopped by pid
        at close."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        with netns(ns):
            p = subprocess.Popen(argv, start_new_session=True, **kw)
        self.procs.append((name, p))
        with open(self.path("pids"), "a") as f:  # for remove_stale, should this run be killed
            f.write("%d\n" % p.pid)
        return p

    def stop(self, p, grace=10.0):
        """SIGTERM, then SIGKILL after `grace` seconds; by pid."""
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                p.wait()
        self.procs = [(n, q) for (n, q) in self.procs if q is not p]

    def stop_all(self, procs):
        """Stops many at once: SIGTERM to all, then wait, then SIGKILL."""
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                p.wait()
        ids = {id(p) for p in procs}
        self.procs = [(n, q) for (n, q) in self.procs if id(q) not in ids]

    def on_close(self, fn):
        self.undo.append(fn)

    # -- the end ----------------------------------------------------------

    def close(self):
        if self.closed:
            return
        self.closed = True
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        self.stop_all([p for _, p in reversed(self.procs)])
        for fn in reversed(self.undo):
            try:
                fn()
            except Exception as e:  # keep cleaning
                print("bench: clean-up step failed: %s" % e, file=sys.stderr)
        for ns in reversed(self.namespaces):
            run(["ip", "netns", "del", ns], check=False)
        if self.keep:
            open(self.path("kept"), "w").close()
            print("bench: kept %s" % self.dir, file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
