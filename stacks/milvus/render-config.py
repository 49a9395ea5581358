#!/usr/bin/env python3
"""Writes the milvus.yaml of the stack from the template the PyPI `milvus` wheel ships
(Milvus 2.3.5's own, with {{ name(type): default }} placeholders), pointed at the stack's
etcd and object store, with the two settings a backup tool's stop and restart depend on.

usage: render-config.py TEMPLATE OUT [--graceful-stop-timeout S] [--session-ttl S]
"""
import argparse
import re

parser = argparse.ArgumentParser()
parser.add_argument("template")
parser.add_argument("out")
# Milvus's default is 1800 s: a SIGTERM then does not end the server for minutes.
parser.add_argument("--graceful-stop-timeout", type=int, default=10)
# Milvus's default is 30 s: the first strong query after a restart waits on stale sessions.
parser.add_argument("--session-ttl", type=int, default=10)
args = parser.parse_args()

text = open(args.template).read()
paths = {
    "etcd_data_dir": "/var/lib/milvus/etcd",  # unused: etcd is external
    "local_storage_dir": "/var/lib/milvus/data",
    "rocksmq_data_dir": "/var/lib/milvus/rdb_data",
    "system_log_path": "/var/log/milvus",
}


def placeholder(m):
    name, default = m.group(1), m.group(3)
    if name in paths:
        return paths[name]
    if default is None:
        raise SystemExit(f"no value for {{{{ {name} }}}}")
    return default.strip()


text = re.sub(r"\{\{\s*([a-z_]+)(\([a-z]+\))?\s*(?::\s*([^}]*))?\}\}", placeholder, text)

# (section, key, value): the first `key:` after the line `section:` at column 0.
settings = [
    ("etcd", "endpoints", "etcd:2379"),
    ("etcd", "embed", "false"),
    ("minio", "address", "minio"),
    ("minio", "port", "9000"),
    ("minio", "bucketName", "milvus"),
    ("minio", "rootPath", "files"),
    ("common", "storageType", "minio"),
    ("common", "gracefulStopTimeout", str(args.graceful_stop_timeout)),
    ("common", "ttl", str(args.session_ttl)),
]
lines = text.split("\n")
for section, key, value in settings:
    start = lines.index(section + ":")
    for n in range(start + 1, len(lines)):
        m = re.match(r"^(\s+)" + re.escape(key) + r":(\s*)([^#]*?)(\s*#.*)?$", lines[n])
        if m:
            lines[n] = f"{m.group(1)}{key}: {value}{m.group(4) or ''}"
            break
        if lines[n] and not lines[n][0].isspace() and not lines[n].startswith("#"):
            raise SystemExit(f"no {section}.{key} in the template")
open(args.out, "w").write("\n".join(lines))
