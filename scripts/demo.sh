#!/usr/bin/env bash
# A first backup on a fresh machine, of a stack shaped like Milvus and built from real
# servers: etcd (Debian's), an S3 object store in MinIO's place (s3s-fs, its objects in a
# bind-mounted volume), and an application that writes a segment object and then the etcd
# key naming it with the object's SHA-256, as Milvus does. The demo prepares the host,
# builds volsnap, starts the stack under load, plans, backs up, verifies, lists, then
# proves the backup: it restores into new volumes, starts etcd and the store on them, and
# checks that every key points to an object with the right checksum.
# Run as root. Remove the demo with: scripts/demo.sh --clean
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT=volsnap-demo
REPO=${VOLSNAP_REPO:-/var/backups/volsnap-demo}
DATA=/srv/volsnap-demo/minio
IMAGE=volsnap-test/milvus-parts:1

clean() {
  docker rm -f "$PROJECT-etcd" "$PROJECT-minio" "$PROJECT-milvus" \
    "$PROJECT-proof-etcd" "$PROJECT-proof-store" >/dev/null 2>&1 || true
  docker volume rm -f "${PROJECT}_etcd" "${PROJECT}_minio" \
    "${PROJECT}_proof_etcd" "${PROJECT}_proof_minio" >/dev/null 2>&1 || true
  docker network rm "${PROJECT}_default" "${PROJECT}_proof" >/dev/null 2>&1 || true
  rm -rf "$DATA"
}
if [ "${1:-}" = "--clean" ]; then clean; echo "demo stack removed (backups kept in $REPO)"; exit 0; fi

scripts/setup-host.sh
scripts/milvus-image.sh
# VOLSNAP=/path/to/volsnap runs another build (the tests' one, say).
if [ -z "${VOLSNAP:-}" ]; then
  cargo build --release
  VOLSNAP=target/release/volsnap
fi

clean
mkdir -p "$DATA" "$REPO"
docker network create "${PROJECT}_default" >/dev/null
docker volume create "${PROJECT}_etcd" >/dev/null
docker volume create --opt type=none --opt o=bind --opt "device=$DATA" "${PROJECT}_minio" >/dev/null
service() { # NAME ALIAS [docker run args...] -- COMMAND
  local name=$1 alias=$2; shift 2
  docker run -d --name "$PROJECT-$name" --network "${PROJECT}_default" --network-alias "$alias" \
    --label com.docker.compose.project=$PROJECT --label com.docker.compose.service="$name" "$@" >/dev/null
}
service etcd etcd -v "${PROJECT}_etcd:/data" "$IMAGE" etcd-server
service minio store -v "${PROJECT}_minio:/data" "$IMAGE" object-store
service milvus milvus --label com.docker.compose.depends_on=etcd:service_started:false,minio:service_started:false \
  "$IMAGE" milvus-writer
segments() { docker exec "$PROJECT-milvus" etcdctl --endpoints=http://etcd:2379 get /meta/next --print-value-only 2>/dev/null || true; }
for _ in $(seq 100); do [ "$(segments)" -ge 20 ] 2>/dev/null && break; sleep 0.2; done
echo "the stack runs: $(segments) segments written (object first, then its etcd key)"

set -x
$VOLSNAP plan --project $PROJECT
$VOLSNAP backup --project $PROJECT --repo "$REPO"
$VOLSNAP verify --repo "$REPO" latest --deep
$VOLSNAP list --repo "$REPO"
# The proof: the backup restored into new volumes, etcd and the store started on them on a
# network of their own, and every etcd key checked against its object.
$VOLSNAP restore --repo "$REPO" latest --volume "${PROJECT}_etcd=${PROJECT}_proof_etcd" \
  --volume "${PROJECT}_minio=${PROJECT}_proof_minio"
set +x
docker network create "${PROJECT}_proof" >/dev/null
docker run -d --name "$PROJECT-proof-etcd" --network "${PROJECT}_proof" --network-alias etcd \
  -v "${PROJECT}_proof_etcd:/data" "$IMAGE" etcd-server >/dev/null
docker run -d --name "$PROJECT-proof-store" --network "${PROJECT}_proof" --network-alias store \
  -v "${PROJECT}_proof_minio:/data" "$IMAGE" object-store >/dev/null
echo "+ milvus-check (every etcd key of the restored backup points to an object with its SHA-256)"
docker run --rm --network "${PROJECT}_proof" "$IMAGE" milvus-check
docker rm -f "$PROJECT-proof-etcd" "$PROJECT-proof-store" >/dev/null
docker network rm "${PROJECT}_proof" >/dev/null
echo "the stack kept running: $(segments) segments written now"
