"""`python -m classify`: heads and ensembles on cached features, honest metrics, saved models.

  python -m classify [train] [--head H…] [--features FILE…|--backbone NAME…] [--out OUT] [--refit] [--seeds N]
                     [--temperature] [--max-memory SIZE] [--n-jobs N] [--backend loky|threading|dask|ray]
                     [dataset flags]
  python -m classify predict --model M.skops IMAGE_OR_FOLDER… [--csv] [--trust-pickle]
  python -m classify submit --model M.skops TEST_FOLDER [--clip 0.005] [--out FOLDER] [--trust-pickle]
  python -m classify audit [--features FILE…|--backbone NAME…] [--threshold 0.95] [--no-map] [--out OUT] [dataset flags]
"""
import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

from joblib import parallel_config
from joblib.parallel import BACKENDS

from classify import audit
from classify.heads import ENSEMBLES, HEADS
from classify.models import SUFFIX
from classify.train import Exclusion, asked_heads, dataset_stores, exclusion_table, parse_heads, run, table
from extract.config import CONFIG_NAME, add_dataset_args, dataset_flags
from features.atomic import check_folder, check_outside
from features.cli import Command, CommandLine, parse_size, run_cli
from features.errors import FeatbenchError
from features.reader import FeatureStore

EPILOG = f"""
heads:
{chr(10).join(f"  {h.name:<8}{h.about}" for h in HEADS.values())}
  avg     ensemble: mean probability of each backbone's best head (by validation log-loss)
  stack   ensemble: out-of-fold probabilities of those heads → meta logistic regression
  concat  ensemble: logistic regression on concatenated, per-backbone standardised features
  all     every head and every ensemble (ensembles when there are two stores or more)

Stores come from --features, or OUT/DATASET/*.h5 for the dataset of --data or ./{CONFIG_NAME}
(--backbone NAME… picks the store extract wrote for NAME, or OUT/DATASET/NAME.h5). Hyper-parameters
are chosen on the val split; the test split is scored once, at the end. Models and metrics go to
OUT/DATASET/models/ (DATASET: the store's dataset; with --features and no --out, the models/ folder
beside the store):
BACKBONES-HEAD[-refit].skops and .metrics.json.
"""


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.description, p.epilog = __doc__.splitlines()[0], EPILOG
    p.add_argument("--head", nargs="+", default=["logreg"], metavar="H",
                   help=f"{'|'.join([*HEADS, *ENSEMBLES])}|all (default logreg)")
    p.add_argument("--features", nargs="+", type=Path, metavar="FILE", help="feature stores to train on")
    p.add_argument("--backbone", nargs="+", metavar="NAME",
                   help="the dataset's stores OUT/DATASET/NAME.h5 (e.g. mobilenet_v2)")
    p.add_argument("--refit", action="store_true",
                   help="refit the chosen configuration on train+val before the test score")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="N seeds in all (default 1): each head that has a random state (mlp, svm) is also chosen "
                        "with N-1 more seeds, and the test scores' mean ± std over the N are reported")
    p.add_argument("--temperature", action="store_true",
                   help="scale each model's probabilities by a temperature fitted on val, every grid point chosen "
                        "at its own, as is each epoch the mlp early-stops on and each out-of-core (point, epoch) "
                        "(as benchmarks' calibrated lp-ft fine-tune chooses its epoch): better log-loss, same "
                        "predictions; metrics add the log-loss at T = 1 (log_loss_raw)")
    p.add_argument("--max-memory", type=parse_size, metavar="SIZE",
                   help="stream features from disk into incremental heads (logreg, mlp) when the stores' "
                        "float32 features exceed this, e.g. 8G or 512M (default: an eighth of RAM)")
    p.add_argument("--n-jobs", type=n_jobs, default=None,
                   help="parallel hyper-parameter sweep runs (joblib; default 1, or every worker of --backend); "
                        "the grid is cut into N warm-started runs, so a warm-started head's curve can differ "
                        "slightly with N. Out of core, heads train in one shared pass instead")
    p.add_argument("--backend", default=None,
                   help="joblib backend for the sweeps: loky (default), threading, dask or ray "
                        "(dask: connects to DASK_SCHEDULER_ADDRESS, else a local cluster; ray: ray.init())")
    p.add_argument("--exclude", type=Path, metavar="AUDIT.csv",
                   help="also train every head without the train images this audit flags (python -m classify audit), "
                        "and score every model on all test images and on those not flagged")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_dataset_args(p)


def n_jobs(text: str) -> int:
    """joblib's n_jobs: N workers, or -1 for all (-2 all but one, …); never 0."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of workers (1, 2, …) or -1 for all")
    return n


@contextmanager
def sweep_backend(name: str | None, n_jobs: int | None):
    """joblib's parallel configuration for the sweeps; dask and ray are set up when asked for."""
    if name == "dask":
        try:
            from dask.distributed import Client
        except ImportError:
            raise FeatbenchError("--backend dask needs `pip install dask distributed`") from None
        client = Client()  # DASK_SCHEDULER_ADDRESS (dask config scheduler-address), else a local cluster
    elif name == "ray":
        try:
            from ray.util.joblib import register_ray
        except ImportError:
            raise FeatbenchError("--backend ray needs `pip install ray`") from None
        register_ray()
    elif name not in (None, *BACKENDS):
        raise FeatbenchError(f"unknown --backend {name!r}; choose from {', '.join(sorted({*BACKENDS, 'dask', 'ray'}))}")
    try:
        with parallel_config(**({"backend": name} if name else {}),
                             n_jobs=n_jobs if n_jobs is not None else (-1 if name else 1)):
            yield
    finally:
        if name == "dask":
            client.close()


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="a .skops saved by python -m classify")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--csv", action="store_true", help="CSV (path,label,probability,error) instead of a table")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--trust-pickle", action="store_true",
                   help="also load a .joblib model of an older featbench: a pickle, which can run code")


