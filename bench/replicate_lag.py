#!/usr/bin/env python3
"""Replication lag of `cairn replicate` into a local directory: commit to
segment visible at the destination (renamed into place, so durable).

usage: bench/replicate_lag.py [CAIRN_BIN] [--rate 200] [--commits 2000] [--interval 50ms]

Writes --commits transactions of one ~1 KB row at --rate per second into a
fresh WAL database while `cairn replicate` runs with default settings
(except --interval if given), watches the destination's segment names
(generations/<gen>/segments/00/<min>-<max>.seg.gz) every millisecond, and
prints p50/p99/max lag, bytes shipped and segment count."""
import os, sqlite3, subprocess, sys, tempfile, threading, time, glob, argparse, signal

ap = argparse.ArgumentParser()
ap.add_argument("cairn", nargs="?", default=os.path.expanduser(
    os.environ.get("CARGO_TARGET_DIR", "target") + "/release/cairn"))
ap.add_argument("--rate", type=float, default=200)
ap.add_argument("--commits", type=int, default=2000)
ap.add_argument("--interval", default=None)
a = ap.parse_args()

d = tempfile.mkdtemp(prefix="cairn-lag-")
db = os.path.join(d, "app.db")
dest = os.path.join(d, "replica")
c = sqlite3.connect(db, isolation_level=None)
c.execute("PRAGMA journal_mode=WAL")
c.execute("PRAGMA synchronous=NORMAL")
c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
args = [a.cairn, "replicate", db, dest] + (["--interval", a.interval] if a.interval else [])
p = subprocess.Popen(args, stderr=subprocess.PIPE)
while not glob.glob(dest + "/log/*.json") or len(glob.glob(dest + "/log/*.json")) < 2:
    time.sleep(0.01)
seen = {}  # max txid -> first time seen
stop = False
def watch():
    while not stop:
        now = time.monotonic()
        for f in glob.glob(dest + "/generations/*/segments/00/*.seg.*"):
            hi = int(os.path.basename(f).split("-")[1].split(".")[0], 16)
            seen.setdefault(hi, now)
        time.sleep(0.001)
w = threading.Thread(target=watch); w.start()
base = 0  # the first generation's WAL was empty: txid i+1 is commit i
commits = []
t0 = time.monotonic()
for i in range(a.commits):
    target = t0 + i / a.rate
    while time.monotonic() < target:
        time.sleep(0.0005)
    c.execute("INSERT INTO t(v) VALUES (?)", (os.urandom(512).hex(),))
    commits.append(time.monotonic())
time.sleep(1.0)
stop = True; w.join()
p.send_signal(signal.SIGTERM); p.wait()
his = sorted(seen)
lags = []
import bisect
for i, tc in enumerate(commits):
    txid = base + i + 1
    j = bisect.bisect_left(his, txid)
    if j == len(his):
        print("txid", txid, "never shipped"); sys.exit(1)
    lags.append((min(seen[h] for h in his[j:]) - tc) * 1000)
lags.sort()
segs = glob.glob(dest + "/generations/*/segments/*/*.seg.*")
size = sum(os.path.getsize(f) for f in segs)
print(f"commits {len(lags)} at {a.rate}/s: lag p50 {lags[len(lags)//2]:.1f} ms, p99 {lags[int(len(lags)*0.99)]:.1f} ms, max {lags[-1]:.1f} ms")
print(f"segments {len(segs)}, bytes shipped {size} ({size/len(lags):.0f} per commit)")
