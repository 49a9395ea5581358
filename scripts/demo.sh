#!/usr/bin/env bash
# A first backup on a fresh machine, of the seed's own stack: Milvus 2.3.5 standalone (the
# server from PyPI's `milvus` wheel), etcd (Debian's) and an S3 object store in MinIO's place
# (s3s-fs), started by Debian's docker-compose from stacks/milvus/docker-compose.yml, with a
# pymilvus client inserting numbered vectors throughout. The demo prepares the host, builds
# volsnap, starts the stack under load, plans, backs up, verifies, lists, then proves the
# backup: it restores into the volumes of a second copy of the stack (its own project and
# network), starts it, and checks with Milvus's own client that every row acknowledged
# before the stop is there, every vector intact, every search finding its row.
# Run as root. Remove the demo with: scripts/demo.sh --clean
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT=volsnap-demo
PROOF=volsnap-demo-proof
REPO=${VOLSNAP_REPO:-/var/backups/volsnap-demo}
DIR=/srv/volsnap-demo
SERVERS=${VOLSNAP_TEST_SERVERS:-/opt/volsnap-test}
PY=$SERVERS/milvus-venv/bin/python
CHECKER=$PWD/stacks/milvus/checker.py

compose() { # PROJECT ARGS...
  local p=$1; shift
  (cd "$DIR/$p" && docker-compose -p "$p" "$@")
}
clean() {
  pkill -f "checker.py insert --host" 2>/dev/null || true
  for p in $PROJECT $PROOF; do
    [ -f "$DIR/$p/docker-compose.yml" ] && compose $p down -v -t 30 >/dev/null 2>&1 || true
  done
  rm -rf "$DIR"
}
if [ "${1:-}" = "--clean" ]; then clean; echo "demo stack removed (backups kept in $REPO)"; exit 0; fi

scripts/setup-host.sh
scripts/milvus-stack.sh
# VOLSNAP=/path/to/volsnap runs another build (the tests' one, say).
if [ -z "${VOLSNAP:-}" ]; then
  cargo build --release
  VOLSNAP=target/release/volsnap
fi

clean
mkdir -p "$REPO"
WHEEL=$("$PY" -c 'import milvus, os; print(os.path.dirname(milvus.__file__))')/data
for p in $PROJECT $PROOF; do
  mkdir -p "$DIR/$p/logs"
  cp stacks/milvus/docker-compose.yml "$DIR/$p/"
  python3 stacks/milvus/render-config.py "$WHEEL/config.yaml.template" "$DIR/$p/milvus.yaml"
done
ip() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "${1}_standalone_1"; }
healthy() {
  for _ in $(seq 360); do
    [ "$(docker inspect -f '{{.State.Health.Status}}' "${1}_standalone_1" 2>/dev/null)" = healthy ] && return 0
    sleep 0.5
  done
  echo "Milvus of $1 did not become healthy" >&2; return 1
}
acked() { tail -1 "$DIR/acks" 2>/dev/null | cut -d' ' -f2; }

compose $PROJECT up -d
healthy $PROJECT
"$PY" "$CHECKER" setup --host "$(ip $PROJECT)" >/dev/null
nohup "$PY" "$CHECKER" insert --host "$(ip $PROJECT)" --acked "$DIR/acks" >/dev/null 2>&1 &
for _ in $(seq 100); do [ "$(acked)" -ge 2000 ] 2>/dev/null && break; sleep 0.2; done
echo "the stack runs: Milvus acknowledged $(acked) rows so far"

set -x
$VOLSNAP plan --project $PROJECT --repo "$REPO"
$VOLSNAP backup --project $PROJECT --repo "$REPO" --json > "$DIR/backup.json"
set +x
# What it did, and the last row Milvus acknowledged before its stop began.
stopped_at=$(date -d "$(docker inspect -f '{{.State.FinishedAt}}' ${PROJECT}_standalone_1)" +%s.%N)
before=$(python3 - "$DIR/backup.json" "$stopped_at" "$DIR/acks" <<'PY'
import json, sys
backup = json.load(open(sys.argv[1]))
print(f"backup {backup['id']}: {backup['strategy']}, {backup['consistency']}, downtime {backup['downtime_ms'] / 1000:.1f} s", file=sys.stderr)
began = float(sys.argv[2])
for c in backup["containers"]:
    stop = c.get("stop") or {}
    if c.get("service") == "standalone":
        began -= stop.get("took_ms", 0) / 1000
    if stop:
        how = "killed at its timeout" if stop["killed"] else f"stopped in {stop['took_ms'] / 1000:.1f} s, exit {stop['exit_code']}"
        print(f"  {c['name']}: {how}; answered again {c.get('answered_ms', 0) / 1000:.1f} s after its start", file=sys.stderr)
acked = [line.split() for line in open(sys.argv[3])]
print(max([int(i) for t, i in acked if float(t) <= began] or [0]))
PY
)
set -x
$VOLSNAP verify --repo "$REPO" latest --deep
$VOLSNAP list --repo "$REPO"
set +x
echo "+ the proof: the backup restored into the volumes of a second copy of the stack"
set -x
$VOLSNAP restore --repo "$REPO" latest \
  --volume ${PROJECT}_etcd_data=${PROOF}_etcd_data \
  --volume ${PROJECT}_minio_data=${PROOF}_minio_data \
  --volume ${PROJECT}_milvus_data=${PROOF}_milvus_data
set +x
compose $PROOF up -d 2>/dev/null
healthy $PROOF
echo "+ checker.py check (Milvus's own client, on the copy: rows 1..N with N >= $before, the last acknowledged before the stop)"
"$PY" "$CHECKER" check --host "$(ip $PROOF)" --acked "$before"
compose $PROOF down -v -t 30 >/dev/null 2>&1
echo "the stack kept running: Milvus acknowledged $(acked) rows now (the inserter stops here; scripts/demo.sh --clean removes the stack)"
pkill -f "checker.py insert --host" 2>/dev/null || true