def predict_command(args) -> int:
    from classify.predict import predict  # embedding images: loads torch
    print(predict(args.model, args.images, args.device, args.csv, args.trust_pickle))
    return 0


def add_submit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="a .skops saved by python -m classify")
    p.add_argument("folder", type=Path, metavar="TEST_FOLDER", help="the Kaggle test folder of N.jpg images")
    p.add_argument("--clip", type=float, default=0.0, help="clip P(dog) to [c, 1-c] (e.g. 0.005)")
    p.add_argument("--out", type=Path, default=Path("."),
                   help="output folder: writes OUT/submission.csv (default: the current folder)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--trust-pickle", action="store_true",
                   help="also load a .joblib model of an older featbench: a pickle, which can run code")


def submit_command(args) -> int:
    from classify.predict import submit  # embedding images: loads torch
    path, n, failed = submit(args.model, args.folder, args.out / "submission.csv", args.clip, args.device,
                             args.trust_pickle)
    print(f"{path}: {n} rows" + (f" ({failed} unreadable images set to 0.5)" if failed else ""))
    return 0


def add_audit_arguments(p: argparse.ArgumentParser) -> None:
    p.description = audit.__doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--features", nargs="+", type=Path, metavar="FILE", help="feature stores of one dataset to audit")
    p.add_argument("--backbone", nargs="+", metavar="NAME",
                   help="the dataset's stores OUT/DATASET/NAME.h5 (e.g. mobilenet_v2)")
    p.add_argument("--threshold", type=float, default=audit.THRESHOLD,
                   help=f"near duplicates: cosine similarity at least this (default {audit.THRESHOLD})")
    p.add_argument("--neighbours", type=int, default=audit.NEIGHBOURS,
                   help=f"outliers: mean similarity to this many nearest images (default {audit.NEIGHBOURS})")
    p.add_argument("--outlier-z", type=float, default=audit.OUTLIER_Z,
                   help="outliers: kNN distance this many robust standard deviations above the median "
                        f"(default {audit.OUTLIER_Z:g})")
    p.add_argument("--fit-rows", type=int, default=audit.FIT_ROWS,
                   help="label issues: each out-of-fold logreg fits on at most this many rows, a stratified "
                        f"sample; every row is still scored (default {audit.FIT_ROWS:,}: bounds memory)")
    p.add_argument("--no-map", action="store_true", help="skip the UMAP map (map.png, map.csv)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_dataset_args(p)


def audit_command(args) -> int:
    paths = dataset_stores(args.features, args.backbone, **dataset_flags(args))
    folder = check_folder(audit_folder(paths[0], args.out if args.features else None))
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    a = audit.audit(paths, args.threshold, args.neighbours, args.outlier_z, not args.no_map, args.fit_rows, log)
    written = audit.write(a, folder)
    print(audit.summary(a))
    print(f"\n{len(a.findings)} flagged rows in {written['audit.csv']}"
          + (f"; map in {written['map.png']} and {written['map.csv']}" if "map.png" in written else ""))
    return 0


def audit_folder(store: Path, out: Path | None) -> Path:
    """Where an audit goes: OUT/DATASET/audit, or without `out` the audit/ folder beside the store; either
    `check_outside` the dataset."""
    with FeatureStore(store) as fs:
        folder = Path(out) / fs.dataset_name / "audit" if out is not None else Path(store).parent / "audit"
        return check_outside(folder, fs.meta.dataset, store)


def train(args) -> int:
    heads = parse_heads(args.head)
    paths = dataset_stores(args.features, args.backbone, **dataset_flags(args))
    skip = "all" in asked_heads(args.head) and len({Path(p).resolve() for p in paths}) < 2
    if skip:
        heads = [h for h in heads if h not in ENSEMBLES]
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    with sweep_backend(args.backend, args.n_jobs):
        results = run(paths, heads, args.refit, log, args.max_memory, args.seeds,
                      out=args.out if args.features else None,  # else the stores are in OUT/DATASET already
                      exclude=Exclusion(args.exclude, audit.read_flagged(args.exclude)) if args.exclude else None,
                      temperature=args.temperature)
    if skip:
        print("note: ensembles skipped (they need two feature stores or more)", file=sys.stderr)
    print(table(results))
    if args.exclude:
        print(f"\n{exclusion_table(results)}")
    for r in (r for r in results if r.seeds):
        sd = r.seeds
        print(f"{r.model.removesuffix(SUFFIX)}: over {sd['n']} seeds test accuracy "
              f"{sd['accuracy_mean']:.4f} ± {sd['accuracy_std']:.4f}, log-loss {sd['log_loss_mean']:.4f} ± "
              f"{sd['log_loss_std']:.4f}")
    refit = " (refit on train+val)" if args.refit else ""
    folders = ", ".join(dict.fromkeys(str(Path(r.path).parent) for r in results))
    print(f"\ntest split scored once per model{refit}; models and metrics in {folders}")
    return 0


CLI = CommandLine("python -m classify", __doc__.splitlines()[0], {
    "train": Command("choose heads on val, score test once, save models", add_train_arguments, train),
    "predict": Command("label new images with a saved model", add_predict_arguments, predict_command),
    "audit": Command("flag duplicates, leakage across splits, likely label errors and outliers; draw a map",
                     add_audit_arguments, audit_command),
    "submit": Command("write a Kaggle Dogs vs. Cats submission: id,label with label = P(dog)", add_submit_arguments,
                      submit_command),
}, default="train")
main = CLI.main


if __name__ == "__main__":
    sys.exit(run_cli(main))
