#!/usr/bin/env python3
"""Requests per operation against a destination holding 100,000 objects (issue 10).

    python3 bench/scale.py --cairn target/release/cairn [--backups 50000]

Builds, on a local s3s-fs server, a layout 2 destination (docs/FORMAT.md §12)
holding N hourly backups: N archives, N commits, two checkpoints and the
marker, i.e. 2N + 3 objects. The objects are written from the spec, the way a
stranger would (the archives are copies of one real archive, so any of them
restores), then real `cairn` commands run against it and the server's own
request log counts what each cost. Prints a table; bench/README.md has the last one.
"""

import argparse
import datetime
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import BenchError, S3Server, fresh, human, s3s_fs_binary, say  # noqa: E402

HOUR_MS = 3_600_000
CHECKPOINT_EVERY = 16  # core/src/layout/mod.rs


def rfc3339(ms):
    t = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def compact(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def envelope(fmt, body):
    """§7.3/§12.1: the digest covers the body's exact bytes."""
    b = json.dumps(body, separators=(",", ":")).encode()
    return (b'{"format":"' + fmt.encode() + b'","version":2,"body_sha256":"'
            + hashlib.sha256(b).hexdigest().encode() + b'","body":' + b + b"}")


def seq_key(prefix, n):
    return f"{prefix}{n:020d}.json"


def build(cairn, root, n, work, env):
    """A real backup gives the template entry and archive; then N synthetic ones."""
    db = work / "app.db"
    c = sqlite3.connect(db)
    c.executescript("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3);")
    c.close()
    local = work / "template"
    subprocess.run([cairn, "backup", db, local, "-q"], check=True, env=env)
    log1 = json.loads((local / "log" / seq_key("", 1)).read_text())
    template = log1["body"]["add"][0]
    archive = (local / template["object"]).read_bytes()
    dest = root / "bench" / "scale"
    (dest / "snapshots").mkdir(parents=True)
    (dest / "log").mkdir()
    (dest / "checkpoints").mkdir()
    now = int(time.time() * 1000)
    first = now - (n + 1) * HOUR_MS
    entries = []
    for i in range(n):
        at = first + i * HOUR_MS
        e = dict(template)
        e["id"] = f"{compact(at)}-{i:08x}"
        e["object"] = f"snapshots/{e['id']}.db.gz"
        e["created_at_ms"] = at
        e["created_at"] = rfc3339(at)
        entries.append(e)
        (dest / e["object"]).write_bytes(archive)
        body = {"seq": i + 1, "created_at": rfc3339(at), "created_at_ms": at,
                "writer": "bench/scale.py", "nonce": f"{i:016x}", "add": [e]}
        (dest / "log" / seq_key("", i + 1)).write_bytes(envelope("cairn-commit", body))
    last = n - n % CHECKPOINT_EVERY
    for cp in (last - CHECKPOINT_EVERY, last):
        if cp > 0:
            body = {"seq": cp, "at_ms": entries[cp - 1]["created_at_ms"], "entries": entries[:cp]}
            (dest / "checkpoints" / seq_key("", cp)).write_bytes(envelope("cairn-checkpoint", body))
    marker = {"layout": 2, "created_at": rfc3339(first), "created_at_ms": first, "conditional_writes": True}
    (dest / "cairn.json").write_bytes(envelope("cairn-destination", marker))
    objects = sum(1 for p in dest.rglob("*") if p.is_file())
    return db, objects, len(archive)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cairn", required=True, help="the cairn binary")
    ap.add_argument("--backups", type=int, default=50_000, help="backups in the destination (objects = 2N + 3)")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / f"cairn-scale-{os.getpid()}")
    a = ap.parse_args()
    cairn = str(Path(a.cairn).resolve())
    binary = s3s_fs_binary()
    if not binary:
        raise BenchError("s3s-fs is not installed (.ci/setup.sh installs it)")
    work = fresh(a.work)
    s3 = S3Server(binary, work / "s3", work / "s3s-fs.log")
    try:
        env = s3.env(dict(os.environ))
        say(f"writing {a.backups} backups into the destination (from the spec)")
        t0 = time.perf_counter()
        db, objects, archive_bytes = build(cairn, s3.root, a.backups, work, env)
        say(f"{objects} objects in {time.perf_counter() - t0:.0f}s")
        url = s3.cairn_url("scale")
        out = work / "restored.db"
        steps = [
            ("list", [cairn, "list", url, "--json"]),
            ("restore the newest backup", [cairn, "restore", url, "-o", out, "-q"]),
            ("backup (one more)", [cairn, "backup", db, url, "-q"]),
            ("list again", [cairn, "list", url, "--json"]),
            ("prune, nothing to remove, first orphan sweep (lists all of snapshots/)",
             [cairn, "prune", url, "--keep-within", "100000d", "--json"]),
            ("prune, nothing to remove, later sweeps (from the mark)",
             [cairn, "prune", url, "--keep-within", "100000d", "--json"]),
            ("prune removing 1 backup", [cairn, "prune", url, "--keep-last", str(a.backups), "--json"]),
            ("backup (one more)", [cairn, "backup", db, url, "-q"]),
        ]
        rows = []
        for name, argv in steps:
            before = s3.requests()
            t = time.perf_counter()
            p = subprocess.run(argv, env=env, capture_output=True)
            dt = time.perf_counter() - t
            if p.returncode != 0:
                raise BenchError(f"{name}: `{' '.join(map(str, argv))}` failed:\n{p.stderr.decode()}")
            if out.exists():
                out.unlink()
            rows.append((name, s3.requests() - before, dt))
            say(f"  {name}: {rows[-1][1]} requests, {dt:.2f}s")
        print(f"\nRequests per operation, destination of {objects} objects ({a.backups} backups, "
              f"archives of {human(archive_bytes)}), s3s-fs on 127.0.0.1; requests = what the server saw.")
        w = max(len(r[0]) for r in rows)
        print(f"| {'operation'.ljust(w)} | requests | seconds |")
        print(f"|{'-' * (w + 2)}|----------|---------|")
        for name, n, dt in rows:
            print(f"| {name.ljust(w)} | {n:8d} | {dt:7.2f} |")
    except BenchError as e:
        print(f"scale: FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        s3.stop()
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
