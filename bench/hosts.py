"""The real things the harness drives: malai homes and daemons (readiness and
status from a NOTIFY_SOCKET the harness listens on, never a sleep), a
private dbus-daemon, OpenSSH's sshd with a key-only test user, and the
delay relay.
"""

import json
import os
import pwd
import queue
import re
import socket
import subprocess
import threading
import time

from sandbox import netns, other_runs_alive, run

DEADLINE = 60.0  # seconds any one thing may take to happen


def id52_of(text):
    return json.loads(text)["id52"]


class Home:
    """A MALAI_HOME with offline network settings (no relays, no
    discovery, a bind address and fixed ports per cluster)."""

    def __init__(self, sb, name, malai, ns, bind, ports=None, dbus="disabled"):
        self.sb, self.name, self.malai, self.ns = sb, name, malai, ns
        self.path = sb.path("homes", name)
        os.makedirs(self.path, mode=0o700)
        self.dbus = dbus
        lines = ["[network]", 'relay = "disabled"', "discovery = false", 'bind = "%s"' % bind]
        if ports:
            lines.append("[network.ports]")
            lines += ["%s = %d" % kv for kv in ports.items()]
        with open(os.path.join(self.path, "malai.toml"), "w") as f:
            f.write("\n".join(lines) + "\n")

    def env(self, dbus=None):
        env = dict(os.environ)
        env.pop("MALAI_LOG", None)
        env["MALAI_HOME"] = self.path
        env["MALAI_DBUS_ADDRESS"] = dbus or self.dbus
        return env

    def argv(self, *args):
        return [self.malai, *args]

    def ok(self, *args):
        """Runs `malai ARGS` here (setup, not timed); its stdout."""
        with netns(self.ns):
            return run(self.argv(*args), env=self.env())

    def cluster_toml(self, cluster):
        return os.path.join(self.path, "clusters", cluster, "cluster.toml")

    def start_daemon(self, dbus=None):
        return Daemon(self, dbus)


class Daemon:
    """`malai daemon` in its home's namespace, with a NOTIFY_SOCKET."""

    def __init__(self, home, dbus=None):
        self.home = home
        sock_path = home.sb.path("notify-%s.sock" % home.name)
        if os.path.exists(sock_path):
            os.unlink(sock_path)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(sock_path)
        self.messages = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()
        self.status = ""
        self.log = home.sb.path("%s.log" % home.name)
        env = home.env(dbus)
        env["NOTIFY_SOCKET"] = sock_path
        with open(self.log, "ab") as log:
            self.started = time.monotonic()
            self.proc = home.sb.spawn(
                "daemon " + home.name,
                home.argv("daemon"),
                ns=home.ns,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.ready_after = None

    def _drain(self):
        """Reads every message as it comes, as systemd does: a daemon
        whose messages are left unread blocks on its next one once the
        socket holds net.unix.max_dgram_qlen of them (10 by default; 512
        where systemd is PID 1), and with it the loop that sends them."""
        while True:
            try:
                msg = self.notify.recv(4096)
            except OSError:
                return
            if not msg:
                return  # shut down by stop()
            self.messages.put(msg.decode(errors="replace"))

    @property
    def pid(self):
        return self.proc.pid

    def wait_notify(self, what, deadline=DEADLINE):
        end = time.monotonic() + deadline
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise RuntimeError(
                    "%s: no %r from the daemon within %ds (last status %r); log: %s"
                    % (self.home.name, what, deadline, self.status, self.log)
                )
            try:
                msg = self.messages.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        "%s: daemon exited (%s) before %r; log: %s"
                        % (self.home.name, self.proc.returncode, what, self.log)
                    )
                continue
            for line in msg.splitlines():
                if line.startswith("STATUS="):
                    self.status = line[len("STATUS="):]
            if what in msg:
                return msg

    def wait_ready(self):
        self.wait_notify("READY=1")
        self.ready_after = time.monotonic() - self.started
        return self

    def wait_status(self, pred, deadline=DEADLINE):
        """Until `pred(status line)` holds; returns the moment it was seen."""
        end = time.monotonic() + deadline
        while not pred(self.status):
            self.wait_notify("STATUS=", max(0.1, end - time.monotonic()))
        return time.monotonic()

    def rss_kib(self, key="VmRSS:"):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
        raise RuntimeError("no %s for pid %d" % (key, self.pid))

    def stop(self):
        self.home.sb.stop(self.proc)
        try:
            self.notify.shutdown(socket.SHUT_RDWR)  # wakes _drain
        except OSError:
            pass
        self.notify.close()


