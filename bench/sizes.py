#!/usr/bin/env python3
"""cairn's cost per database size (issue 14 §4): backup, sandboxed and native
verify, and restore of the 1 GiB and 8 GiB bench databases, time and peak RSS,
so that a user sees time grow linearly and memory stay flat.

usage: bench/sizes.py [--cairn BIN] [--sizes 1G,8G] [--reps 1] [--json OUT]

For each size, on bench/bench.py's generated database (cached in
~/.cache/cairn-bench; an 8 GiB one takes about 4 minutes to generate and
needs about 30 GB of free disk for the database, its backup, the verify
scratch and a restore):

1. `cairn backup DB DIR --key-file K`: the default encrypted archive (zstd-3);
2. `cairn verify DIR --key-file K`: the whole check inside the WebAssembly
   sandbox (decode, sums, integrity_check, foreign_key_check, row counts),
   which records the pass in the catalog;
3. `cairn verify DIR --key-file K --no-sandbox`: the same checks natively;
4. `cairn restore DIR -o OUT --key-file K`: the default restore, whose bytes
   are proven by the recorded pass and the plaintext SHA-256;
5. `cairn restore ... --check full`: integrity_check on the result anyway.

Every step is timed by wall clock with its peak RSS from GNU time (one child
per step, as bench/bench.py does); each restore is checked against the
source's row count and checksum. The table gives seconds, seconds per GiB
and peak RSS, and the sandboxed/native verify ratio (issue 14 §3's target:
at most 1.5). Not a timed test: run it on an idle machine.
"""
import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import (  # noqa: E402
    GEN_VERSION, BenchError, db_fingerprint, dir_size, fresh, generate_db, human, parse_size, run_steps,
)

GIB = 1 << 30


def args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cairn", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "target"), "release", "cairn"))
    ap.add_argument("--sizes", default="1G,8G", help="database sizes (default 1G,8G)")
    ap.add_argument("--reps", type=int, default=1, help="timed rounds per size (default 1; the median is shown)")
    ap.add_argument("--cache-dir", type=Path,
                    default=Path(os.environ.get("CAIRN_BENCH_CACHE", Path.home() / ".cache" / "cairn-bench")))
    ap.add_argument("--json", type=Path, help="write the results here (default CACHE/last-sizes.json)")
    return ap.parse_args()


def ops(cairn, db, work, key):
    dest = work / "dest"
    out = work / "restored.db"
    k = ["--key-file", key, "-q"]
    return [
        ("backup (encrypted, zstd-3)", [cairn, "backup", db, dest, *k], None),
        ("verify, sandboxed (records the pass)", [cairn, "verify", dest, *k], None),
        ("verify --no-sandbox", [cairn, "verify", dest, *k, "--no-sandbox"], None),
        ("restore (pass recorded)", [cairn, "restore", dest, "-o", out, *k], out),
        ("restore --check full", [cairn, "restore", dest, "-o", out, *k, "--check", "full"], out),
    ]


def measure(a, label):
    size = parse_size(label)
    db = a.cache_dir / f"bench-v{GEN_VERSION}-{size}.db"  # bench/bench.py's cache name
    if not db.exists():
        generate_db(db, size)
    expected = db_fingerprint(db)
    rounds = []
    for r in range(a.reps):
        work = fresh(a.cache_dir / f"sizes-{os.getpid()}")
        key = work / "cairn.key"
        run_steps([([a.cairn, "keygen", "-o", key], None, None)])
        row = {}
        for name, argv, out in ops(a.cairn, db, work, key):
            s = run_steps([(argv, None, None)])
            if out is not None:
                got = db_fingerprint(out)
                if got != expected:
                    raise BenchError(f"{name}: the restored database differs: {got} != {expected}")
                out.unlink()
            row[name] = {"seconds": s.seconds, "rss_kib": s.rss_kib}
            print(f"  {human(size)} round {r + 1}: {name}: {s.seconds:.2f} s, {s.rss_kib / 1024:.1f} MiB",
                  file=sys.stderr)
        row["archive_bytes"] = dir_size(work / "dest")
        rounds.append(row)
        shutil.rmtree(work)
    names = [n for n, _, _ in ops("", "", Path("."), "")]
    med = {}
    for n in names:
        secs = sorted(r[n]["seconds"] for r in rounds)
        med[n] = {"seconds": secs[len(secs) // 2], "rss_kib": max(r[n]["rss_kib"] for r in rounds)}
    return {"size": size, "db_bytes": db.stat().st_size, "ops": med,
            "archive_bytes": rounds[-1]["archive_bytes"]}


def table(results):
    lines = ["| size | op | s | s per GiB | peak RSS MiB |", "|---|---|---|---|---|"]
    for res in results:
        gib = res["db_bytes"] / GIB
        for n, v in res["ops"].items():
            lines.append(f"| {human(res['db_bytes'])} | {n} | {v['seconds']:.2f} | "
                         f"{v['seconds'] / gib:.2f} | {v['rss_kib'] / 1024:.1f} |")
    lines.append("")
    for res in results:
        o = res["ops"]
        ratio = o["verify, sandboxed (records the pass)"]["seconds"] / o["verify --no-sandbox"]["seconds"]
        verdict = "PASS" if ratio <= 1.5 else "FAIL"
        lines.append(f"{human(res['db_bytes'])}: sandboxed/native verify = {ratio:.2f} "
                     f"({verdict}, target <= 1.5); archive {human(res['archive_bytes'])}")
    return "\n".join(lines)


def main():
    a = args()
    a.cairn = str(Path(a.cairn).resolve())
    if not Path(a.cairn).is_file():
        sys.exit(f"sizes: no cairn binary at {a.cairn}: build it (cargo build --release) or pass --cairn")
    a.cache_dir.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for s in a.sizes.split(","):
            results.append(measure(a, s.strip()))
    except BenchError as e:
        sys.exit(f"sizes: FAILED: {e}")
    out = a.json or (a.cache_dir / "last-sizes.json")
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "results": results}, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
