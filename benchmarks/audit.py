"""`python -m benchmarks audit`: how long `classify audit` takes on a real store, and its peak memory at scale.

1. With `--features STORE` (the Dogs vs. Cats mobilenet_v2 store: 2,000 × 1,280), the audit in this process, each
   step timed; the bar is the whole audit minus the UMAP map under 60 s on 2 cores.
2. For each of `--rows` (default 25,000 and 100,000), a synthetic store of `--dim` float32 features (two classes,
   70/15/15), audited without the map by `python -m classify audit` in a child process: wall time and peak RSS,
   against the features' size and the n × n similarity matrix that blocked search never holds.
"""
import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.peak_rss import run_measured
from benchmarks.scale import synthetic_store
from classify import audit


def timed(store: Path) -> str:
    started = time.perf_counter()
    a = audit.audit([store])
    total = time.perf_counter() - started
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in a.seconds.items())
    counts = ", ".join(f"{kind} {len(a.of(kind))}" for kind in audit.KINDS)
    return (f"audit of {store} ({len(a.paths)} images): {total - a.seconds['map']:.1f}s without the map "
            f"(target < 60s), {total:.1f}s with it ({steps}); found {counts}")


def at_scale(folder: Path, rows: int, dim: int) -> str:
    store = folder / f"synthetic-{rows}" / "features.h5"
    synthetic_store(store, rows, dim, classes=2)
    started = time.perf_counter()
    _, peak_mib, _ = run_measured("classify", ["audit", "--features", store, "--no-map", "--quiet"])
    seconds = time.perf_counter() - started
    return (f"{rows:>9,} x {dim} synthetic rows: {seconds:.0f}s, peak RSS {peak_mib / 1024:.2f} GiB "
            f"(features {rows * dim * 4 / 2**30:.2f} GiB; an n x n float32 similarity matrix would be "
            f"{rows * rows * 4 / 2**30:.1f} GiB)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--features", type=Path, metavar="STORE",
                   help="a real store to time the audit on (e.g. runs/dogs-vs-cats-train/mobilenet_v2.h5)")
    p.add_argument("--rows", type=int, nargs="*", default=[25_000, 100_000],
                   help="synthetic store sizes for peak RSS (default 25000 100000; none: skip)")
    p.add_argument("--dim", type=int, default=1280, help="synthetic features' width (default 1280)")


def main(args: argparse.Namespace) -> int:
    print(f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the start")
    if args.features:
        print(timed(args.features), flush=True)
    folder = Path(tempfile.mkdtemp(prefix="featbench-audit-"))
    try:
        for rows in args.rows:
            print(at_scale(folder, rows, args.dim), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0
