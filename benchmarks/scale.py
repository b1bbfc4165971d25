"""`python -m benchmarks scale`: a logistic-regression head trained out of core on a store too big for memory.

Writes a synthetic feature store (default 1,000,000 rows × 1,280 float32 features, two classes, the
default 70/15/15 split), then runs `python -m classify --head logreg --max-memory 1G` on it in a
child process and prints the child's wall time, peak RSS (target: under 2 GiB, against a 4.8 GiB
feature matrix) and test accuracy. The store and models are kept under `--out OUT` (OUT/synthetic/), or
written to a temporary folder and deleted afterwards; a kept store is reused by a run asking for its size, and
rewritten by one asking for another.
"""
import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.peak_rss import run_measured
from features import Extraction, FeatureStore, ModelMetrics, write_store
from features.atomic import check_folder
from features.cli import parse_size
from features.errors import FeatbenchError, StoreError
from features.schema import SPLITS


def synthetic_store(path: Path, rows: int, dim: int, classes: int, seed: int = 0, chunk: int = 65536) -> Path:
    """Class clusters in `dim` dimensions plus unit noise, written chunk by chunk (never whole in memory)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32) * (2.0 / np.sqrt(dim))
    labels = np.arange(rows) % classes
    splits = rng.choice(len(SPLITS), size=rows, p=[0.7, 0.15, 0.15]).astype(np.int8)

    def chunks():
        for start in range(0, rows, chunk):
            y = labels[start:start + chunk]
            yield rng.normal(size=(len(y), dim)).astype(np.float32) + centres[y]

    meta = Extraction(backbone="synthetic", weights_fingerprint="synthetic", preprocess={},
                      weights={"source": "synthetic", "fingerprint": "synthetic"},
                      dataset={"root": "", "format": "synthetic", "name": path.parent.name, "target": "",
                               "classes": classes, "files": rows},
                      split_fractions=[0.7, 0.15, 0.15], split_seed=seed, versions={})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_store(path, dim=dim, chunks=chunks(), labels=labels, paths=[f"synthetic/{i:07d}.jpg" for i in range(rows)],
                splits=splits, hashes=[""] * rows, stamps=[""] * rows, skipped=[],
                class_names=[f"class{c}" for c in range(classes)], meta=meta)
    return path


def held(store: Path) -> tuple[int, int, int] | None:
    """(rows, dim, classes) of the store at `store`; None where there is no readable one."""
    try:
        with FeatureStore(store) as fs:
            return fs.meta.rows, fs.dim, len(fs.class_names)
    except StoreError:
        return None


def out_of_core(store: Path, max_memory: int) -> dict:
    """`python -m classify --head logreg` on `store` in a child process: wall time and peak RSS."""
    start = time.perf_counter()
    run, peak_mib, _ = run_measured("classify", ["--features", store, "--head", "logreg",
                                                 "--max-memory", str(max_memory)])
    seconds = time.perf_counter() - start
    metrics = ModelMetrics.read(store.parent / "models" / f"{store.stem}-logreg.metrics.json")
    return {"seconds": seconds, "peak_rss_gib": peak_mib / 1024,
            "accuracy": metrics.accuracy, "params": metrics.params, "out_of_core": metrics.out_of_core,
            "log": run.stderr.strip().splitlines()}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--max-memory", type=parse_size, default="1G", metavar="SIZE",
                   help="classify's --max-memory (default 1G)")
    p.add_argument("--out", type=Path,
                   help="output folder: the store and models go to OUT/synthetic/ and are kept (default: a "
                        "temporary folder, deleted afterwards)")


def main(args: argparse.Namespace) -> int:
    if min(args.rows, args.dim) < 1 or args.classes < 2:
        raise FeatbenchError("--rows and --dim must be at least 1, --classes at least 2")
    if args.out:
        check_folder(args.out / "synthetic")
    folder = args.out or Path(tempfile.mkdtemp(prefix="featbench-scale-"))
    store = folder / "synthetic" / "features.h5"
    start, wanted, found = time.perf_counter(), (args.rows, args.dim, args.classes), held(store)
    if found and found != wanted:
        print(f"note: {store} holds {found[0]:,} rows x {found[1]} features in {found[2]} classes, not the "
              f"{args.rows:,} x {args.dim} in {args.classes} asked for: rewriting it", file=sys.stderr)
    if found != wanted:
        synthetic_store(store, *wanted)
    gib = args.rows * args.dim * 4 / 2**30
    made = "reused" if found == wanted else f"{time.perf_counter() - start:.0f}s to write"
    print(f"store: {args.rows:,} rows x {args.dim} float32 = {gib:.1f} GiB of features, "
          f"{store.stat().st_size / 2**30:.1f} GiB on disk ({made})")
    try:
        r = out_of_core(store, args.max_memory)
    finally:
        if args.out is None:
            shutil.rmtree(folder, ignore_errors=True)
    for line in r["log"]:
        print(f"  {line}")
    print(f"classify --head logreg --max-memory {args.max_memory / 2**30:.2f} GiB: {r['seconds']:.0f}s, "
          f"peak RSS {r['peak_rss_gib']:.2f} GiB "
          f"({'under' if r['peak_rss_gib'] < 2 else 'OVER'} the 2 GiB target), out of core: {r['out_of_core']}, "
          f"test accuracy {r['accuracy']:.4f}, chosen {r['params']}")
    return 0
