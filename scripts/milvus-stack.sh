#!/usr/bin/env bash
# Builds what the real Milvus stack (stacks/milvus/) runs, with no registry:
# - a venv with PyPI's `milvus` 2.3.5 wheel (a real Milvus 2.3.5 server, lzma-compressed)
#   and the client pymilvus 2.3.5, under $VOLSNAP_TEST_SERVERS/milvus-venv;
# - the image volsnap-test/milvus:2.3.5: busybox, curl, the server and its libraries,
#   a default milvus.yaml; imported with 'docker import';
# - the image volsnap-test/milvus-parts:1 (etcd and the object store, scripts/milvus-image.sh).
# Idempotent: a second run with nothing changed does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
SERVERS=${VOLSNAP_TEST_SERVERS:-/opt/volsnap-test}
VENV=$SERVERS/milvus-venv
IMAGE=${VOLSNAP_MILVUS_SERVER_IMAGE:-volsnap-test/milvus:2.3.5}
scripts/milvus-image.sh
if ! "$VENV/bin/python" -c 'import milvus, pymilvus' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    milvus==2.3.5 pymilvus==2.3.5 'marshmallow<4'
fi
WHEEL=$("$VENV/bin/python" -c 'import milvus, os; print(os.path.dirname(milvus.__file__))')/data
stamp=$(cat scripts/milvus-stack.sh stacks/milvus/render-config.py "$WHEEL/bin/milvus.lzma" \
  /bin/busybox /usr/bin/curl | sha256sum | cut -c1-12)
if [ "$(docker image inspect -f '{{index .Config.Labels "volsnap.stamp"}}' "$IMAGE" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root/milvus/bin" "$root/milvus/configs" "$root/bin" "$root/tmp" "$root/etc" \
  "$root/var/lib/milvus" "$root/var/log/milvus" "$root/run/milvus"
# The server and the libraries it ships, decompressed.
"$VENV/bin/python" - "$WHEEL/bin" "$root/milvus/bin" <<'PY'
import lzma, os, sys
src, dst = sys.argv[1:]
for name in os.listdir(src):
    if name.endswith(".lzma"):
        with lzma.open(os.path.join(src, name)) as f, open(os.path.join(dst, name[:-5]), "wb") as out:
            out.write(f.read())
        os.chmod(os.path.join(dst, name[:-5]), 0o755)
PY
# What they and curl need from the system (glibc), at their paths.
for program in "$root/milvus/bin/milvus" /usr/bin/curl; do
  for lib in $(LD_LIBRARY_PATH="$root/milvus/bin" ldd "$program" | grep -o '/[^ ]*' | grep -v "^$root"); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
done
cp /usr/bin/curl /bin/busybox "$root/bin/"
for applet in $("$root/bin/busybox" --list); do
  [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
python3 stacks/milvus/render-config.py "$WHEEL/config.yaml.template" "$root/milvus/configs/milvus.yaml"
cp "$WHEEL/glog.conf" "$root/milvus/configs/" 2>/dev/null || true
echo 'root:x:0:0:root:/:/bin/sh' > "$root/etc/passwd"
echo 'root:x:0:' > "$root/etc/group"
echo 'hosts: files dns' > "$root/etc/nsswitch.conf"
tar -C "$root" -c . | docker import \
  -c 'ENV PATH=/milvus/bin:/bin' -c 'ENV LD_LIBRARY_PATH=/milvus/bin' \
  -c 'ENV DEPLOY_MODE=STANDALONE' -c 'WORKDIR /milvus' \
  -c 'CMD ["milvus", "run", "standalone"]' \
  -c "LABEL volsnap.stamp=$stamp" - "$IMAGE" >/dev/null
echo "[setup] built image $IMAGE" >&2