CM_SYNC = re.compile(r"cluster-manager v(\d+), (\d+)/(\d+) machines in sync")


def cm_sync(status):
    """(version, in sync, machines) from a CM's STATUS= line, or None."""
    m = CM_SYNC.search(status)
    return tuple(int(x) for x in m.groups()) if m else None


class PrivateBus:
    """A session-type dbus-daemon on a socket path (reachable from every
    namespace); its pid is the harness's child (--nofork)."""

    def __init__(self, sb):
        path = sb.path("bus")
        self.proc = sb.spawn(
            "dbus-daemon",
            ["dbus-daemon", "--session", "--nofork", "--nopidfile",
             "--address=unix:path=" + path, "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=open(sb.path("dbus-daemon.log"), "ab"),
        )
        self.address = self.proc.stdout.readline().decode().strip()
        if not self.address:
            raise RuntimeError("dbus-daemon printed no address")


SSH_USER = "malai-bench"


class Ssh:
    """Keys, a test user with /bin/sh (no ~/.bashrc to read), sshd config
    files, and an ssh client config with the host key already known."""

    def __init__(self, sb, name="ssh"):
        self.sb, self.name = sb, name
        self.dir = sb.path(name)
        os.makedirs(self.dir)
        os.chmod(self.dir, 0o755)
        self.host_key = os.path.join(self.dir, "host_ed25519")
        self.user_key = os.path.join(self.dir, "id_ed25519")
        for key in (self.host_key, self.user_key):
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "malai-bench", "-f", key])
        self.authorized = os.path.join(self.dir, "authorized_keys")
        with open(self.user_key + ".pub") as src, open(self.authorized, "w") as dst:
            dst.write(src.read())
        os.chmod(self.authorized, 0o644)
        self.known_hosts = os.path.join(self.dir, "known_hosts")
        self.client_config = os.path.join(self.dir, "ssh_config")
        self.hosts = []
        self._user()
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation

    def _user(self):
        home = self.sb.path(self.name + "-home")
        os.makedirs(home)
        try:
            pwd.getpwnam(SSH_USER)
            run(["usermod", "-d", home, "-s", "/bin/sh", "-p", "*", SSH_USER])
            if not other_runs_alive():  # left by a run that was killed: ours now
                self.sb.on_close(lambda: run(["userdel", SSH_USER], check=False))
        except KeyError:
            run(["useradd", "-M", "-d", home, "-s", "/bin/sh", "-p", "*", "-c", "malai benchmark", SSH_USER])
            self.sb.on_close(lambda: run(["userdel", SSH_USER], check=False))
        uid = pwd.getpwnam(SSH_USER)
        os.chown(home, uid.pw_uid, uid.pw_gid)

    def start_sshd(self, name, ns, listen, port):
        config = os.path.join(self.dir, "sshd_config-" + name)
        with open(config, "w") as f:
            f.write(
                "\n".join([
                    "Port %d" % port,
                    "ListenAddress %s" % listen,
                    "HostKey %s" % self.host_key,
                    "AuthorizedKeysFile %s" % self.authorized,
                    "PidFile %s" % os.path.join(self.dir, "sshd-%s.pid" % name),
                    "UsePAM no",
                    "StrictModes no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "AllowUsers " + SSH_USER,
                    "PrintMotd no",
                    "UseDNS no",
                    "MaxStartups 100:30:200",
                    "LogLevel ERROR",
                ]) + "\n"
            )
        run(["/usr/sbin/sshd", "-t", "-f", config])
        log = os.path.join(self.dir, "sshd-%s.log" % name)
        proc = self.sb.spawn("sshd " + name, ["/usr/sbin/sshd", "-D", "-f", config, "-E", log], ns=ns)
        # Listening: sshd has no readiness signal, so its port is polled
        # (a client started at once can find it closed).
        end = time.monotonic() + DEADLINE
        while True:
            with netns(ns):
                try:
                    socket.create_connection((listen, port), timeout=1).close()
                    return proc
                except OSError:
                    pass
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError("sshd %s did not listen on %s:%d; log: %s" % (name, listen, port, log))
            time.sleep(0.05)

    def add_host(self, alias, addr, port):
        """A Host entry `alias` in the client config, its key known."""
        with open(self.host_key + ".pub") as f:
            key = " ".join(f.read().split()[:2])
        with open(self.known_hosts, "a") as f:
            f.write("[%s]:%d %s\n" % (addr, port, key))
        self.hosts.append(
            "Host %s\n  HostName %s\n  Port %d\n  User %s\n  IdentityFile %s\n"
            "  IdentitiesOnly yes\n  UserKnownHostsFile %s\n  StrictHostKeyChecking yes\n"
            "  BatchMode yes\n  LogLevel ERROR\n"
            % (alias, addr, port, SSH_USER, self.user_key, self.known_hosts)
        )
        with open(self.client_config, "w") as f:
            f.write("\n".join(self.hosts))

    def argv(self, alias, *cmd, control=None):
        args = ["ssh", "-F", self.client_config]
        if control:
            args += ["-o", "ControlMaster=no", "-o", "ControlPath=" + control]
        return args + [alias, *cmd]

    def start_master(self, alias, ns):
        """A ControlMaster connection held open by a foreground `ssh -M -N`
        (its pid is ours); returns (process, control path) once usable."""
        control = os.path.join(self.dir, "cm-" + alias)
        proc = self.sb.spawn(
            "ssh master " + alias,
            ["ssh", "-F", self.client_config, "-M", "-N", "-o", "ControlPath=" + control,
             "-o", "ControlPersist=no", alias],
            ns=ns,
        )
        end = time.monotonic() + DEADLINE
        while True:
            with netns(ns):
                ok = subprocess.run(
                    ["ssh", "-F", self.client_config, "-o", "ControlPath=" + control, "-O", "check", alias],
                    capture_output=True,
                ).returncode == 0
            if ok:
                return proc, control
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError("ssh ControlMaster to %s did not come up" % alias)
            time.sleep(0.05)  # polling the control socket: ssh has no readiness signal

    def negotiated(self, alias, ns):
        """The key exchange and cipher a default connection uses."""
        with netns(ns):
            out = subprocess.run(self.argv(alias, "-v", "true"), capture_output=True, text=True)
        kex = re.search(r"kex: algorithm: (\S+)", out.stderr)
        cipher = re.search(r"kex: server->client cipher: (\S+)", out.stderr)
        return {
            "kex": kex.group(1) if kex else "?",
            "cipher": cipher.group(1) if cipher else "?",
        }


