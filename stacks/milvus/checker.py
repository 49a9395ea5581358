#!/usr/bin/env python3
"""What an operator would check after restoring a Milvus stack, with Milvus's own client.

  checker.py setup  --host H           a collection of numbered vectors, indexed and loaded
  checker.py insert --host H --acked F  insert rows 1, 2, 3, ... in order, one batch at a time,
                                        until stopped; after each batch Milvus acknowledged,
                                        the time and its last id are appended to F (a failed
                                        batch is retried, never skipped: the rows are 1..N)
  checker.py check  --host H [--acked N]
                                        after a restore: the rows form a gapless prefix 1..M
                                        with M >= N, every vector is the one inserted, and the
                                        fixed searches return their own row first; prints one
                                        JSON line, exits 1 if anything is wrong

Vectors are a function of the id, so nothing needs to be kept to check them.
"""
import argparse
import json
import math
import signal
import sys
import time

from pymilvus import Collection, CollectionSchema, DataType, FieldSchema, connections, utility

COLLECTION = "volsnap_check"
DIM = 16
BATCH = 100
SEARCHES = 20


def vector(n):
    return [math.sin(n * (i + 1) * 0.618) for i in range(DIM)]


def connect(host, timeout):
    deadline = time.time() + timeout
    while True:
        try:
            connections.connect(host=host, port="19530", timeout=10)
            return
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def setup(args):
    connect(args.host, 120)
    if utility.has_collection(COLLECTION):
        utility.drop_collection(COLLECTION)
    schema = CollectionSchema(
        [
            FieldSchema("id", DataType.INT64, is_primary=True, auto_id=False),
            FieldSchema("vec", DataType.FLOAT_VECTOR, dim=DIM),
        ]
    )
    c = Collection(COLLECTION, schema)
    c.create_index("vec", {"index_type": "IVF_FLAT", "metric_type": "L2", "params": {"nlist": 16}})
    c.load()
    print(json.dumps({"collection": COLLECTION}))


def insert(args):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    connect(args.host, 120)
    c = Collection(COLLECTION)
    next_id = 1
    while not stop:
        ids = list(range(next_id, next_id + BATCH))
        try:
            c.insert([ids, [vector(n) for n in ids]], timeout=10)
        except Exception as e:  # Milvus stopped for a backup: retry the same batch
            print(f"insert of {ids[0]}..{ids[-1]} failed, retrying: {e}", file=sys.stderr)
            time.sleep(0.5)
            continue
        next_id += BATCH
        with open(args.acked, "a") as f:
            f.write(f"{time.time():.3f} {next_id - 1}\n")
        time.sleep(args.pause)


def check(args):
    report = {"ok": False}
    started = time.time()
    connect(args.host, args.timeout)
    c = Collection(COLLECTION)
    deadline = time.time() + args.timeout
    while True:
        try:
            c.load(timeout=30)
            first = time.time()
            count = c.query("", output_fields=["count(*)"], consistency_level="Strong")[0]["count(*)"]
            report["first_strong_query_s"] = round(time.time() - first, 2)
            break
        except Exception as e:
            if time.time() > deadline:
                report["error"] = f"no answer: {e}"
                print(json.dumps(report))
                return 1
            time.sleep(0.5)
    report["answered_after_s"] = round(time.time() - started, 2)
    report["rows"] = count
    seen = {}
    bad = 0
    low = 1
    while True:
        rows = c.query(
            f"id >= {low} and id < {low + 10000}",
            output_fields=["id", "vec"],
            consistency_level="Strong",
        )
        if not rows and low > count + 10000:
            break
        for r in rows:
            n = r["id"]
            seen[n] = seen.get(n, 0) + 1
            if any(abs(a - b) > 1e-5 for a, b in zip(r["vec"], vector(n))):
                bad += 1
        low += 10000
        if low > max(seen, default=0) + 20000:
            break
    top = max(seen, default=0)
    report["max_id"] = top
    report["gaps"] = sum(1 for n in range(1, top + 1) if n not in seen)
    report["duplicates"] = sum(v - 1 for v in seen.values())
    report["bad_vectors"] = bad
    wanted = [n for n in range(1, top + 1, max(1, top // SEARCHES))][:SEARCHES]
    found = c.search(
        [vector(n) for n in wanted],
        "vec",
        {"metric_type": "L2", "params": {"nprobe": 16}},
        limit=1,
        consistency_level="Strong",
    )
    report["searches"] = len(wanted)
    report["searches_ok"] = sum(1 for n, hits in zip(wanted, found) if hits and hits[0].id == n)
    report["acked"] = args.acked
    report["ok"] = (
        report["gaps"] == 0
        and bad == 0
        and top >= args.acked
        and report["searches_ok"] == report["searches"]
    )
    print(json.dumps(report))
    return 0 if report["ok"] else 1


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("setup")
    p.add_argument("--host", required=True)
    p = sub.add_parser("insert")
    p.add_argument("--host", required=True)
    p.add_argument("--acked", required=True)
    p.add_argument("--pause", type=float, default=0.1)
    p = sub.add_parser("check")
    p.add_argument("--host", required=True)
    p.add_argument("--acked", type=int, default=0)
    p.add_argument("--timeout", type=float, default=180)
    args = parser.parse_args()
    return {"setup": setup, "insert": insert, "check": check}[args.command](args) or 0


if __name__ == "__main__":
    sys.exit(main())
