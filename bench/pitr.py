#!/usr/bin/env python3
"""Point-in-time restore of a replicated 1 GiB database, cairn beside
Litestream 0.5.17 (issue 13 §6), in one run on one machine.

usage: bench/pitr.py [--cairn BIN] [--litestream BIN] [--size 1G] [--minutes 5]
                     [--rate 200] [--only cairn|litestream] [--json OUT]

For each tool, at its DEFAULT settings, into a local directory:

1. a copy of the bench database (bench/bench.py's, cached in
   ~/.cache/cairn-bench) is replicated from the start (the tool's first
   snapshot of it included);
2. a writer commits --rate transactions per second for --minutes: each
   inserts a ~1 KB row and updates one random row of the big table (so
   segments touch pages all over the file, not only its end), logging
   each commit's wall-clock time;
3. the replicator is stopped once it has shipped everything;
4. timed restores: the newest state, and the state at the middle of the
   writing (--timestamp). Each restore is checked: the row count of the
   commit log must match the commits made before the target time, allowing
   the commits of the last two seconds before it (a commit is stamped when
   the replicator sees it, not when it was made).

Rows: cairn restore at its default (`PRAGMA integrity_check` on the result
unless the generation's snapshot has a recorded pass, which the replicator
records itself in the background, and every page since passed its sums) and
with `--check full`; Litestream restore at its default (no check) and with
`-integrity-check full`. Compare default with default, full with full. The objects each replica holds are counted, and peak RSS comes
from GNU time. A day of segments is not waited for: both tools compact into
levels, so a day adds a few dozen objects to read, not thousands; the
snapshot dominates a restore either way.
"""
import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import GEN_VERSION, generate_db, parse_size, run_steps  # noqa: E402
from replicate import pick_tools  # noqa: E402


def args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cairn", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "cairn"))
    ap.add_argument("--litestream", default=shutil.which("litestream"))
    ap.add_argument("--size", type=parse_size, default=parse_size("1G"))
    ap.add_argument("--minutes", type=float, default=5)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--only", choices=["cairn", "litestream"])
    ap.add_argument("--cache-dir", type=Path,
                    default=Path(os.environ.get("CAIRN_BENCH_CACHE", Path.home() / ".cache" / "cairn-bench")))
    ap.add_argument("--json", type=Path)
    return ap.parse_args()


