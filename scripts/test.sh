#!/usr/bin/env bash
# The test command README.md gives: prepares the host (Docker, test image,
# btrfs tools), runs the whole suite against the real daemon, then the LVM
# and ZFS scenarios in a qemu guest (the VM lane), then the Debian package
# built, checked and installed into a fresh Debian 12 root (the package
# lane). Run as root.
#
# scripts/setup-servers.sh installs the S3 and SFTP servers the remote
# tests start on 127.0.0.1. It leaves the host alone: test binaries (built with fault injection) go to
# target/test, never over target/release/volsnap, and the tests that stop
# and restart dockerd use a private daemon in a network namespace of its own
# (scripts/test-dockerd), removed as soon as their test binary exits. A
# sentinel container on the host's default bridge, started before the tests
# and checked after them (scripts/host-docker-check), proves the host's
# Docker networking came through untouched; its checks count in the closing
# tally, which is printed whether the run passes or fails.
#
# VOLSNAP_SKIP_VM=1 skips the VM lane (loudly); VOLSNAP_VM_ZFS=0 runs it
# without ZFS. Arguments go to `cargo test` (a test name filter, say).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/test}
log=$(mktemp)
passed=0 failed=0 skipped=0 rc=0
sentinel=0
finish() {
  status=$?
  if [ "$sentinel" = 1 ]; then
    checks=$(scripts/host-docker-check check 2>&1) || true
    echo "$checks"
    p=$(grep -c '^PASS' <<<"$checks" || true)
    f=$(grep -c '^FAIL' <<<"$checks" || true)
    passed=$((passed + p))
    failed=$((failed + f))
    [ "$f" = 0 ] && [ "$p" != 0 ] || { [ "$failed" != 0 ] || failed=1; [ "$status" != 0 ] || status=1; }
  fi
  scripts/test-dockerd purge >/dev/null 2>&1 || true
  rm -f "$log"
  if [ "$skipped" != 0 ]; then
    echo "tests: $passed passed, $failed failed, $skipped skipped"
  else
    echo "tests: $passed passed, $failed failed"
  fi
  exit "$status"
}
trap finish EXIT
scripts/setup-host.sh || { failed=1; exit 1; }
# S3 and SFTP servers for tests/remote.rs; with them installed, a missing
# server fails its test instead of skipping it.
scripts/setup-servers.sh || { failed=1; exit 1; }
scripts/milvus-stack.sh || { failed=1; exit 1; }
scripts/host-docker-check start || { failed=1; exit 1; }
sentinel=1
export VOLSNAP_REQUIRE_SERVERS=1
cargo fmt --all -- --check || { echo "cargo fmt: the code is not formatted (run cargo fmt --all)" >&2; failed=1; exit 1; }

set +e
cargo test --release --features fault-injection "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
passed=$(awk '/^test result:/ {n += $4} END {print n + 0}' "$log")
failed=$(awk '/^test result:/ {n += $6} END {print n + 0}' "$log")
if [ "$rc" != 0 ]; then
  # A build failure or a crashed test binary prints no "test result" line
  # for what it did not run: count the run as failed all the same.
  [ "$failed" != 0 ] || failed=1
  exit "$rc"
fi

# The real-data benchmark in its quick mode (two Linux source versions' Documentation/,
# one round, no ratio checks): it runs end to end and every tool restores the last version.
if VOLSNAP_BIN=$CARGO_TARGET_DIR/release/volsnap scripts/bench-real --quick 2>&1 | tee "$log"; then
  echo "PASS bench-real --quick"; passed=$((passed + 1))
else
  echo "FAIL bench-real --quick"; failed=$((failed + 1)); exit 1
fi

# The package lane (scripts/package-test): the Debian package built with
# cargo-deb, checked by lintian and installed with apt into a fresh Debian
# 12 root. It runs last: it builds the release binary without test
# features, over the test build's (the next test run relinks it).
package_lane() {
  set +e
  scripts/package-test 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  passed=$((passed + $(grep -c '^PASS' "$log" || true)))
  failed=$((failed + $(grep -c '^FAIL' "$log" || true)))
  if [ "$rc" = 3 ]; then
    echo "############ PACKAGE LANE SKIPPED: no Debian root could be made on this machine (see above) ############"
    skipped=1
  elif [ "$rc" != 0 ]; then
    [ "$failed" != 0 ] || failed=1
    echo "package lane failed" >&2
    exit "$rc"
  fi
}

# The VM lane: LVM and ZFS snapshots for real in a qemu guest (the host
# kernel has neither device-mapper nor ZFS).
if [ "${VOLSNAP_SKIP_VM:-0}" = 1 ]; then
  echo "############ VM LANE SKIPPED: VOLSNAP_SKIP_VM=1 (LVM and ZFS scenarios not run) ############"
  skipped=1
  package_lane
  exit 0
fi
lane_args=(--zfs)
[ "${VOLSNAP_VM_ZFS:-1}" = 0 ] && lane_args=()
set +e
scripts/vm-lane "${lane_args[@]}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
passed=$((passed + $(grep -c '^PASS' "$log" || true)))
failed=$((failed + $(grep -c '^FAIL' "$log" || true)))
if [ "$rc" = 3 ]; then
  echo "############ VM LANE SKIPPED: the guest could not be prepared on this machine (see above) ############"
  skipped=1
elif [ "$rc" != 0 ]; then
  [ "$failed" != 0 ] || failed=1
  echo "VM lane failed" >&2
  exit "$rc"
fi
package_lane
