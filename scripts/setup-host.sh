#!/usr/bin/env bash
# Installs and starts everything volsnap's tests and demo need on a fresh
# Debian machine (run as root): Docker (Debian's docker.io), busybox-static
# for the local test image, btrfs-progs, zstd, age (the encryption tests
# open volsnap's key objects with Debian's age), chromium and openssl (the
# dashboard's browser tests), fuse3 (volsnap mount); starts dockerd when it is not
# running; builds the local test image (no registry is needed).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "run this as root: it installs packages and starts dockerd"; exit 1
fi

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v mkfs.btrfs >/dev/null 2>&1 || need+=(btrfs-progs)
command -v zstd >/dev/null 2>&1 || need+=(zstd)
command -v losetup >/dev/null 2>&1 || need+=(mount)
command -v age-keygen >/dev/null 2>&1 || need+=(age)
command -v curl >/dev/null 2>&1 || need+=(curl)
# Debian 12's Compose (1.29): the real Milvus stack runs from a compose file.
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# The dashboard's tests: a real browser, and a certificate for its TLS.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# volsnap mount: the tests mount as root (a mount(2) call); fusermount3 is
# the fallback fuser uses otherwise, and diff compares the trees.
command -v fusermount3 >/dev/null 2>&1 || command -v fusermount >/dev/null 2>&1 || need+=(fuse3)
command -v diff >/dev/null 2>&1 || need+=(diffutils)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  scripts/dockerd start
fi
log "docker $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"

scripts/test-image.sh
