#!/usr/bin/env bash
# Builds the image of the Milvus-shaped stack the demo and tests/milvus.rs run, from real
# servers available here: etcd (Debian's etcd-server and etcd-client, unpacked, not
# installed), s3s-fs as the object store in MinIO's place (scripts/setup-servers.sh builds
# it), curl, busybox, and the writer and checker scripts in milvus-image/. Imported with
# 'docker import' (no registry). Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
IMAGE=${VOLSNAP_MILVUS_IMAGE:-volsnap-test/milvus-parts:1}
S3S=${VOLSNAP_TEST_SERVERS:-/opt/volsnap-test}/s3s/bin/s3s-fs
[ -x "$S3S" ] || ./setup-servers.sh
command -v curl >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
stamp=$(cat milvus-image/* /bin/busybox "$S3S" | sha256sum | cut -c1-12)
if [ "$(docker image inspect -f '{{index .Config.Labels "volsnap.stamp"}}' "$IMAGE" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -qq etcd-server etcd-client 2>/dev/null ||
  { apt-get update -qq && apt-get download -qq etcd-server etcd-client; })
root=$work/root
mkdir -p "$root/bin" "$root/tmp" "$root/data" "$root/etc"
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/pkg"; done
cp "$work/pkg/usr/bin/etcd" "$work/pkg/usr/bin/etcdctl" "$S3S" /usr/bin/curl "$root/bin/"
# The shared libraries of the dynamically linked programs, at their paths.
for program in "$root/bin/etcd" "$root/bin/etcdctl" "$root/bin/s3s-fs" "$root/bin/curl"; do
  for lib in $(ldd "$program" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
done
cp /bin/busybox "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
install -m 0755 milvus-image/* "$root/bin/"
echo 'root:x:0:0:root:/:/bin/sh' > "$root/etc/passwd"
echo 'root:x:0:' > "$root/etc/group"
tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' -c 'ENV ETCDCTL_API=3' -c "LABEL volsnap.stamp=$stamp" - "$IMAGE" >/dev/null
echo "[setup] built image $IMAGE" >&2
