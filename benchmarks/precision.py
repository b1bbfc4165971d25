"""`python -m benchmarks precision`: what a reduced `--precision` (bf16, int8) costs downstream, on real labelled
datasets, against fp32 on the same images.

For each backbone and dataset it extracts (or reuses, in `--out`) the fp32 store and one store per reduced
precision, then compares each with fp32, both sides given the same care (logreg, C chosen on featbench's val
split for each store, as `classify` chooses it):
  cosine       each image's embedding to its fp32 embedding: min and median
  test split   `classify --head logreg` on each store: test accuracy and log-loss (featbench's split; on
               small sets one image moves accuracy by more than the bar)
  out of fold  logreg out of fold over every labelled image, the same folds for both stores: accuracy and
               log-loss at several times the test split's resolution, the images whose predicted class
               changes, and an exact McNemar test of the right-to-wrong against the wrong-to-right ones;
               and the reduced store's fold models on the fp32 rows (`classify predict` embeds new images
               for an int8 store's model in fp32)
and the bars: accuracy within ACCURACY_POINTS of fp32 and log-loss within LOG_LOSS_SHARE, out of fold.
"""
import argparse
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from benchmarks.speed import check_json, logreg_test, store_cosines
from classify.heads import HEADS
from classify.metrics import mcnemar_p, proba
from classify.select import fit_fixed, sweep
from classify.train import BLAS_THREADS, load_store
from extract.backbones import create_backbone
from extract.datasets import load_dataset
from extract.device import pick_device
from extract.pipeline import Options, extract
from extract.quantize import PRECISIONS, check_precision
from features.atomic import atomic_write
from features.errors import FeatbenchError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_DATA = [DATA / "dogs-vs-cats", DATA / "oxford-pets-subset"]
FOLDS = 5
ACCURACY_POINTS = 0.3  # the bars a reduced precision is held to: accuracy within 0.3 points of fp32 ...
LOG_LOSS_SHARE = 0.10  # ... and log-loss within 10%


def labelled(path: Path):
    """(the store, relative paths, features, labels) of every labelled image of the store, sorted by path."""
    s = load_store(path)
    parts = [s.train, s.val, s.test]
    paths = [p for part in parts for p in part.paths]
    order = np.argsort(paths)
    X, y = np.vstack([part.X for part in parts])[order], np.concatenate([part.y for part in parts])[order]
    return s, [paths[i] for i in order], X, y


def out_of_fold(path: Path, folds: int = FOLDS, fp32: Path | None = None) -> tuple:
    """(labels, probabilities, the same on `fp32`'s rows, chosen C) of every labelled image of the store, sorted
    by path: logreg's C chosen on train → val, then each image scored by a logreg fitted on the other folds, which
    depend only on the paths and labels (two stores of the same images get the same folds). With `fp32`, a store
    of the same images, the same fold models also score its rows (else None)."""
    s, paths, X, y = labelled(path)
    p = np.zeros((len(y), len(s.class_names)))
    X_fp32 = p_fp32 = None
    if fp32 is not None:
        _, paths_fp32, X_fp32, y_fp32 = labelled(fp32)
        if paths_fp32 != paths or not np.array_equal(y, y_fp32):
            raise FeatbenchError(f"{path}: not the same labelled images as {fp32}; extract both from one dataset")
        p_fp32 = np.zeros_like(p)
    k = p.shape[1]
    template = HEADS["logreg"].make()
    with threadpool_limits(limits=BLAS_THREADS):
        chosen = sweep(template, HEADS["logreg"].grid(len(s.train)), s.train.X, s.train.y, s.val.X, s.val.y, k)
        with warnings.catch_warnings():  # a class with fewer images than folds: held out, it is never learnt
            warnings.simplefilter("ignore", UserWarning)
            split = list(StratifiedKFold(folds, shuffle=True, random_state=0).split(X, y))
        for fit, held in split:
            model = fit_fixed(template, chosen.fixed, X[fit], y[fit])
            p[held] = proba(model, X[held], k)
            if p_fp32 is not None:
                p_fp32[held] = proba(model, X_fp32[held], k)
    return y, p, p_fp32, chosen.params


def compare(store: Path, fp32: Path, folds: int = FOLDS) -> dict:
    """One reduced-precision store against the fp32 store of the same images (the module docstring's figures),
    as a flat dict."""
    y, p, p_on_fp32, params = out_of_fold(store, folds, fp32)  # first: it checks that both hold the same images
    cos = store_cosines(store, fp32)
    test, test_fp32 = logreg_test(store), logreg_test(fp32)
    _, p_fp32, _, params_fp32 = out_of_fold(fp32, folds)
    labels = list(range(p.shape[1]))
    right, right_fp32 = p.argmax(1) == y, p_fp32.argmax(1) == y
    out = {"images": len(y), "min_cosine": float(cos.min()), "median_cosine": float(np.median(cos)),
           "test_images": test["n_test"], "test_accuracy": test["accuracy"], "test_log_loss": test["log_loss"],
           "fp32_test_accuracy": test_fp32["accuracy"], "fp32_test_log_loss": test_fp32["log_loss"],
           "folds": folds, "C": params["C"], "fp32_C": params_fp32["C"],
           "oof_accuracy": float(right.mean()), "oof_log_loss": float(log_loss(y, p, labels=labels)),
           "fp32_oof_accuracy": float(right_fp32.mean()),
           "fp32_oof_log_loss": float(log_loss(y, p_fp32, labels=labels)),
           "changed_predictions": int((p.argmax(1) != p_fp32.argmax(1)).sum()),
           "right_to_wrong": int((right_fp32 & ~right).sum()), "wrong_to_right": int((~right_fp32 & right).sum()),
           "on_fp32_accuracy": float((p_on_fp32.argmax(1) == y).mean()),
           "on_fp32_log_loss": float(log_loss(y, p_on_fp32, labels=labels))}
    out["mcnemar_p"] = mcnemar_p(out["right_to_wrong"], out["wrong_to_right"])
    out["accuracy_points"] = (out["oof_accuracy"] - out["fp32_oof_accuracy"]) * 100
    out["log_loss_change"] = out["oof_log_loss"] / out["fp32_oof_log_loss"] - 1
    out["within_bars"] = out["accuracy_points"] >= -ACCURACY_POINTS and out["log_loss_change"] <= LOG_LOSS_SHARE
    return out


