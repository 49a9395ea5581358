#!/usr/bin/env bash
# The test command README.md gives: prepares the host (Docker, test image,
# btrfs tools) and runs the whole suite against the real daemon, as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-host.sh
cargo fmt --all -- --check
cargo test --release --features fault-injection "$@"

# The VM lane: LVM snapshots for real in a qemu guest (the host kernel has
# no device-mapper). VOLSNAP_SKIP_VM=1 skips it, loudly.
if [ "${VOLSNAP_SKIP_VM:-0}" = 1 ]; then
  echo "############ VM LANE SKIPPED: VOLSNAP_SKIP_VM=1 (LVM scenarios not run) ############"
else
  set +e
  scripts/vm-lane
  rc=$?
  set -e
  if [ $rc = 3 ]; then
    echo "############ VM LANE SKIPPED: the guest could not be prepared on this machine (see above) ############"
  elif [ $rc != 0 ]; then
    echo "VM lane failed" >&2
    exit $rc
  fi
fi
