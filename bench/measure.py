"""The four measurements: exec latency (cold and warm, at added delays),
throughput both ways, config fan-out, and daemon footprint. Each builds
its hosts in the sandbox, measures, and stops what it started.

Variants run interleaved (one run of each in turn) so that noise from the
shared machine falls on all of them alike.
"""

import os
import shlex
import subprocess
import time

from hosts import Home, PrivateBus, Relay, Ssh, cm_sync, id52_of, udp_rtt_ms
from sandbox import netns

# The exec topology: laptop (the cluster manager, and the client) reaches
# web01 only through the relay in `mid` (ip_forward 0 there), and web02 on a
# direct link, for throughput (a userspace relay would be the bottleneck).
LAP_MID, MID_LAP = "10.201.2.1", "10.201.2.2"
MID_SRV, SRV = "10.201.3.1", "10.201.3.2"
LAP_DIRECT, SRV_DIRECT = "10.201.1.1", "10.201.1.2"
CM_PORT, WEB01_PORT, WEB02_PORT, SSH_PORT, ECHO_PORT = 7700, 7701, 7702, 2222, 7777

LATENCY_VARIANTS = ["malai cold", "ssh cold", "malai warm", "ssh warm"]
FAN_SSH_PORT = 2222
THROUGHPUT_VARIANTS = ["ssh", "malai direct", "malai daemon"]


def timed(argv, env, ns, timeout=120):
    """Wall time of one command run to completion in namespace `ns`, in ms;
    fails on a non-zero exit."""
    with netns(ns):
        t0 = time.perf_counter()
        p = subprocess.run(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, timeout=timeout,
        )
        elapsed = (time.perf_counter() - t0) * 1000
    if p.returncode != 0:
        raise RuntimeError("%s exited %d: %s" % (" ".join(argv), p.returncode, p.stderr.decode(errors="replace")))
    return elapsed


