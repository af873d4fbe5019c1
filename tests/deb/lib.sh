# tests/deb/lib.sh: what the package tests share (sourced by tests/deb/run
# and tests/deb/upgrade after they set `repo`): the sandbox, an empty
# work directory whose share/ the sandbox sees as /share, running commands inside as
# root or as a user, TAP-like checks and polling waits, and cleanup on
# every exit, failure included.
# shellcheck shell=bash disable=SC2034 # passed and started are read by the caller
sandbox=${SYSTEMD_SANDBOX:-}
if [ -z "$sandbox" ]; then
  for candidate in "$repo/../shared/tools/systemd-sandbox" /work/shared/tools/systemd-sandbox; do
    if [ -x "$candidate" ]; then sandbox=$candidate; break; fi
  done
fi
[ -x "$sandbox" ] || {
  echo "deb: no systemd-sandbox (looked at \$SYSTEMD_SANDBOX, ../shared/tools/ beside the repository and /work/shared/tools/); set SYSTEMD_SANDBOX" >&2
  exit 1
}

work=$(mktemp -d /tmp/malai-deb-test.XXXXXX)
state=$work/state
mkdir "$work/share"
passed=0
started=$(date +%s)

# Inside the sandbox, with a clean environment (nothing of the host's or
# CI's variables), as root, in /.
inside() {
  "$sandbox" run "$state" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 TERM=dumb "$@"
}
# A login shell of USER inside (su -l: PAM, logind session, the user's own
# session bus), as an admin or user who logged in with ssh would have.
as() { local user=$1; shift; inside su -l "$user" -c "$*"; }

ok() { passed=$((passed + 1)); echo "ok $passed - $*"; }
fail() {
  echo "FAILED: $*" >&2
  echo "deb: $passed passed, 1 failed"
  exit 1
}
# check WHAT CMD...: CMD succeeds.
check() { local what=$1; shift; "$@" || fail "$what"; ok "$what"; }
# wait_until SECONDS WHAT CMD...: poll CMD every 100 ms until it succeeds.
wait_until() {
  local secs=$1 what=$2; shift 2
  local deadline=$(( $(date +%s%N) + secs * 1000000000 ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s%N)" -lt "$deadline" ] || fail "$what (not within ${secs} s)"
    sleep 0.1 # poll interval
  done
  ok "$what"
}
# contains TEXT PATTERN: fixed-string match, printing TEXT when it fails.
contains() { grep -qF -- "$2" <<<"$1" || { printf 'expected %q in:\n%s\n' "$2" "$1" >&2; return 1; }; }
lacks() { ! grep -qF -- "$2" <<<"$1" || { printf 'unexpected %q in:\n%s\n' "$2" "$1" >&2; return 1; }; }
eq() { [ "$1" = "$2" ] || { printf 'expected %q, got %q\n' "$2" "$1" >&2; return 1; }; }

cleanup() {
  local rc=$?
  if [ "$rc" != 0 ] && [ -f "$state/pid" ]; then
    echo "--- deb: diagnostics" >&2
    inside systemctl status malai --no-pager -l >&2 || true
    inside journalctl -u malai -u dbus --no-pager -n 80 >&2 || true
  fi
  "$sandbox" down "$state" || true
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
