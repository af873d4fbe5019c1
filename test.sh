#!/usr/bin/env bash
# The one test command: lints, then every test (unit, property, integration
# with real daemons). Some integration tests create network namespaces and
# need root; they say so and skip when not root.
set -euo pipefail
cd "$(dirname "$0")"
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked --all-targets
