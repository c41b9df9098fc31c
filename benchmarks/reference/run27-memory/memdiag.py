"""Run `isostream dashboard` with a memory diary: every 60 s RSS, glibc mallinfo2, gc counts by type,
tracemalloc totals; tracemalloc snapshots dumped at chosen minutes for later diffing."""
import collections
import ctypes
import gc
import json
import os
import sys
import threading
import time
import tracemalloc

OUT = os.environ.get("MEMDIAG_OUT", "/tmp/exp/memdiag")
TRACE = int(os.environ.get("MEMDIAG_TRACE", "0"))
os.makedirs(OUT, exist_ok=True)
if TRACE:
    tracemalloc.start(int(os.environ.get("MEMDIAG_FRAMES", "8")))


class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def pymalloc() -> dict:
    path = f"{OUT}/pymalloc.txt"
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.dup2(fd, 2)
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(fd)
        os.close(saved)
    out = {}
    for line in open(path):
        for key, name in (("# arenas allocated current", "py_arenas"), ("# bytes in allocated blocks", "py_alloc_mb"),
                          ("# bytes in available blocks", "py_avail_mb"), ("# bytes in unused pools", "py_unused_mb")):
            if line.startswith(key):
                v = int(line.split("=")[1].replace(",", "").strip())
                out[name] = v if name == "py_arenas" else v / 2**20
        if "unused pools *" in line:
            out["py_unused_mb"] = int(line.split("=")[1].replace(",", "").strip()) / 2**20
    return out


def status_split() -> dict:
    out = {}
    for line in open("/proc/self/status"):
        if line.startswith(("RssAnon", "RssFile")):
            k, v = line.split(":")
            out[k] = int(v.split()[0]) / 1024
    return out


def diary() -> None:
    t0 = time.time()
    snaps = {3, 10, 20, 28, 36, 44}
    prev = {}
    m = 0
    while True:
        time.sleep(max(0.0, t0 + 60 * (m + 1) - time.time()))
        m += 1
        mi = libc.mallinfo2()
        counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
        delta = {k: v - prev.get(k, 0) for k, v in counts.items() if abs(v - prev.get(k, 0)) > 200}
        prev = counts
        try:
            import pyarrow as pa
            pa_bytes = pa.total_allocated_bytes()
        except Exception:
            pa_bytes = None
        row = {"min": m, "rss_mb": rss() / 2**20, "arena_mb": mi.arena / 2**20, "mmap_mb": mi.hblkhd / 2**20,
               "inuse_mb": mi.uordblks / 2**20, "free_mb": mi.fordblks / 2**20, "threads": threading.active_count(),
               "pa_mb": None if pa_bytes is None else pa_bytes / 2**20, "gc_objects": sum(counts.values()),
               **pymalloc(), **status_split(), "blocks": sys.getallocatedblocks(),
               "type_delta": dict(sorted(delta.items(), key=lambda kv: -abs(kv[1]))[:15])}
        if TRACE:
            cur, peak = tracemalloc.get_traced_memory()
            row["traced_mb"] = cur / 2**20
            if m in snaps:
                tracemalloc.take_snapshot().dump(f"{OUT}/snap-{m:02d}.tm")
        with open(f"{OUT}/diary.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


threading.Thread(target=diary, daemon=True, name="memdiag").start()
sys.path.insert(0, "/work/main")
from engine.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
