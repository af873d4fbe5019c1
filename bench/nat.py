"""Through NAT and the company's own relay: the laptop (the cluster manager,
and the client) behind an ordinary NAT; web01 behind another ordinary NAT
(its paths go direct by hole punching); web02 behind a hard NAT (a random
port per destination: its paths stay on the relay). The relay is
iroh-relay's server (examples/lab_relay, TLS from a CA made here, QUIC
address discovery). Nothing but the relay's URL and CA is configured: no
address, discovery off. ssh cannot reach across these NATs at all without a
port forward on the router, so there is no ssh column here.

Cold: a new CLI endpoint per command (the laptop's daemon stopped, so no
second endpoint of its id52 is on the relay). Warm: through the laptop's
daemon and its pooled connection, after its path to web01 went direct.
"""

import json
import os
import subprocess

from hosts import Home, PrivateBus, cm_sync, id52_of
from measure import _pipeline, median, timed
from sandbox import netns, run

RELAY_IP = "203.0.113.10"
RELAY_URL = "https://%s:3443" % RELAY_IP
PORT = 7700
TARGETS = {"web01": "direct", "web02": "relay"}


class NatLab:
    """Namespaces, routers, the relay, and a cluster `bench` in sync."""

    def __init__(self, sb, malai, lab_relay, log):
        self.sb, self.log, self.malai = sb, log, malai
        inet = sb.namespace("ninet")  # "n": no clash with other phases' roles
        run(["ip", "-n", inet, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", inet, "link", "set", "br0", "up"])
        self.inet = inet
        relay_ns = sb.namespace("nrelay")
        self._wire(relay_ns, "eth0", "vrelay", RELAY_IP)
        pki = self._pki()
        self.relay = sb.spawn("iroh relay", [
            lab_relay, "--http", RELAY_IP + ":3340", "--https", RELAY_IP + ":3443",
            "--quic", RELAY_IP + ":7842", "--cert", pki["relay.pem"], "--key", pki["relay.key"],
        ], ns=relay_ns, stdout=subprocess.PIPE)
        if self.relay.stdout.readline().decode().strip() != "ready":
            raise RuntimeError("the lab relay did not start")
        self.ca = pki["ca.pem"]

        self.lap = self._home_net("nlap", 1, hard=False)
        srvb = self._home_net("nsrvb", 2, hard=False)
        srvc = self._home_net("nsrvc", 3, hard=True)
        self.bus = PrivateBus(sb)
        self.cm = self._home("nat-laptop", self.lap)
        web01 = self._home("nat-web01", srvb)
        web02 = self._home("nat-web02", srvc)
        cm_id = id52_of(self.cm.ok("cluster", "init", "bench", "--json"))
        ids = {h.name: id52_of(h.ok("machine", "init", cm_id, "bench", "--relay", RELAY_URL,
                                    "--relay-ca", self.ca, "--name", h.name[4:], "--json"))
               for h in (web01, web02)}
        with open(self.ca) as f:
            pem = f.read()
        with open(self.cm.cluster_toml("bench"), "w") as f:
            f.write(
                "[network]\nrelay = \"%s\"\nrelay_ca = '''\n%s'''\n\n"
                '[cluster-manager]\nid52 = "%s"\nconfig_editors = ""\n\n'
                '[machine.web01]\nid52 = "%s"\nallow_from = "%s"\n\n'
                '[machine.web02]\nid52 = "%s"\nallow_from = "%s"\n'
                % (RELAY_URL, pem, cm_id, ids["nat-web01"], cm_id, ids["nat-web02"], cm_id))
        self.machines = [web01.start_daemon(), web02.start_daemon()]
        for d in self.machines:
            d.wait_ready()
        self.cm_daemon = self.cm.start_daemon(dbus=self.bus.address).wait_ready()
        self.cm_daemon.wait_status(lambda s: (cm_sync(s) or (0, 0, 1))[1:] == (2, 2))
        log("nat: hosts up behind their routers: %s" % self.cm_daemon.status)
        self.cold_env = self.cm.env()
        self.warm_env = self.cm.env(self.bus.address)

    def _wire(self, ns, inside, hub_side, addr):
        run(["ip", "-n", self.inet, "link", "add", hub_side, "type", "veth", "peer", "name", inside,
             "netns", ns])
        run(["ip", "-n", self.inet, "link", "set", hub_side, "master", "br0", "up"])
        run(["ip", "-n", ns, "addr", "add", addr + "/24", "dev", inside])
        run(["ip", "-n", ns, "link", "set", inside, "up"])

    def _pki(self):
        d = self.sb.path("pki")
        os.makedirs(d)
        p = {f: os.path.join(d, f) for f in ("ca.key", "ca.pem", "relay.key", "relay.csr", "relay.pem",
                                            "relay.ext")}
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        run(["openssl", "req", "-x509", *ec, "-keyout", p["ca.key"], "-out", p["ca.pem"], "-days", "2",
             "-subj", "/CN=malai bench CA"])
        run(["openssl", "req", *ec, "-keyout", p["relay.key"], "-out", p["relay.csr"], "-subj", "/CN=relay"])
        with open(p["relay.ext"], "w") as f:
            f.write("basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:%s\n" % RELAY_IP)
        run(["openssl", "x509", "-req", "-in", p["relay.csr"], "-CA", p["ca.pem"], "-CAkey", p["ca.key"],
             "-CAcreateserial", "-out", p["relay.pem"], "-days", "2", "-extfile", p["relay.ext"]])
        return p

    def _home_net(self, name, n, hard):
        """A router doing NAT (masquerade out; inbound dropped at FORWARD
        and INPUT except replies; `hard`: a random port per destination)
        and a host namespace behind it."""
        router, host = self.sb.namespace("r" + name), self.sb.namespace(name)
        self._wire(router, "w0", "w" + name, "203.0.113.%d" % (100 + n))
        run(["ip", "-n", router, "link", "add", "l0", "type", "veth", "peer", "name", "eth0", "netns", host])
        run(["ip", "-n", router, "addr", "add", "192.168.%d.1/24" % n, "dev", "l0"])
        run(["ip", "-n", router, "link", "set", "l0", "up"])
        run(["ip", "-n", host, "addr", "add", "192.168.%d.2/24" % n, "dev", "eth0"])
        run(["ip", "-n", host, "link", "set", "eth0", "up"])
        run(["ip", "-n", host, "route", "add", "default", "via", "192.168.%d.1" % n])
        run(["ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        rules = (
            "table ip nat {\n chain post {\n  type nat hook postrouting priority 100\n"
            "  oifname \"w0\" masquerade%s\n }\n}\n"
            "table ip filter {\n chain forward {\n  type filter hook forward priority 0; policy drop\n"
            "  ct state established,related accept\n  iifname \"l0\" oifname \"w0\" accept\n }\n"
            " chain input {\n  type filter hook input priority 0; policy accept\n"
            "  ct state established,related accept\n  iifname \"w0\" drop\n }\n}\n"
        ) % (" fully-random" if hard else "")
        run(["ip", "netns", "exec", router, "nft", "-f", "-"], input=rules)
        return host

    def _home(self, name, ns):
        """A home whose malai.toml sets only discovery off and the port:
        the relay comes from the cluster."""
        h = Home(self.sb, name, self.malai, ns, "0.0.0.0")
        with open(os.path.join(h.path, "malai.toml"), "w") as f:
            f.write("[network]\ndiscovery = false\n[network.ports]\nbench = %d\n" % PORT)
        return h

    def peers(self):
        """The CM daemon's view of its peers: {alias: (path, rtt_ms)}."""
        with netns(self.lap):
            out = run(self.cm.argv("status", "--json"), env=self.warm_env)
        peers = json.loads(out)["clusters"][0].get("peers") or []
        return {p.get("alias"): (p["path"], p.get("rtt_ms")) for p in peers}

    def stop(self):
        self.sb.stop_all([d.proc for d in self.machines] + [self.cm_daemon.proc, self.bus.proc, self.relay])


def nat(sb, malai, lab_relay, runs, size, log):
    lab = NatLab(sb, malai, lab_relay, log)
    try:
        return _measure(lab, runs, size, log)
    finally:
        lab.stop()


def _measure(lab, runs, size, log):
    argv = {t: lab.cm.argv("%s.bench" % t, "true") for t in TARGETS}
    # Warm: the daemon's pooled connections, until web01's path is direct.
    for _ in range(200):
        for t in TARGETS:
            timed(argv[t], lab.warm_env, lab.lap)
        paths = lab.peers()
        if paths.get("web01", ("",))[0] == "direct" and paths.get("web02", ("",))[0] == "relay":
            break
    else:
        raise RuntimeError("nat: paths never settled: %s" % lab.peers())
    paths = lab.peers()
    log("nat: paths %s" % paths)
    warm = {t: [] for t in TARGETS}
    for _ in range(runs):
        for t in TARGETS:
            warm[t].append(timed(argv[t], lab.warm_env, lab.lap))
    tp = {t: {"download": [], "upload": []} for t in TARGETS}
    head = ["head", "-c", str(size), "/dev/zero"]
    for t in TARGETS:
        for _ in range(max(1, runs // 10)):
            down = (lab.cm.argv("%s.bench" % t, *head), lab.warm_env)
            ms, n, _ = _pipeline(down, (["wc", "-c"], None), lab.lap, 0)
            if int(n.split()[0]) != size:
                raise RuntimeError("nat %s download: %s bytes" % (t, n))
            tp[t]["download"].append(ms)
            up = (lab.cm.argv("%s.bench" % t, "wc", "-c"), lab.warm_env)
            ms, n, _ = _pipeline((head, None), up, lab.lap, 1)
            if int(n.split()[0]) != size:
                raise RuntimeError("nat %s upload: %s bytes" % (t, n))
            tp[t]["upload"].append(ms)
    # Cold: the laptop's daemon stopped, a fresh CLI endpoint per command.
    lab.sb.stop(lab.cm_daemon.proc)
    cold = {t: [] for t in TARGETS}
    for _ in range(runs):
        for t in TARGETS:
            cold[t].append(timed(argv[t], lab.cold_env, lab.lap))
    log("nat: %s" % ", ".join("%s (%s) cold %.1f ms, warm %.1f ms" % (
        t, TARGETS[t], median(cold[t]), median(warm[t])) for t in TARGETS))
    return {"bytes": size, "cold": cold, "warm": warm, "throughput": tp,
            "paths": {t: paths.get(t, ("?", None))[0] for t in TARGETS},
            "rtt_ms": {t: paths.get(t, ("?", None))[1] for t in TARGETS}}
