#!/usr/bin/env bash
# Builds the local image volsnap's tests and demo run: busybox-static plus a
# few small service scripts, imported with 'docker import' (no registry).
set -euo pipefail
cd "$(dirname "$0")"
IMAGE=${VOLSNAP_TEST_IMAGE:-volsnap-test/busybox:1}
stamp=$(cat image/* /bin/busybox | sha256sum | cut -c1-12)
if [ "$(docker image inspect -f '{{index .Config.Labels "volsnap.stamp"}}' "$IMAGE" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/tmp" "$root/data" "$root/etc"
cp /bin/busybox "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
install -m 0755 image/* "$root/bin/"
echo 'root:x:0:0:root:/:/bin/sh' > "$root/etc/passwd"
echo 'root:x:0:' > "$root/etc/group"
tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' -c "LABEL volsnap.stamp=$stamp" - "$IMAGE" >/dev/null
echo "[setup] built image $IMAGE" >&2
