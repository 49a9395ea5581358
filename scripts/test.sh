#!/usr/bin/env bash
# The test command README.md gives: prepares the host (Docker, test image,
# btrfs tools) and runs the whole suite against the real daemon, as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-host.sh
cargo fmt --all -- --check
cargo test --release --features fault-injection "$@"