class Relay:
    """bench/relay.py in a namespace, controlled over its stdin."""

    def __init__(self, sb, name, ns, args):
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "relay.py")
        self.proc = sb.spawn(
            name, [sys_python(), script, *args], ns=ns,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        line = self.proc.stdout.readline().decode().strip()
        if line != "ready":
            raise RuntimeError("%s did not start: %r" % (name, line))

    def command(self, text):
        self.proc.stdin.write((text + "\n").encode())
        self.proc.stdin.flush()
        return self.proc.stdout.readline().decode().strip()

    def set_delay(self, ms):
        answer = self.command("delay %g" % ms)
        if not answer.startswith("ok"):
            raise RuntimeError("relay: " + answer)

    def stats(self):
        return json.loads(self.command("stats"))


def sys_python():
    import sys
    return sys.executable


def udp_rtt_ms(ns, addr, count=20):
    """Median round trip of a small UDP datagram to the echo at `addr`."""
    samples = []
    with netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(2.0)
        for i in range(count + 2):
            t0 = time.perf_counter()
            s.sendto(b"%d" % i, addr)
            while s.recv(64) != b"%d" % i:
                pass
            if i >= 2:  # the first ones set up the relay's flow
                samples.append((time.perf_counter() - t0) * 1000)
    finally:
        s.close()
    samples.sort()
    return samples[len(samples) // 2]
