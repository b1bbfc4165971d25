"""`python -m benchmarks audit`: how long `classify audit` takes on a real store, and its peak memory at scale.

1. With `--features STORE` (the Dogs vs. Cats mobilenet_v2 store: 2,000 × 1,280), the audit in this process, each
   step timed; the bar is the whole audit minus the UMAP map under 60 s on 2 cores.
2. For each of `--rows` (default 25,000 and 100,000), a synthetic store of `--dim` float32 features (two classes,
   70/15/15), audited without the map by `python -m classify audit` in a child process: wall time and peak RSS,
   against the features' size and the n × n similarity matrix that blocked search never holds.
3. With `--recall ROWS`, the faiss index used beyond `EXACT_MAX` rows against exact search on the same clustered
   synthetic rows with planted near copies: the share of similar pairs and outliers it finds, and its error
   in each row's kNN similarity.
"""
import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

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


def recall(rows: int, dim: int, k: int = audit.NEIGHBOURS) -> str:
    """The faiss index against exact search: clusters of 100 rows (cosine about 0.5 within), 1% of the rows
    replaced by near copies of others (cosine about 0.97), 0.1% far from everything."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(max(1, rows // 100), dim)).astype(np.float32)
    X = centres[rng.integers(len(centres), size=rows)] + rng.normal(size=(rows, dim)).astype(np.float32)
    planted = rng.choice(rows, rows // 50 + rows // 1000, replace=False)
    copies, originals, far = np.split(planted, [rows // 100, rows // 50])
    X[copies] = X[originals] + 0.25 * rng.normal(size=(len(copies), dim)).astype(np.float32)
    X[far] = 3 * rng.normal(size=(len(far), dim)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    timed_runs = {}
    for name, search in (("exact", audit.neighbours), ("index", audit.indexed_neighbours)):
        started = time.perf_counter()
        timed_runs[name] = search(X, audit.THRESHOLD, k), time.perf_counter() - started
    (exact, exact_s), (index, index_s) = timed_runs["exact"], timed_runs["index"]
    pairs = [set(zip(found[0].tolist(), found[1].tolist())) for found in (exact, index)]
    outliers = [{f.row for f in audit.outlier_findings(found[3], audit.OUTLIER_Z)[0]} for found in (exact, index)]
    error = np.abs(index[3] - exact[3])
    return (f"{rows:>9,} x {dim} clustered rows, faiss index vs exact search ({exact_s:.0f}s): {index_s:.0f}s; "
            f"pairs with cosine >= {audit.THRESHOLD:g}: {len(pairs[0] & pairs[1])} of {len(pairs[0])} found "
            f"({len(pairs[1] - pairs[0])} not in exact); outliers: {len(outliers[0] & outliers[1])} of "
            f"{len(outliers[0])} ({len(outliers[1] - outliers[0])} more); kNN similarity error median "
            f"{np.median(error):.4f}, max {error.max():.4f}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--features", type=Path, metavar="STORE",
                   help="a real store to time the audit on (e.g. runs/dogs-vs-cats-train/mobilenet_v2.h5)")
    p.add_argument("--rows", type=int, nargs="*", default=[25_000, 100_000],
                   help="synthetic store sizes for peak RSS (default 25000 100000; none: skip)")
    p.add_argument("--dim", type=int, default=1280, help="synthetic features' width (default 1280)")
    p.add_argument("--recall", type=int, nargs="*", default=[], metavar="ROWS",
                   help="sizes at which to compare the faiss index with exact search (e.g. 30000; default none)")


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
    for rows in args.recall:
        print(recall(rows, args.dim), flush=True)
    return 0
