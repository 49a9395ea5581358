#!/usr/bin/env bash
# The test command README.md gives: prepares the host (Docker, test image,
# btrfs tools), runs the whole suite against the real daemon, then the LVM
# scenarios in a qemu guest (the VM lane). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-host.sh
cargo fmt --all -- --check
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --features fault-injection "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
[ "$rc" = 0 ] || exit "$rc"
passed=$(awk '/^test result:/ {n += $4} END {print n + 0}' "$log")
failed=$(awk '/^test result:/ {n += $6} END {print n + 0}' "$log")
skipped=0

# The VM lane: LVM snapshots for real in a qemu guest (the host kernel has
# no device-mapper). VOLSNAP_SKIP_VM=1 skips it, loudly.
if [ "${VOLSNAP_SKIP_VM:-0}" = 1 ]; then
  echo "############ VM LANE SKIPPED: VOLSNAP_SKIP_VM=1 (LVM scenarios not run) ############"
  skipped=1
else
  set +e
  scripts/vm-lane 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" = 3 ]; then
    echo "############ VM LANE SKIPPED: the guest could not be prepared on this machine (see above) ############"
    skipped=1
  elif [ "$rc" != 0 ]; then
    echo "VM lane failed" >&2
    exit "$rc"
  else
    passed=$((passed + $(grep -c '^PASS' "$log")))
  fi
fi
if [ "$skipped" = 1 ]; then
  echo "tests: $passed passed, $failed failed, $skipped skipped"
else
  echo "tests: $passed passed, $failed failed"
fi
