"""`python -m features info FILE…`: what a feature store holds and how it was made.
`python -m features merge SHARD…`: one store from the shard stores of a distributed extraction."""
import argparse
import sys
from collections import Counter

from features.cli import run_cli
from features.merge import merge
from features.reader import FeatureStore
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
                 f"  dataset      {ds.get('name', '?')} ({ds.get('format', '?')}) at {ds.get('root', '?')}",
                 f"  embeddings   {len(store.paths)} x {store.dim} {m.dtype}, fingerprint {m.fingerprint}",
                 f"  classes      {len(store.class_names)}: {', '.join(store.class_names[:8])}"
                 f"{' …' if len(store.class_names) > 8 else ''}"]
        for code, name in enumerate(SPLITS):
            mask = store.splits == code
            unlabelled = int((store.labels[mask] == NO_LABEL).sum())
            lines.append(f"  {name:<12} {int(mask.sum())} images" + (f" ({unlabelled} unlabelled)" if unlabelled else ""))
        lines.append(f"  splits       fingerprint {m.split_fingerprint}, fractions "
                     f"{_known(m.split_fractions)}, seed {_known(m.split_seed)}")
        skipped = store.skipped
        reasons = Counter(why.split(" (")[0] for _, why, *_ in skipped)
        lines.append(f"  skipped      {len(skipped)}" + (f": {dict(reasons)}" if skipped else ""))
        rate = m.images_per_second
        lines.append(f"  made         {_known(m.created)} on {_known(m.device)}, "
                     f"{_known(m.extraction_seconds)}s" + (f", {rate} img/s" if rate else ""))
        lines.append("  versions     " + (", ".join(f"{k} {v}" for k, v in (m.versions or {}).items()) or "?"))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m features", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("info", help="summarise stores")
    i.add_argument("files", nargs="+")
    m = sub.add_parser("merge", help="merge shards 0..N-1 of a distributed extraction into one store")
    m.add_argument("files", nargs="+", metavar="SHARD", help="DATASET/shards/NAME.shard-R-of-N.h5 files")
    m.add_argument("--out", help="merged store (default: DATASET/NAME.h5, beside the shards/ folder)")
    args = p.parse_args(argv)
    if args.command == "merge":
        print(info(merge(args.files, args.out)))
    else:
        print("\n".join(info(f) for f in args.files))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
