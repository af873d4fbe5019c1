#!/usr/bin/env bash
# A local cluster on this one host: a cluster manager (cm) and two machines
# (web01, laptop), each with its own MALAI_HOME and daemon, talking over
# loopback with relays and discovery off. Shows a config push, remote
# commands with their output and exit codes, and a denied one; then stops
# everything.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --quiet
B=$PWD/target/debug/malai
DEMO=$(mktemp -d /tmp/malai-demo.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$DEMO"
}
trap cleanup EXIT

# Three daemons on one host: keep them off the real session and system
# buses (where an installed malai service owns the name); the CLI dials.
export MALAI_DBUS_ADDRESS=disabled

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
base=$(( 20000 + RANDOM % 30000 ))
declare -A PORT=([cm]=$base [web01]=$((base + 1)) [laptop]=$((base + 2)))

for h in cm web01 laptop; do
  mkdir -p "$DEMO/$h"
  cat > "$DEMO/$h/malai.toml" <<TOML
[network]
relay = "disabled"
discovery = false
bind = "127.0.0.1"
[network.ports]
company = ${PORT[$h]}
TOML
done
m() { local h=$1; shift; MALAI_HOME="$DEMO/$h" "$B" "$@"; }
id52_of() { sed -n 's/.*"id52": "\([a-z0-9]*\)".*/\1/p' | head -1; }
wait_for() { # wait_for FILE PATTERN: until the pattern shows in the file (10 s at most)
  for _ in $(seq 1 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "timed out waiting for '$2' in $1" >&2; return 1
}

say "cm: create the cluster"
CM=$(m cm cluster init company --json | id52_of)
echo "cluster manager id52: $CM"
say "web01 and laptop: join it"
WEB=$(m web01 machine init "$CM" company --cm-addr "127.0.0.1:${PORT[cm]}" --name web01 --json | id52_of)
LAP=$(m laptop machine init "$CM" company --cm-addr "127.0.0.1:${PORT[cm]}" --name laptop --json | id52_of)

say "start the three daemons"
for h in cm web01 laptop; do
  MALAI_HOME="$DEMO/$h" "$B" daemon 2>"$DEMO/$h.log" &
  PIDS+=($!)
done
for h in cm web01 laptop; do wait_for "$DEMO/$h.log" "daemon ready"; done

say "cm: add both machines to cluster.toml and rescan"
cat >> "$DEMO/cm/clusters/company/cluster.toml" <<TOML

[machine.web01]
id52 = "$WEB"
addrs = ["127.0.0.1:${PORT[web01]}"]
allow_from = "admins"

[machine.laptop]
id52 = "$LAP"
addrs = ["127.0.0.1:${PORT[laptop]}"]
allow_from = ""                 # nobody may run commands on the laptop

[group.admins]
members = "laptop"
TOML
run m cm rescan

say "wait for both machines to acknowledge the new config"
for _ in $(seq 1 200); do
  [ "$(m cm status --json | grep -c '"sync": "in-sync"')" = 2 ] && break
  sleep 0.05
done
m cm status

say "laptop: run commands on web01"
run m laptop web01.company uname -sr
echo '$ echo hello | malai web01.company tr a-z A-Z'
echo hello | m laptop web01.company tr a-z A-Z
echo "\$ malai web01.company sh -c 'echo out; echo err >&2; exit 7'"
set +e
m laptop web01.company sh -c 'echo out; echo err >&2; exit 7'
echo "exit code: $?"

say "web01: try to run a command on the laptop (denied)"
m web01 laptop.company id
echo "exit code: $?"
set -e

say "audit log (daemon logs, one line per decision)"
grep -hE " runs | denied " "$DEMO/web01.log" "$DEMO/laptop.log" | sed -E 's/^[^ ]+ +[A-Z]+ [^ ]+ /  /; s/ malai_cluster=.*//' | cut -c1-150
say "stopping the daemons"