def print_row(r: dict) -> None:
    print(f"{r['backbone']} on {r['dataset']} ({r['images']} labelled images), {r['precision']} vs fp32:")
    print(f"  cosine to fp32    min {r['min_cosine']:.4f}, median {r['median_cosine']:.4f}")
    print(f"  test split        accuracy {r['test_accuracy']:.2%} vs {r['fp32_test_accuracy']:.2%} "
          f"({(r['test_accuracy'] - r['fp32_test_accuracy']) * 100:+.2f} points; {r['test_images']} images), "
          f"log-loss {r['test_log_loss']:.4f} vs {r['fp32_test_log_loss']:.4f} "
          f"({r['test_log_loss'] / r['fp32_test_log_loss'] - 1:+.0%})")
    print(f"  out of fold       accuracy {r['oof_accuracy']:.2%} vs {r['fp32_oof_accuracy']:.2%} "
          f"({r['accuracy_points']:+.2f} points), log-loss {r['oof_log_loss']:.4f} vs {r['fp32_oof_log_loss']:.4f} "
          f"({r['log_loss_change']:+.1%}); {r['folds']} folds, C {r['C']:g} vs {r['fp32_C']:g}")
    print(f"  changed           {r['changed_predictions']} of {r['images']} predicted classes: "
          f"{r['right_to_wrong']} right to wrong, {r['wrong_to_right']} wrong to right "
          f"(exact McNemar p = {r['mcnemar_p']:.2f}: "
          f"{'a real difference' if r['mcnemar_p'] < 0.05 else 'no more than chance would give'})")
    if r["precision"] == "int8":  # `classify predict` embeds new images in fp32 for an int8 store's model
        print(f"  on fp32 rows      the int8 fold models on fp32 embeddings, as predict gives them: accuracy "
              f"{r['on_fp32_accuracy']:.2%}, log-loss {r['on_fp32_log_loss']:.4f}")
    print(f"  bars (accuracy within {ACCURACY_POINTS} points, log-loss within +{LOG_LOSS_SHARE:.0%}, out of fold): "
          f"{'PASS' if r['within_bars'] else 'FAIL'}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--backbone", nargs="+", default=["mobilenet_v2", "efficientnet_lite0"])
    p.add_argument("--data", nargs="+", type=Path, default=DEFAULT_DATA, metavar="DATASET",
                   help="labelled dataset folders or CSVs (default: Dogs vs. Cats and the Oxford-IIIT Pets subset "
                        f"in {DATA})")
    p.add_argument("--target", default="breed", help="Oxford-IIIT Pets: breed or species (default breed)")
    p.add_argument("--precision", nargs="+", default=list(PRECISIONS[1:]), choices=PRECISIONS[1:],
                   help=f"reduced precisions to compare with fp32 (default {' '.join(PRECISIONS[1:])}); "
                        "one this CPU cannot run is skipped with its reason")
    p.add_argument("--folds", type=int, default=FOLDS, help=f"out-of-fold folds (default {FOLDS})")
    p.add_argument("--out", type=Path, help="where the stores go, reused when already there (default: a temporary "
                                            "folder, deleted at the end)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")


def main(args: argparse.Namespace) -> int:
    if args.folds < 2:
        raise FeatbenchError(f"--folds must be at least 2 (each image is scored by a model fitted on the others), "
                             f"got {args.folds}")
    check_json(args.json)
    precisions = []
    for p in args.precision:
        try:
            check_precision(p, pick_device("cpu"))
            precisions.append(p)
        except FeatbenchError as e:
            print(f"skipped: {e}")
    results = []
    with tempfile.TemporaryDirectory(prefix="featbench-precision-") as tmp:
        out = args.out or Path(tmp)
        for name in args.backbone:
            backbone = create_backbone(name)
            for root in args.data:
                dataset = load_dataset(root, target=args.target)
                stores = {p: extract(dataset, backbone, out, options=Options(device="cpu", precision=p,
                                                                            progress=False))
                          for p in ["fp32", *precisions]}
                for p in precisions:
                    results.append({"backbone": name, "dataset": stores[p].path.parent.name, "precision": p,
                                    **compare(stores[p].path, stores["fp32"].path, args.folds)})
                    print_row(results[-1])
    if args.json:
        atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(results, indent=2)))
    return 0
