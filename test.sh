#!/usr/bin/env bash
# The one test command: lints, then every test (unit, property, integration
# with real daemons). Integration tests that need root (network namespaces,
# other users) are #[ignore = "needs root: ..."]: as a normal user they are
# reported as ignored; as root (CI) they run too. A test whose tool is
# missing fails, naming the package to install (.ci/run installs them all).
set -euo pipefail
cd "$(dirname "$0")"
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
# The network lab's relay (tests/lab.rs, and the benchmark's nat phase) is
# looked for at target/debug/examples/lab_relay: cargo test builds examples
# under hashed names only.
cargo build --locked --example lab_relay
if [ "$(id -u)" = 0 ]; then
  cargo test --locked --all-targets -- --include-ignored
else
  cargo test --locked --all-targets
fi