class ExecSetup:
    """Namespaces, relay, sshd, private bus, the CM (laptop) and two
    machines, in sync; the ssh ControlMaster and the daemon's pooled
    connection are opened on first use."""

    def __init__(self, sb, malai, log):
        self.sb, self.log = sb, log
        lap, mid = sb.namespace("lap"), sb.namespace("mid")
        srvl, srvt = sb.namespace("srvl"), sb.namespace("srvt")
        self.lap = lap
        sb.link(lap, LAP_MID, mid, MID_LAP)
        sb.link(mid, MID_SRV, srvl, SRV)
        sb.link(lap, LAP_DIRECT, srvt, SRV_DIRECT)

        self.relay = Relay(sb, "relay", mid, [
            "relay",
            "--udp", "%s:%d=%s:%d" % (MID_LAP, WEB01_PORT, SRV, WEB01_PORT),   # laptop -> web01
            "--udp", "%s:%d=%s:%d" % (MID_SRV, CM_PORT, LAP_MID, CM_PORT),     # web01 -> its CM
            "--udp", "%s:%d=%s:%d" % (MID_LAP, ECHO_PORT, SRV, ECHO_PORT),     # RTT probe
            "--tcp", "%s:%d=%s:%d" % (MID_LAP, SSH_PORT, SRV, SSH_PORT),       # ssh
        ])
        self.echo = Relay(sb, "udp echo", srvl, ["echo", "%s:%d" % (SRV, ECHO_PORT)])

        self.ssh = Ssh(sb)
        self.sshd = [
            self.ssh.start_sshd("srvl", srvl, SRV, SSH_PORT),
            self.ssh.start_sshd("srvt", srvt, SRV_DIRECT, SSH_PORT),
        ]
        self.ssh.add_host("lat", MID_LAP, SSH_PORT)
        self.ssh.add_host("thr", SRV_DIRECT, SSH_PORT)

        self.bus = PrivateBus(sb)
        cm = Home(sb, "laptop", malai, lap, "0.0.0.0", {"bench": CM_PORT})
        web01 = Home(sb, "web01", malai, srvl, SRV, {"bench": WEB01_PORT})
        web02 = Home(sb, "web02", malai, srvt, SRV_DIRECT, {"bench": WEB02_PORT})
        self.cm = cm
        cm_id = id52_of(cm.ok("cluster", "init", "bench", "--json"))
        ids = {}
        for home, cm_addr in ((web01, "%s:%d" % (MID_SRV, CM_PORT)), (web02, "%s:%d" % (LAP_DIRECT, CM_PORT))):
            ids[home.name] = id52_of(home.ok(
                "machine", "init", cm_id, "bench", "--cm-addr", cm_addr, "--name", home.name, "--json"))
        with open(cm.cluster_toml("bench"), "w") as f:
            f.write(
                '[cluster-manager]\nid52 = "%s"\nconfig_editors = ""\n\n'
                '[machine.web01]\nid52 = "%s"\naddrs = ["%s:%d"]   # through the delay relay\nallow_from = "%s"\n\n'
                '[machine.web02]\nid52 = "%s"\naddrs = ["%s:%d"]   # direct link\nallow_from = "%s"\n'
                % (cm_id, ids["web01"], MID_LAP, WEB01_PORT, cm_id, ids["web02"], SRV_DIRECT, WEB02_PORT, cm_id)
            )
        self.daemons = [web01.start_daemon(), web02.start_daemon()]
        for d in self.daemons:
            d.wait_ready()
        self.cm_daemon = cm.start_daemon(dbus=self.bus.address).wait_ready()
        self.daemons.append(self.cm_daemon)
        self.cm_daemon.wait_status(lambda s: (cm_sync(s) or (0, 0, 1))[1:] == (2, 2))
        log("exec hosts up: %s" % self.cm_daemon.status)

        self.cold_env = cm.env()
        self.warm_env = cm.env(self.bus.address)
        self.master = None

    def check_routes(self):
        """The CLI says which route it took (-v): make sure each variant
        takes the one it is named for."""
        for env, want in ((self.cold_env, "going directly"), (self.warm_env, "through the daemon")):
            with netns(self.lap):
                p = subprocess.run(self.cm.argv("-v", "web01.bench", "true"), env=env,
                                   capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if p.returncode != 0 or want not in p.stderr:
                raise RuntimeError("malai did not go %r (exit %d): %s" % (want, p.returncode, p.stderr))

    def latency_argv(self, variant):
        if variant == "malai cold":
            return self.cm.argv("web01.bench", "true"), self.cold_env
        if variant == "malai warm":
            return self.cm.argv("web01.bench", "true"), self.warm_env
        if variant == "ssh cold":
            return self.ssh.argv("lat", "true"), None
        if self.master is None:
            self.master = self.ssh.start_master("lat", self.lap)
        return self.ssh.argv("lat", "true", control=self.master[1]), None

    def tool_argv(self, variant, *cmd):
        """argv and env to run `cmd` on the throughput host (web02/thr)."""
        if variant == "ssh":
            return self.ssh.argv("thr", *cmd), None
        env = self.cold_env if variant == "malai direct" else self.warm_env
        return self.cm.argv("web02.bench", *cmd), env

    def stop(self):
        procs = [d.proc for d in self.daemons] + self.sshd + [self.bus.proc, self.relay.proc, self.echo.proc]
        if self.master:
            procs.insert(0, self.master[0])
        self.sb.stop_all(procs)


def latency(setup, delays, runs, warmup, log):
    setup.check_routes()
    out = []
    for delay in delays:
        setup.relay.set_delay(delay)
        rtt = udp_rtt_ms(setup.lap, (MID_LAP, ECHO_PORT))
        samples = {v: [] for v in LATENCY_VARIANTS}
        # Each pair that is compared runs interleaved, the order swapped
        # every run; the cold pair first, then the warm pair. A warm run
        # right after a cold one (either tool's) came out 1.5-2 ms slower
        # than alone, and with all four in turn malai's warm run always
        # followed ssh's cold one while ssh's warm run did not.
        for pair in (("malai cold", "ssh cold"), ("malai warm", "ssh warm")):
            for i in range(warmup + runs):
                for v in (pair if i % 2 == 0 else pair[::-1]):
                    argv, env = setup.latency_argv(v)
                    t = timed(argv, env, setup.lap)
                    if i >= warmup:
                        samples[v].append(t)
        rtt_after = udp_rtt_ms(setup.lap, (MID_LAP, ECHO_PORT))
        out.append({"delay_ms": delay, "rtt_ms": (rtt + rtt_after) / 2, "samples": samples})
        log("latency at %g ms one-way (RTT %.2f ms): %s" % (
            delay, rtt, ", ".join("%s %.1f ms" % (v, median(s)) for v, s in samples.items())))
    stats = setup.relay.stats()
    log("relay forwarded: %s" % stats)
    return out


def _cpu_ticks(pid):
    """utime + stime + cutime + cstime of a process, in clock ticks: its own
    CPU and that of the children it reaped (sshd's per-connection
    processes, the daemons' remote commands)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15])


TICK = os.sysconf("SC_CLK_TCK")


def _wait_rusage(p):
    """Waits for `p`; its CPU seconds (user + system)."""
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return ru.ru_utime + ru.ru_stime


def _pipeline(first, second, ns, tool):
    """`first | second`, both started in `ns`, where `tool` (0 or 1) is the
    malai or ssh client; (ms, second's stdout, the client's CPU seconds)."""
    argv1, env1 = first
    argv2, env2 = second
    with netns(ns):
        t0 = time.perf_counter()
        p1 = subprocess.Popen(argv1, env=env1, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        p2 = subprocess.Popen(argv2, env=env2, stdin=p1.stdout, stdout=subprocess.PIPE)
        p1.stdout.close()
        out = p2.stdout.read()
        cpu = [_wait_rusage(p1), _wait_rusage(p2)]
        elapsed = (time.perf_counter() - t0) * 1000
    if p1.returncode or p2.returncode:
        raise RuntimeError("%s | %s failed (%s, %s)" % (argv1, argv2, p1.returncode, p2.returncode))
    return elapsed, out.decode().strip(), cpu[tool]


def throughput(setup, size, runs, log):
    """`head -c SIZE /dev/zero` down (remote stdout into local `wc -c`) and
    up (local head into remote `wc -c`), each checked for the byte count;
    plus the time of `true` on the same path (connection set-up). CPU:
    the client process, plus the server side (the sshd listener or web02's
    daemon, with the children they reaped) and, through the daemon, the
    local daemon that carries the connection."""
    samples = {"download": {v: [] for v in THROUGHPUT_VARIANTS},
               "upload": {v: [] for v in THROUGHPUT_VARIANTS},
               "setup": {v: [] for v in THROUGHPUT_VARIANTS}}
    cpu = {d: {v: [] for v in THROUGHPUT_VARIANTS} for d in ("download", "upload")}
    head = ["head", "-c", str(size), "/dev/zero"]
    wc = ["wc", "-c"]
    servers = {"ssh": [setup.sshd[1].pid], "malai direct": [setup.daemons[1].pid],
               "malai daemon": [setup.daemons[1].pid, setup.cm_daemon.pid]}
    for v in THROUGHPUT_VARIANTS:  # warm-up: the daemon's pooled connection, page cache
        argv, env = setup.tool_argv(v, "true")
        timed(argv, env, setup.lap)
    for i in range(runs):
        for v in THROUGHPUT_VARIANTS:
            argv, env = setup.tool_argv(v, "true")
            samples["setup"][v].append(timed(argv, env, setup.lap))
            for d in ("download", "upload"):
                before = sum(_cpu_ticks(pid) for pid in servers[v])
                if d == "download":
                    t, n, client = _pipeline(setup.tool_argv(v, *head), (wc, None), setup.lap, 0)
                else:
                    t, n, client = _pipeline((head, None), setup.tool_argv(v, *wc), setup.lap, 1)
                time.sleep(0.2)  # let sshd reap its session process
                server = (sum(_cpu_ticks(pid) for pid in servers[v]) - before) / TICK
                if int(n.split()[0]) != size:
                    raise RuntimeError("%s %s: %s bytes, not %d" % (v, d, n, size))
                samples[d][v].append(t)
                cpu[d][v].append(client + server)
        log("throughput run %d/%d: %s" % (i + 1, runs, ", ".join(
            "%s %s %.0f MB/s (%.1f CPU s)" % (v, d, size / samples[d][v][-1] / 1000, cpu[d][v][-1])
            for d in ("download", "upload") for v in THROUGHPUT_VARIANTS)))
    return {"bytes": size, "samples": samples, "cpu_seconds": cpu}


def fanout(sb, malai, scales, runs, log):
    """A CM and max(scales) machine daemons in one namespace (loopback,
    one port each). For each scale N, cluster.toml lists N machines; each
    run times `malai rescan` on the CM until its STATUS= line says all N
    acknowledged the new version: once right after the CM daemon restarted
    (cold: every push dials a new connection) and once more (warm: the
    pooled connections). Then one command on the N machines: `malai
    @all.fleet true` from the CM through its daemon (the machines allow the
    CM's key), beside the same over ssh to N host aliases of one sshd: a
    shell loop over one ControlMaster each, and Debian's parallel-ssh (new
    connections, 32 at once, as malai's -j)."""
    ns = sb.namespace("fan")
    top = max(scales)
    cm = Home(sb, "fan-cm", malai, ns, "127.0.0.1", {"fleet": 7800})
    cm_id = id52_of(cm.ok("cluster", "init", "fleet", "--json"))
    machines = []
    for i in range(1, top + 1):
        h = Home(sb, "m%03d" % i, malai, ns, "127.0.0.1", {"fleet": 7800 + i})
        mid = id52_of(h.ok("machine", "init", cm_id, "fleet", "--cm-addr", "127.0.0.1:7800",
                           "--name", h.name, "--json"))
        machines.append((h, mid))
    edit = [0]

    def write_toml(n):
        edit[0] += 1
        parts = ['# fan-out benchmark, edit %d\n[cluster-manager]\nid52 = "%s"\nconfig_editors = ""\n' % (edit[0], cm_id)]
        for i, (h, mid) in enumerate(machines[:n]):
            parts.append('[machine.%s]\nid52 = "%s"\naddrs = ["127.0.0.1:%d"]\nallow_from = "%s"\n'
                         % (h.name, mid, 7801 + i, cm_id))
        with open(cm.cluster_toml("fleet"), "w") as f:
            f.write("\n".join(parts))

    def synced(n, above=0):
        return lambda s: (lambda t: t is not None and t[0] > above and t[1] == n and t[2] == n)(cm_sync(s))

    write_toml(min(scales))
    bus = PrivateBus(sb)
    cm_daemon = cm.start_daemon(dbus=bus.address).wait_ready()
    t0 = time.monotonic()
    daemons = [h.start_daemon() for h, _ in machines]
    for d in daemons:
        d.wait_ready()
    log("fan-out: %d machine daemons ready in %.1f s" % (top, time.monotonic() - t0))

    def rescan_until_synced(n):
        version = cm_sync(cm_daemon.status)[0]
        write_toml(n)
        t0 = time.monotonic()
        cm.ok("rescan")
        cli = time.monotonic() - t0
        t1 = cm_daemon.wait_status(synced(n, version))
        return (t1 - t0) * 1000, cli * 1000

    out = {}
    for n in scales:
        rescan_until_synced(n)  # the new machines get their first config
        cold, warm, cli = [], [], []
        for _ in range(runs):
            cm_daemon.stop()
            cm_daemon = cm.start_daemon(dbus=bus.address).wait_ready()
            cm_daemon.wait_status(synced(n))
            t, c = rescan_until_synced(n)
            cold.append(t)
            cli.append(c)
            t, c = rescan_until_synced(n)
            warm.append(t)
            cli.append(c)
        out[str(n)] = {"cold": cold, "warm": warm, "rescan_cli": cli}
        log("fan-out to %d: cold %.0f ms, warm %.0f ms (medians)" % (n, median(cold), median(warm)))
    ssh = Ssh(sb, "ssh-fan")
    sshd = ssh.start_sshd("fan", ns, "127.0.0.1", FAN_SSH_PORT)
    aliases = ["h%03d" % i for i in range(1, top + 1)]
    for a in aliases:
        ssh.add_host(a, "127.0.0.1", FAN_SSH_PORT)
    masters = [ssh.start_master(a, ns) for a in aliases]
    hosts_file = sb.path("pssh-hosts")
    for n in scales:
        with open(hosts_file, "w") as f:
            f.write("\n".join(aliases[:n]) + "\n")
        write_toml(n)
        cm.ok("rescan")
        cm_daemon.wait_status(synced(n))
        variants = {
            "malai @all (daemon)": (cm.argv("@all.fleet", "true"), cm.env(bus.address)),
            "ssh loop (ControlMaster)": (["sh", "-c", " && ".join(
                shlex.join(ssh.argv(a, "true", control=c)) for a, (_, c) in zip(aliases[:n], masters[:n]))], None),
            "parallel-ssh": (["parallel-ssh", "-h", hosts_file, "-p", "32", "-t", "0",
                              "-x", "-F %s" % ssh.client_config, "true"], None),
        }
        samples = {v: [] for v in variants}
        for v, (argv, env) in variants.items():
            timed(argv, env, ns)  # warm-up: pooled connections, cached keys
            for _ in range(runs):
                samples[v].append(timed(argv, env, ns))
        out[str(n)]["exec"] = samples
        log("exec on %d: %s (medians)" % (n, ", ".join("%s %.0f ms" % (v, median(x)) for v, x in samples.items())))
    sb.stop_all([p for p, _ in masters] + [sshd] + [d.proc for d in daemons] + [cm_daemon.proc, bus.proc])
    return out


def footprint(sb, malai, counts, runs, log):
    """One daemon with K cluster identities (each a cluster manager with an
    empty cluster: an idle listener): time from exec to READY=1, and its
    RSS at READY and one second later."""
    ns = sb.namespace("foot")
    out = {}
    for k in counts:
        home = Home(sb, "ids%d" % k, malai, ns, "127.0.0.1")
        for i in range(1, k + 1):
            home.ok("cluster", "init", "c%d" % i, "--json")
        r = {"ready_ms": [], "rss_kib": [], "rss_settled_kib": [], "hwm_kib": []}
        for _ in range(runs):
            d = home.start_daemon().wait_ready()
            r["ready_ms"].append(d.ready_after * 1000)
            r["rss_kib"].append(d.rss_kib())
            time.sleep(1.0)  # settle: what a long-running idle daemon holds
            r["rss_settled_kib"].append(d.rss_kib())
            r["hwm_kib"].append(d.rss_kib("VmHWM:"))
            d.stop()
        out[str(k)] = r
        log("footprint with %d identities: READY %.0f ms, RSS %.1f MB (settled %.1f MB)" % (
            k, median(r["ready_ms"]), median(r["rss_kib"]) / 1024, median(r["rss_settled_kib"]) / 1024))
    return out


def sshd_rss_kib(setup):
    with open("/proc/%d/status" % setup.sshd[0].pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def median(xs):
    s = sorted(xs)
    n = len(s)
    if n == 0:
        return float("nan")
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def machine_info():
    def read(path):
        try:
            with open(path) as f:
                return f.read()
        except OSError:
            return ""
    cpu = next((l.split(":", 1)[1].strip() for l in read("/proc/cpuinfo").splitlines()
                if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) for l in read("/proc/meminfo").splitlines()
                if l.startswith("MemTotal:")), 0)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem / 1024 / 1024),
        "kernel": os.uname().release,
        "os": next((l.split("=", 1)[1].strip('"') for l in read("/etc/os-release").splitlines()
                    if l.startswith("PRETTY_NAME=")), "?"),
    }
