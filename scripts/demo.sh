#!/usr/bin/env bash
# A first backup on a fresh machine: prepares the host, builds volsnap,
# starts a small demo stack shaped like Milvus (etcd-like writer, MinIO-like
# bind volume, an app that depends on both), then plans, backs up, verifies
# and lists. Run as root. Remove the demo with: scripts/demo.sh --clean
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT=volsnap-demo
REPO=${VOLSNAP_REPO:-/var/backups/volsnap-demo}
DATA=/srv/volsnap-demo/minio

clean() {
  docker rm -f "$PROJECT-etcd" "$PROJECT-minio" "$PROJECT-app" >/dev/null 2>&1 || true
  docker volume rm -f "${PROJECT}_etcd" "${PROJECT}_minio" >/dev/null 2>&1 || true
}
if [ "${1:-}" = "--clean" ]; then clean; echo "demo stack removed (backups kept in $REPO)"; exit 0; fi

scripts/setup-host.sh
cargo build --release
VOLSNAP=target/release/volsnap

clean
mkdir -p "$DATA" "$REPO"
head -c 8M /dev/urandom > "$DATA/object-0001.bin"
echo '{"bucket":"demo"}' > "$DATA/bucket.json"
docker volume create "${PROJECT}_etcd" >/dev/null
docker volume create --opt type=none --opt o=bind --opt "device=$DATA" "${PROJECT}_minio" >/dev/null
labels() { echo --label com.docker.compose.project=$PROJECT --label com.docker.compose.service=$1; }
docker run -d --network none --name "$PROJECT-etcd" $(labels etcd) -v "${PROJECT}_etcd:/data" \
  volsnap-test/busybox:1 record-writer /data/records.log >/dev/null
docker run -d --network none --name "$PROJECT-minio" $(labels minio) -v "${PROJECT}_minio:/data" --tmpfs /tmp \
  volsnap-test/busybox:1 idle >/dev/null
docker run -d --network none --name "$PROJECT-app" $(labels app) \
  --label com.docker.compose.depends_on=etcd:service_started:false,minio:service_started:false \
  -v "${PROJECT}_etcd:/etcd:ro" volsnap-test/busybox:1 idle >/dev/null
sleep 1

set -x
$VOLSNAP plan --project $PROJECT
$VOLSNAP backup --project $PROJECT --repo "$REPO"
$VOLSNAP verify --repo "$REPO" latest --deep
$VOLSNAP list --repo "$REPO"
