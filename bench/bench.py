#!/usr/bin/env python3
"""malai against OpenSSH, side by side: exec latency (cold, warm, at added
network delay), throughput both ways, config fan-out and daemon footprint.
Run through bench/run (which installs what is missing and builds malai);
see docs/BENCHMARKS.md for what is measured and how to read it.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import threading
import time

import measure
import nat
import report
from sandbox import Sandbox, remove_stale

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ["footprint", "latency", "throughput", "fanout", "nat"]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="one quick pass with small sizes (CI): checks the harness, not the numbers")
    p.add_argument("--malai", default=os.path.join(ROOT, "target", "release", "malai"),
                   help="the malai binary (default: the release build)")
    p.add_argument("--out", help="where BENCHMARKS.md, benchmarks.json and the plot go "
                   "(default: docs/, or target/bench-smoke/ with --smoke)")
    p.add_argument("--phases", default=",".join(PHASES),
                   help="comma-separated subset of %s; results of the others are kept" % ",".join(PHASES))
    p.add_argument("--runs", type=int, help="runs per latency figure (default 30; smoke 2)")
    p.add_argument("--delays", help="one-way delays in ms (default 0,10,25; smoke 0,10)")
    p.add_argument("--size", type=int, help="throughput bytes (default 1 GiB; smoke 8 MiB)")
    p.add_argument("--tp-runs", type=int, help="throughput runs (default 5; smoke 1)")
    p.add_argument("--fanout", help="machine counts (default 10,100,300; smoke 3)")
    p.add_argument("--fanout-runs", type=int, help="fan-out runs per count (default 5; smoke 1)")
    p.add_argument("--identities", help="identity counts (default 1,10,50; smoke 1,3)")
    p.add_argument("--footprint-runs", type=int, help="daemon starts per count (default 5; smoke 1)")
    p.add_argument("--lab-relay", help="the lab relay (default: examples/lab_relay beside the malai binary)")
    p.add_argument("--nat-size", type=int, help="throughput bytes through NAT (default 256 MiB; smoke 4 MiB)")
    p.add_argument("--keep", action="store_true", help="keep the run directory (homes, logs)")
    p.add_argument("--report-only", action="store_true",
                   help="measure nothing: regenerate BENCHMARKS.md and the plot from benchmarks.json")
    a = p.parse_args(argv)
    smoke = a.smoke

    def ints(text, default):
        return [int(x) for x in (text or default).split(",")]

    a.runs = a.runs or (2 if smoke else 30)
    a.delays = [float(x) for x in (a.delays or ("0,10" if smoke else "0,10,25")).split(",")]
    a.size = a.size or ((8 << 20) if smoke else (1 << 30))
    a.tp_runs = a.tp_runs or (1 if smoke else 5)
    a.fanout = ints(a.fanout, "3" if smoke else "10,100,300")
    a.fanout_runs = a.fanout_runs or (1 if smoke else 5)
    a.identities = ints(a.identities, "1,3" if smoke else "1,10,50")
    a.footprint_runs = a.footprint_runs or (1 if smoke else 5)
    a.nat_size = a.nat_size or ((4 << 20) if smoke else (256 << 20))
    a.lab_relay = a.lab_relay or os.path.join(os.path.dirname(a.malai), "examples", "lab_relay")
    a.out = a.out or (os.path.join(ROOT, "target", "bench-smoke") if smoke else os.path.join(ROOT, "docs"))
    a.phases = [x for x in a.phases.split(",") if x]
    for ph in a.phases:
        if ph not in PHASES:
            p.error("unknown phase %r" % ph)
    return a


class BusyWatch:
    """Notes whether compilers ran on this (shared) machine during the run:
    their CPU use shows in every figure."""

    def __init__(self):
        self.seen = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        with open("/proc/%s/comm" % pid) as f:
                            comm = f.read().strip()
                    except OSError:
                        continue
                    if comm in ("rustc", "cc1", "cc1plus", "ld", "cargo"):
                        self.seen.add(comm)
            self.stop.wait(2.0)


def version_of(argv):
    try:
        p = subprocess.run(argv, capture_output=True, text=True)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except (OSError, IndexError):
        return "?"


def malai_version(malai):
    v = version_of([malai, "--version"])
    commit = version_of(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
                           capture_output=True, text=True).stdout.strip()
    return "%s, commit %s%s" % (v, commit, " with local changes" if dirty else "")


def main(argv):
    a = parse_args(argv)
    if os.geteuid() != 0 and not a.report_only:
        print("bench: needs root (network namespaces, sshd, a test user)", file=sys.stderr)
        return 1
    if not os.access(a.malai, os.X_OK) and not a.report_only:
        print("bench: no malai binary at %s (cargo build --release)" % a.malai, file=sys.stderr)
        return 1
    os.makedirs(a.out, exist_ok=True)
    started = time.monotonic()
    if a.report_only:
        with open(os.path.join(a.out, "benchmarks.json")) as f:
            res = json.load(f)
        write_report(res, a.out)
        return 0

    def log(msg):
        print("bench [%5.1fs] %s" % (time.monotonic() - started, msg), file=sys.stderr, flush=True)

    json_path = os.path.join(a.out, "benchmarks.json")
    res = {}
    if set(a.phases) != set(PHASES) and os.path.exists(json_path):
        with open(json_path) as f:
            res = json.load(f)  # a partial run keeps the other phases' results

    remove_stale()
    busy = BusyWatch()
    load_start = "%.2f" % os.getloadavg()[0]
    sb = Sandbox(keep=a.keep)
    try:
        profile = "release" if "/release/" in a.malai else "debug" if "/debug/" in a.malai else "given"
        meta = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "malai_version": malai_version(a.malai),
            "profile": profile,
            "ssh_version": version_of(["ssh", "-V"]).split(",")[0],
            "machine": measure.machine_info(),
            "command": "bench/run " + " ".join(argv) if argv else "bench/run",
            "ssh": res.get("meta", {}).get("ssh", {"kex": "?", "cipher": "?"}),
        }
        if "footprint" in a.phases:
            log("footprint: %s identities" % a.identities)
            res["footprint"] = measure.footprint(sb, a.malai, a.identities, a.footprint_runs, log)
        if "latency" in a.phases or "throughput" in a.phases:
            setup = measure.ExecSetup(sb, a.malai, log)
            meta["ssh"] = setup.ssh.negotiated("lat", setup.lap)
            res["sshd_rss_kib"] = measure.sshd_rss_kib(setup)
            if "latency" in a.phases:
                log("latency: delays %s ms, %d runs" % (a.delays, a.runs))
                res["latency"] = measure.latency(setup, a.delays, a.runs, 2 if a.smoke else 3, log)
            if "throughput" in a.phases:
                log("throughput: %d bytes, %d runs" % (a.size, a.tp_runs))
                res["throughput"] = measure.throughput(setup, a.size, a.tp_runs, log)
            setup.stop()
        if "fanout" in a.phases:
            log("fan-out: %s machines" % a.fanout)
            res["fanout"] = measure.fanout(sb, a.malai, a.fanout, a.fanout_runs, log)
        if "nat" in a.phases:
            log("nat: through NAT routers and the company's relay, %d runs" % a.runs)
            res["nat"] = nat.nat(sb, a.malai, a.lab_relay, a.runs, a.nat_size, log)
    finally:
        sb.close()
        busy.stop.set()
    meta["load_start"] = load_start
    meta["load_end"] = "%.2f" % os.getloadavg()[0]
    meta["busy"] = ", ".join(sorted(busy.seen))
    res["meta"] = meta

    with open(json_path, "w") as f:
        json.dump(res, f, indent=1, sort_keys=True)
        f.write("\n")
    write_report(res, a.out)
    log("done in %.0f s" % (time.monotonic() - started))
    return 0


def write_report(res, out):
    plot_name = report.PLOT if report.plot(res, os.path.join(out, report.PLOT)) else None
    doc = os.path.join(out, "BENCHMARKS.md")
    report.write_doc(res, doc, plot_name)
    for measure, floor, target, value, held, met in report.targets(res):
        print("bench: %s: %s; must hold %s: %s; target %s: %s" % (
            measure, value, floor, held.replace("*", ""), target, met.replace("*", "")), file=sys.stderr)
    print("bench: wrote %s, benchmarks.json%s" % (doc, ", " + plot_name if plot_name else ""), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