def rfc3339(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def count_files(d):
    return sum(len(names) for _, _, names in os.walk(d))


class Cairn:
    name = "cairn"

    def __init__(self, a):
        self.bin = a.cairn

    def start(self, db, replica, work):
        return subprocess.Popen([self.bin, "replicate", db, replica], stderr=open(work / "cairn.log", "w"))

    def ready(self, replica):
        r = subprocess.run([self.bin, "list", replica, "--generations", "--json"], capture_output=True, text=True)
        return r.returncode == 0 and "first_txid" in r.stdout

    def restores(self, replica, out, t):
        base = [self.bin, "restore", replica, "-o", out, "-q"]
        return [("cairn restore, newest", base),
                ("cairn restore --timestamp (middle)", base + ["--timestamp", rfc3339(t)]),
                ("cairn restore --timestamp (middle) --check full",
                 base + ["--timestamp", rfc3339(t), "--check", "full"])]


class Litestream:
    name = "litestream"

    def __init__(self, a):
        self.bin = a.litestream

    def start(self, db, replica, work):
        cfg = work / "litestream.yml"
        cfg.write_text(f"dbs:\n  - path: {db}\n    replicas:\n      - type: file\n        path: {replica}\n")
        return subprocess.Popen([self.bin, "replicate", "-config", cfg], stdout=subprocess.DEVNULL,
                                stderr=open(work / "litestream.log", "w"))

    def ready(self, replica):
        return any(Path(replica).glob("ltx/*/*.ltx"))

    def restores(self, replica, out, t):
        base = [self.bin, "restore", "-o", out]
        url = f"file://{replica}"
        return [("litestream restore, newest", base + [url]),
                ("litestream restore -timestamp (middle)", base + ["-timestamp", rfc3339(t), url]),
                ("litestream restore -timestamp (middle) -integrity-check full",
                 base + ["-timestamp", rfc3339(t), "-integrity-check", "full", url])]


def run_tool(tool, a, src):
    work = Path(tempfile.mkdtemp(prefix=f"cairn-pitr-{tool.name}-", dir=a.cache_dir))
    db, replica = work / "app.db", work / "replica"
    shutil.copyfile(src, db)
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")
    c.execute("PRAGMA busy_timeout=5000")
    c.execute("CREATE TABLE IF NOT EXISTS commits(n INTEGER PRIMARY KEY, at REAL, pad TEXT)")
    max_id = c.execute("SELECT max(id) FROM events").fetchone()[0]
    t0 = time.monotonic()
    p = tool.start(db, replica, work)
    while not tool.ready(replica):
        if p.poll() is not None or time.monotonic() - t0 > 600:
            raise SystemExit(f"{tool.name} did not start replicating (see {work})")
        time.sleep(0.2)
    first_sync = time.monotonic() - t0
    print(f"==> {tool.name}: first snapshot shipped in {first_sync:.1f}s; writing {a.minutes} min at {a.rate:.0f}/s",
          file=sys.stderr)
    rng = random.Random(7)
    stamps = []
    n = int(a.minutes * 60 * a.rate)
    start = time.monotonic()
    for i in range(n):
        due = start + i / a.rate
        while time.monotonic() < due:
            time.sleep(0.0005)
        c.execute("BEGIN")
        c.execute("INSERT INTO commits(n, at, pad) VALUES (?, ?, ?)", (i + 1, time.time(), os.urandom(480).hex()))
        c.execute("UPDATE events SET status = ? WHERE id = ?", (f"s{i % 7}", rng.randint(1, max_id)))
        c.execute("COMMIT")
        stamps.append(time.time())
    c.close()
    time.sleep(5)  # both tools ship within a second or two at defaults
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=120)
    objects = count_files(replica)
    mid = stamps[len(stamps) // 2]
    rows = []
    for label, argv in tool.restores(str(replica), str(work / "restored.db"), mid):
        out = work / "restored.db"
        s = run_steps([(argv, None, None)])
        got = sqlite3.connect(out).execute("SELECT count(*) FROM commits").fetchone()[0]
        if "middle" in label:
            lo = sum(1 for t in stamps if t <= mid - 2)
            hi = sum(1 for t in stamps if t <= mid)
            ok = lo <= got <= hi
            expect = f"{lo}..{hi}"
        else:
            ok, expect = got == n, str(n)
        if not ok:
            raise SystemExit(f"{label}: restored {got} commits, expected {expect} (see {work})")
        rows.append({"tool": tool.name, "op": label, "seconds": s.seconds, "rss_mib": s.rss_kib / 1024,
                     "commits_restored": got, "objects_in_replica": objects, "first_sync_s": first_sync})
        for side in ("", "-wal", "-shm"):
            Path(f"{out}{side}").unlink(missing_ok=True)
    shutil.rmtree(work)
    return rows


def main():
    a = args()
    tools = pick_tools(a, Cairn, Litestream)
    a.cache_dir.mkdir(parents=True, exist_ok=True)
    src = a.cache_dir / f"bench-v{GEN_VERSION}-{a.size}.db"
    if not src.exists():
        generate_db(src, a.size)
    rows = []
    for t in tools:
        rows += run_tool(t, a, src)
    print(f"\nPoint-in-time restore, {src.stat().st_size / 2**20:.0f} MiB database replicated at defaults into a "
          f"local directory, then {a.minutes} min of {a.rate:.0f} commits/s (insert ~1 KB + update a random row).")
    print("| op | s | peak RSS MiB | objects in replica | ratio vs cairn |")
    print("|---|---|---|---|---|")
    kind = lambda op: ("newest" in op, "full" in op)  # noqa: E731  compare like with like
    ref = {kind(r["op"]): r["seconds"] for r in rows if r["tool"] == "cairn"}
    for r in rows:
        base = ref.get(kind(r["op"]))
        ratio = f"{r['seconds'] / base:.2f}" if base else "-"
        print(f"| {r['op']} | {r['seconds']:.2f} | {r['rss_mib']:.0f} | {r['objects_in_replica']} | {ratio} |")
    by = {r["op"]: r["seconds"] for r in rows}
    c_mid, l_mid = by.get("cairn restore --timestamp (middle)"), by.get("litestream restore -timestamp (middle)")
    if c_mid and l_mid:
        print("\nTarget (issue 13 §6):")
        print(f"  {'PASS' if l_mid / c_mid >= 5 else 'FAIL'}  point-in-time restore >= 5x faster than Litestream's: "
              f"{l_mid / c_mid:.2f}x")
    out = a.json or a.cache_dir / "last-pitr.json"
    out.write_text(json.dumps({"generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "settings": {k: str(v) for k, v in vars(a).items()}, "rows": rows}, indent=2))
    print(f"==> wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
