"""`python -m features`: what feature stores hold, one store from the shards of a distributed extraction, and a
store's rows exported for other tools."""
import argparse
import sys
from collections import Counter
from pathlib import Path

import features.export as exporting
from features.cli import Command, CommandLine, run_cli
from features.merge import merge
from features.reader import FeatureStore, verify
from features.schema import NO_LABEL, SPLITS


def _known(value):
    return "?" if value is None else value


def info(path) -> str:
    """A summary of one store; metadata a minimal store lacks shows as '?'."""
    with FeatureStore(path) as store:
        m = store.meta
        ds = m.dataset or {}
        lines = [f"{store.path}",
                 f"  backbone     {_known(m.backbone)} ({(m.weights or {}).get('source', '?')}, "
                 f"weights fingerprint {_known(m.weights_fingerprint)})",
                 f"  preprocess   {_known(m.preprocess)}",
                 f"  readout      {', '.join(f'{k} {v}' for k, v in (m.readout or {}).items()) or 'default'}",
                 f"  arithmetic   {_arithmetic(m)}",
                 f"  dataset      {ds.get('name', '?')} ({ds.get('format', '?')}) at {ds.get('root', '?')}",
                 f"  embeddings   {len(store.paths)} x {store.dim} {m.dtype}, fingerprint {m.fingerprint}",
                 f"  classes      {len(store.class_names)}: {', '.join(store.class_names[:8])}"
                 f"{' …' if len(store.class_names) > 8 else ''}"]
        for code, name in enumerate(SPLITS):
            mask = store.splits == code
            unlabelled = int((store.labels[mask] == NO_LABEL).sum())
            lines.append(f"  {name:<12} {int(mask.sum())} images"
                         + (f" ({unlabelled} unlabelled)" if unlabelled else ""))
        lines.append(f"  splits       fingerprint {m.split_fingerprint}, fractions "
                     f"{_known(m.split_fractions)}, seed {_known(m.split_seed)}")
        skipped = store.skipped
        reasons = Counter(why.split(" (")[0] for _, why, *_ in skipped)
        lines.append(f"  skipped      {len(skipped)}" + (f": {dict(reasons)}" if skipped else ""))
        rate = m.images_per_second
        lines.append(f"  made         {_known(m.created)} on {_known(m.device)}, "
                     f"{_known(m.extraction_seconds)}s" + (f", {rate} img/s" if rate else ""))
        if m.images_embedded_total is not None:
            cost = m.cost()
            lines.append(f"  cost         {cost.images} images embedded in {cost.seconds}s over its runs"
                         + (f", {cost.rate} img/s" if cost.rate else ""))
        lines.append("  versions     " + (", ".join(f"{k} {v}" for k, v in (m.versions or {}).items()) or "?"))
    return "\n".join(lines)


def _arithmetic(m) -> str:
    """How a store's model ran: precision (int8's calibration set), CUDA autocast, JPEGs decoded on the GPU."""
    words = [m.precision]
    if m.calibration:
        words[0] += f" (calibrated on {m.calibration['images']} images, sha256 {m.calibration['sha256'][:12]})"
    if m.amp:
        words.append(f"CUDA autocast {m.amp_dtype or '?'}")
    if m.gpu_decode:
        words.append("JPEGs decoded on the GPU")
    return ", ".join(words)


def _shown(text: str) -> str:
    """Text with control characters (a newline, a terminal escape) quoted, as Python writes it."""
    return text if text.isprintable() else repr(text)


def skipped_lines(path) -> str:
    """The store's skipped files, one `path: reason` line each, sorted by path."""
    with FeatureStore(path) as store:
        skipped = sorted(store.skipped)
    return "\n".join([f"{path}: {len(skipped)} skipped"] + [f"  {_shown(p)}: {_shown(why)}" for p, why, *_ in skipped])


def add_info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="STORE")
    p.add_argument("--skipped", action="store_true", help="also list each skipped file with its reason")


def info_command(args) -> int:
    print("\n".join(info(f) + (f"\n{skipped_lines(f)}" if args.skipped else "") for f in args.files))
    return 0


def add_verify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="STORE")


def verify_command(args) -> int:
    """One line per store (OK, what is wrong with it, or unverified); exit 1 when anything is wrong."""
    results = [verify(f) for f in args.files]
    print("\n".join(line for _, line in results))
    return 0 if all(ok for ok, _ in results) else 1


def add_merge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="SHARD", help="DATASET/shards/NAME.shard-R-of-N.h5 files")
    p.add_argument("--out", type=Path,
                   help="output folder: the store goes to OUT/DATASET/NAME.h5 (default: beside the shards/ folder)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the store there even when made from another folder or holding rows the shards lack")


def merge_command(args) -> int:
    print(info(merge(args.files, args.out, args.overwrite)))
    return 0


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.description = exporting.__doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("file", type=Path, metavar="STORE")
    p.add_argument("--format", required=True, choices=exporting.FORMATS,
                   help="npy (a folder of arrays) or parquet (one table)")
    p.add_argument("--out", type=Path,
                   help="where to write (default: beside the store, STEM-export/ for npy, STEM.parquet for parquet)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export there")


def export_command(args) -> int:
    with FeatureStore(args.file) as store:
        n, dim = len(store.paths), store.dim
    written = exporting.export(args.file, args.format, args.out, args.overwrite)
    print(f"{written}: {n} rows x {dim} float32, with paths, labels and splits")
    return 0


CLI = CommandLine("python -m features", __doc__, {
    "info": Command("summarise stores: what they hold and how they were made", add_info_arguments, info_command),
    "verify": Command("check a store's embeddings against their checksums, and its labels and splits",
                      add_verify_arguments, verify_command),
    "merge": Command("merge shards 0..N-1 of a distributed extraction into one store", add_merge_arguments,
                     merge_command),
    "export": Command("write a store's embeddings, paths, labels and splits as npy arrays or a parquet table",
                      add_export_arguments, export_command),
})
main = CLI.main


if __name__ == "__main__":
    sys.exit(run_cli(main))
