"""`python -m benchmarks speed`: extraction images/second, side by side in one run.

Three pipelines on the same images, backbone, device and batch size:
  seed-style   the classic notebooks: PIL open, Resize((224, 224)), ToTensor, Normalize, DataLoader, fp32
               (in a fresh child process: featbench's malloc setting must not speed it up)
  featbench    `extract()` end to end, files to HDF5 store
  model-only   the forward pass on tensors already in memory, in one process with all torch threads and
               (on CPU) in one single-threaded process per core as featbench's workers run it; the
               faster is the ceiling on this device; measured before and after each featbench run
               (`--repeats`, default 3; medians printed: this machine's speed drifts between minutes)
and the same featbench and model-only rows with `--compile` (torch.compile), compile time included
plus FLOPs/image against a measured matrix-multiply peak, and a cosine check of featbench's embeddings
against an fp32 reference of the same preprocessing (full decode, torchvision's Resize + CenterCrop).

Each reduced `--precision` (bf16, int8; on CPU only) runs end to end right after each fp32 featbench run (int8's
calibration and quantisation included; then int8 again beside that store, as a later run does, with the
quantised model kept there), with its model-only rate (int8: and what its graph leaves in fp32), the cosine
of its store's rows to the fp32 store's, and logreg's test accuracy and log-loss on both.
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.peak_rss import run_measured
from extract.backbones import create_backbone
from extract.datasets import load_dataset
from extract.device import autocast, default_workers, pick_device
from extract.images import decode
from extract.inference import inference_model
from extract.pipeline import Options, batch_loader, blocks_of, embeds_in_workers, extract, worker_count
from extract.quantize import PRECISIONS, calibration_set, quantized_model
from features import FeatureStore
from features.atomic import atomic_write, check_file, check_folder
from features.errors import FeatbenchError

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "dogs-vs-cats" / "train"
SECTIONS = ("throughput", "memory", "heads")


class _SeedStyle(torch.utils.data.Dataset):
    """What the seed notebooks did, per image: PIL → Resize((s, s)) → ToTensor → Normalize."""

    def __init__(self, files, pre):
        from torchvision import transforms
        self.files = files
        self.tf = transforms.Compose([transforms.Resize((pre.size, pre.size)), transforms.ToTensor(),
                                      transforms.Normalize(pre.mean, pre.std)])

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image
        with Image.open(self.files[i]) as img:
            return self.tf(img.convert("RGB"))


def seed_style(name: str, files, device: str, batch_size, workers) -> float:
    """Run in a fresh process (`in_fresh_process`): no allocator setting of featbench's leaks into it."""
    backbone = create_backbone(name)
    loader = torch.utils.data.DataLoader(_SeedStyle(files, backbone.preprocess), batch_size=batch_size,
                                         num_workers=workers)
    trunk = backbone.model.trunk.to(device)  # the seeds normalised in the transform: skip the wrapper's
    start = time.perf_counter()
    with torch.no_grad():
        for x in loader:
            trunk(x.to(device))
    if torch.device(device).type == "cuda":  # the last batch's forward has finished
        torch.cuda.synchronize()
    return len(files) / (time.perf_counter() - start)


def in_fresh_process(fn, *args):
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def featbench(backbone, folder, device, batch_size, workers, compile: bool = False, precision: str = "fp32",
              again: Path | None = None, gpu_decode: bool = False, *, scratch: Path) -> tuple[float, Path, str]:
    """(img/s end to end, the store, the images' root) of a fresh extraction into a new folder in `scratch`, or
    with `again` (an earlier store) of every image embedded again beside it (`--overwrite`: int8 uses the
    quantised model kept there)."""
    out = again.parent.parent if again else Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
    ds = load_dataset(folder)
    opts = Options(device=str(device), batch_size=batch_size, workers=workers, progress=False, compile=compile,
                   precision=precision, overwrite=again is not None, gpu_decode=gpu_decode)
    start = time.perf_counter()
    summary = extract(ds, backbone, out, options=opts)
    return summary.rows / (time.perf_counter() - start), summary.path, str(ds.root)


def model_only(backbone, device, batch_size, n_images, optimize: bool = True, compile: bool = False,
               processes: int = 1, model=None) -> float:
    """Forward passes on one in-memory batch, in the form featbench runs the model (or eager, or `model`);
    with `processes` > 1, in that many forked processes of one torch thread each, all at once."""
    size = backbone.preprocess.size
    with torch.inference_mode():  # as the batches are: a compiled model's warm-up input must match (no recompile)
        x = torch.randint(0, 255, (batch_size, 3, size, size), dtype=torch.uint8, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    if model is None:
        model = inference_model(backbone.model, device, x if compile else x[:2], optimize, compile, _forward)
    batches = max(2, n_images // batch_size)
    if processes == 1:
        start, end, n = _timed_forwards(model, x, batches)
        return n / (end - start)
    from multiprocessing import get_context
    ctx = get_context("fork")  # as featbench's workers: they share the prepared model
    results = ctx.SimpleQueue()
    procs = [ctx.Process(target=lambda: results.put(_timed_forwards(model, x, batches, threads=1)))
             for _ in range(processes)]
    for p in procs:
        p.start()
    runs = [results.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(n for *_, n in runs) / (max(end for _, end, _ in runs) - min(start for start, _, _ in runs))


def loader_only(backbone, folder, device, batch_size, workers) -> float:
    """img/s of featbench's DataLoader alone (`batch_loader`: its workers reading, hashing and decoding every
    image, a GPU's batches pinned), no model: the most end to end can reach with CPU decoding."""
    items = load_dataset(folder).items
    opts = Options(device=str(device), batch_size=batch_size, workers=workers)
    start = time.perf_counter()
    for _ in batch_loader(items, backbone.preprocess, device, opts, blocks_of(list(range(len(items))), batch_size)):
        pass
    return len(items) / (time.perf_counter() - start)


def _forward(model, x):
    """One forward pass as featbench runs it on `x`'s device (autocast on CUDA)."""
    with autocast(x.device):
        return model(x)


def _timed_forwards(model, x, batches: int, threads: int = 0) -> tuple[float, float, int]:
    """(start, end, images) of `batches` forward passes after warm-up (one on CPU; on CUDA several, as timm's
    benchmark.py, and the clock starts and stops on a synchronised GPU). perf_counter: comparable across
    processes."""
    if threads:
        torch.set_num_threads(threads)
    cuda = x.device.type == "cuda"
    with torch.inference_mode():
        for _ in range(5 if cuda else 1):
            _forward(model, x)
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(batches):
            _forward(model, x)
        if cuda:
            torch.cuda.synchronize()
    return start, time.perf_counter(), batches * len(x)


def timm_arch(backbone) -> str | None:
    """The timm architecture that runs `backbone`: its trunk's own (efficientnet_lite0 is timm's
    tf_efficientnet_lite0, not timm's efficientnet_lite0), else its name where timm has that model (torchvision's
    resnet50 is timm's), else None."""
    cfg = getattr(backbone.model.trunk, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or (backbone.name if timm.is_model(backbone.name) else None)


def timm_synthetic(arch: str, device: torch.device, batch_size: int, n_images: int) -> float:
    """img/s of timm's own inference benchmark (its benchmark.py): `arch` random-init in eval mode, a synthetic
    float batch, channels-last and AMP on CUDA, synchronised timing after warm-up."""
    import timm
    model = timm.create_model(arch, pretrained=False).eval().to(device)
    size = model.pretrained_cfg["input_size"][-1]
    x = torch.randn(batch_size, 3, size, size, device=device)
    if device.type == "cuda":
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    start, end, n = _timed_forwards(model, x, max(2, n_images // batch_size))
    return n / (end - start)


def flops_per_image(backbone) -> float:
    size = backbone.preprocess.size
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        backbone.model.cpu()(torch.zeros(1, 3, size, size, dtype=torch.uint8))
    return float(counter.get_total_flops())


def matmul_peak(device, n: int | None = None, seconds: float = 0.5, tries: int = 4) -> float:
    """Measured fp32 (or fp16 on CUDA) matrix-multiply FLOP/s, the best of a few tries: the roofline's
    compute ceiling (one try on a shared machine can land in a slow moment). `n`: 2048 on CPU, 8192 on CUDA
    (smaller matrices leave a large GPU partly idle)."""
    cuda = device.type == "cuda"
    n = n or (8192 if cuda else 2048)
    dtype = torch.float16 if cuda else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(tries):
        if cuda:
            torch.cuda.synchronize()
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            reps += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - start))
    return best


def store_cosines(a: Path, b: Path) -> np.ndarray:
    """Per-row cosine between two stores of the same images (rows matched by path)."""
    with FeatureStore(a) as sa, FeatureStore(b) as sb:
        order = {p: i for i, p in enumerate(sb.paths)}
        x = sa.embeddings(np.arange(len(sa.paths)))
        y = sb.embeddings(np.array([order[p] for p in sa.paths]))
    return (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1) + 1e-12)


def logreg_test(store: Path) -> dict:
    """`classify --head logreg` on one store: test accuracy and log-loss (models written to a temporary folder,
    deleted afterwards)."""
    from classify.train import run
    with tempfile.TemporaryDirectory(prefix="featbench-speed-models-") as tmp:
        m = run([store], ["logreg"], out=Path(tmp))[0]
    return {"accuracy": m.accuracy, "log_loss": m.log_loss, "n_test": m.n_test}


def reference_cosines(backbone, store_path: Path, root: str, n: int) -> np.ndarray:
    """Per-image cosine between the store's rows and a reference of the same preprocessing: full decode
    (no draft), torchvision's Resize + CenterCrop, the eager fp32 model on CPU."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, PILToTensor, Resize
    pre = backbone.preprocess
    resize = Resize(pre.resize or (pre.size, pre.size), InterpolationMode(pre.interpolation), antialias=True)
    tf = Compose([resize, CenterCrop(pre.size), PILToTensor()])
    with FeatureStore(store_path) as store:
        rows = np.linspace(0, len(store.paths) - 1, min(n, len(store.paths))).astype(int)
        stored = store.embeddings(rows)
        files = [Path(root) / store.paths[i] for i in rows]
    model = backbone.model.cpu().float()
    with torch.inference_mode():
        ref = torch.cat([model(torch.stack([tf(decode(f.read_bytes())) for f in files[i:i + 16]]))
                         for i in range(0, len(files), 16)])
    ref = ref.numpy()
    return (stored * ref).sum(1) / (np.linalg.norm(stored, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)


def bench(name: str, folder: Path, device: torch.device, batch_size: int, workers: int, seed_workers: int,
          limit: int, peak_flop_s: float, scratch: Path, compile: bool = True, repeats: int = 3,
          precisions=()) -> dict:
    """`workers`: featbench's `--workers` (-1: its default); `seed_workers`: the seed-style DataLoader's; the
    stores (and a subset's links) go to `scratch`.

    featbench runs `repeats` times, each between two model-only measurements; its ratio to model-only
    is taken per run (against the ceiling either side of it), and every figure is the median of the runs.
    Each of `precisions` (reduced: int8) runs right after each fp32 run, its ratios taken per run too.
    """
    backbone = create_backbone(name)
    files = sorted(p for p in folder.iterdir() if p.is_file())[:limit] if limit else None
    if files is not None and len(files) < len(list(folder.iterdir())):  # a subset: link it into a temp folder
        sub = Path(tempfile.mkdtemp(prefix="data-", dir=scratch))
        for f in files:
            os.symlink(f, sub / f.name)
        folder = sub
    files = sorted(p for p in folder.iterdir() if p.is_file())
    opts = Options(workers=workers)
    parallel, featbench_workers = embeds_in_workers(device, opts), worker_count(device, opts)
    procs = featbench_workers if parallel else 1
    out = {"backbone": name, "images": len(files), "device": str(device), "batch_size": batch_size,
           "decode_workers": seed_workers, "featbench_workers": featbench_workers,
           "featbench_embeds_in_workers": parallel, "torch_threads": torch.get_num_threads()}
    out["seed_style_img_s"] = in_fresh_process(seed_style, name, files, str(device), batch_size, seed_workers)
    n_model = min(len(files), 640)

    def ceiling() -> dict:
        rates = {"threads": model_only(backbone, device, batch_size, n_model)}
        if procs > 1:
            rates["processes"] = model_only(backbone, device, batch_size, n_model, processes=procs)
        return rates
    ceilings, runs = [ceiling()], []  # featbench runs between model-only measurements: shared machines drift
    for _ in range(repeats):
        rate, store, root = featbench(backbone, folder, device, batch_size, workers, scratch=scratch)
        reduced = {p: featbench(backbone, folder, device, batch_size, workers, precision=p, scratch=scratch)
                   for p in precisions}
        if "int8" in reduced:  # a later run: the quantised model kept beside the store, not quantised again
            reduced["int8_kept"] = featbench(backbone, folder, device, batch_size, workers, precision="int8",
                                             again=reduced["int8"][1], scratch=scratch)
        ceilings.append(ceiling())
        around = {k: (ceilings[-2][k] + ceilings[-1][k]) / 2 for k in ceilings[-1]}
        top = max(around.values())
        runs.append({"featbench_img_s": rate, **{f"model_only_{k}_img_s": v for k, v in around.items()},
                     "model_only_img_s": top, "featbench_vs_model_only": rate / top,
                     **{f"{p}_img_s": r for p, (r, _, _) in reduced.items()},
                     **{f"{p}_vs_fp32": r / rate for p, (r, _, _) in reduced.items()},
                     **{f"{p}_vs_model_only": r / top for p, (r, _, _) in reduced.items()}})
    out["runs"] = runs
    for key in runs[0]:  # each figure: the median over the runs
        out[key] = float(np.median([r[key] for r in runs]))
    out["model_only_eager_img_s"] = model_only(backbone, device, batch_size, n_model, optimize=False)
    for p in precisions:
        out[p] = reduced_precision(p, backbone, device, batch_size, n_model, procs, store, reduced[p][1], root)
    out["featbench_vs_seed"] = out["featbench_img_s"] / out["seed_style_img_s"]
    arch = timm_arch(backbone)
    if arch:  # e.g. resnet50: featbench end to end against timm's own synthetic benchmark
        out["timm_synthetic_img_s"] = timm_synthetic(arch, device, batch_size, n_model)
        out["featbench_vs_timm"] = out["featbench_img_s"] / out["timm_synthetic_img_s"]
    if compile:  # model-only first: its compile fills inductor's on-disk cache, as any earlier run would
        out["model_only_compiled_img_s"] = model_only(backbone, device, batch_size, n_model, compile=True)
        out["featbench_compiled_img_s"], compiled_store, _ = featbench(backbone, folder, device, batch_size, workers,
                                                                       compile=True, scratch=scratch)
        out["featbench_compiled_vs_seed"] = out["featbench_compiled_img_s"] / out["seed_style_img_s"]
        out["featbench_compiled_vs_model_only"] = out["featbench_compiled_img_s"] / out["model_only_compiled_img_s"]
    out["gflops_per_image"] = flops_per_image(backbone) / 1e9
    out["peak_gflop_s"] = peak_flop_s / 1e9
    out["roofline_share"] = out["gflops_per_image"] * out["model_only_img_s"] / out["peak_gflop_s"]
    cos = reference_cosines(backbone, store, root, 64)
    out["min_cosine_vs_fp32_reference"] = float(cos.min())
    if compile:
        out["min_cosine_compiled"] = float(reference_cosines(backbone, compiled_store, root, 64).min())
    return out


def reduced_precision(precision: str, backbone, device, batch_size: int, n_model: int, procs: int, fp32_store: Path,
                      store: Path, root: str) -> dict:
    """A reduced precision's other figures: time to prepare its graph (int8: calibrating and quantising
    included) and model-only rate, the ops int8 leaves in fp32, the cosine of its store to the fp32 store,
    and logreg on both."""
    start = time.perf_counter()
    if precision == "int8":
        model = quantized_model(backbone.model, calibration_set(load_dataset(root).items, backbone.preprocess).images)
    else:
        size = backbone.preprocess.size
        model = inference_model(backbone.model, device, torch.zeros(2, 3, size, size, dtype=torch.uint8), bf16=True)
    out = {"prepare_seconds": time.perf_counter() - start,
           "fp32_ops": model.fp32_ops() if precision == "int8" else None,
           "fp32_model_only_img_s": model_only(backbone, device, batch_size, n_model, processes=procs),  # A/B
           "model_only_img_s": model_only(backbone, device, batch_size, n_model, model=model, processes=procs)}
    cos = store_cosines(store, fp32_store)
    out.update(min_cosine=float(cos.min()), median_cosine=float(np.median(cos)), rows=len(cos),
               logreg=logreg_test(store), logreg_fp32=logreg_test(fp32_store))
    return out


def synthetic_folder(n: int, root: Path) -> Path:
    """An imagefolder of n small random JPEGs in two classes (reused when already there)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    for i in range(n):
        f = root / f"c{i % 2}" / f"{i:07d}.jpg"
        if not f.exists():
            f.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.roll(tile, i, axis=1)).save(f, quality=80)
    return root


def extraction_memory(sizes=(2000, 20000), backbone: str = "test_resnet", precision: str = "fp32") -> list[dict]:
    """Peak RSS of `python -m extract --device cpu` (main process and its largest worker) as the dataset grows:
    a CPU measurement, whatever device the throughput section uses."""
    with tempfile.TemporaryDirectory(prefix="featbench-mem-") as tmp:
        return [extraction_peak(n, Path(tmp), backbone, precision) for n in sizes]


def extraction_peak(n: int, base: Path, backbone: str, precision: str) -> dict:
    """One `extraction_memory` row: n synthetic images in `base`, extracted by a child process."""
    folder = synthetic_folder(n, base / f"data{n}")
    args = ["--backbone", backbone, "--random-init", "--data", str(folder), "--out", str(base / "out"), "--quiet",
            "--precision", precision, "--device", "cpu"]
    start = time.perf_counter()
    _, main_mib, worker_mib = run_measured("extract", args)
    return {"images": n, "precision": precision, "seconds": time.perf_counter() - start,
            "peak_rss_mib": main_mib, "worker_peak_rss_mib": worker_mib}


def logreg_sweep_seconds(n: int = 25000, dim: int = 1280, classes: int = 2) -> dict:
    """The classify logreg sweep (fit on train, score on val) on synthetic features of this shape."""
    from classify.heads import HEADS
    from classify.select import sweep
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(classes, dim)).astype(np.float32) * 0.05
    y = rng.integers(0, classes, n + n // 5)
    X = (rng.normal(size=(len(y), dim)).astype(np.float32) + centres[y])
    head = HEADS["logreg"]
    start = time.perf_counter()
    sel = sweep(head.make(), head.grid(n), X[:n], y[:n], X[n:], y[n:], classes)
    return {"rows": n, "dim": dim, "grid_points": len(sel.sweep), "seconds": time.perf_counter() - start,
            "val_accuracy": sel.val_accuracy}


def print_row(r: dict) -> None:
    ok = "OK" if r["min_cosine_vs_fp32_reference"] >= 0.999 else "BELOW 0.999"
    n = r["featbench_workers"]
    how = (f"{n} workers decoding and embedding, 1 torch thread each" if r["featbench_embeds_in_workers"] else
           f"{n} decode workers, {r['torch_threads']} torch threads")
    print(f"{r['backbone']}: {r['images']} images, {r['device']}, batch {r['batch_size']}")
    print(f"  seed-style  {r['seed_style_img_s']:8.1f} img/s   ({r['decode_workers']} decode workers, "
          f"{r['torch_threads']} torch threads)")
    print(f"  featbench   {r['featbench_img_s']:8.1f} img/s   {r['featbench_vs_seed']:.2f}x seed-style, "
          f"{r['featbench_vs_model_only']:.2f}x model-only ({how})")
    if len(r["runs"]) > 1:
        print(f"              medians of {len(r['runs'])} runs; "
              "each run's img/s and ratio to the model-only either side: "
              + ", ".join(f"{x['featbench_img_s']:.1f} ({x['featbench_vs_model_only']:.2f}x)" for x in r["runs"]))
    parts = [f"{r['model_only_threads_img_s']:.1f} in 1 process x {r['torch_threads']} threads"]
    if "model_only_processes_img_s" in r:
        parts.append(f"{r['model_only_processes_img_s']:.1f} in {n} processes x 1 thread")
    print(f"  model-only  {r['model_only_img_s']:8.1f} img/s   (the faster of {' and '.join(parts)}; "
          f"eager fp32: {r['model_only_eager_img_s']:.1f})")
    if "timm_synthetic_img_s" in r:
        print(f"  timm        {r['timm_synthetic_img_s']:8.1f} img/s   (timm benchmark.py style: synthetic batch, "
              f"random init; featbench end to end {r['featbench_vs_timm']:.2f}x)")
    if "featbench_compiled_img_s" in r:
        print(f"  --compile   {r['featbench_compiled_img_s']:8.1f} img/s   "
              f"{r['featbench_compiled_vs_seed']:.2f}x seed-style, {r['featbench_compiled_vs_model_only']:.2f}x "
              f"model-only compiled ({r['model_only_compiled_img_s']:.1f} img/s; "
              "end to end includes the compile, inductor cache warm)")
    print(f"  compute     {r['gflops_per_image']:.2f} GFLOP/image, "
          f"peak {r['peak_gflop_s']:.0f} GFLOP/s, roofline share {r['roofline_share']:.0%}")
    compiled = ""
    if "min_cosine_compiled" in r:
        good = r["min_cosine_compiled"] >= 0.999
        compiled = f"; --compile {r['min_cosine_compiled']:.5f} ({'OK' if good else 'BELOW 0.999'})"
    print("  embeddings vs fp32 reference (full decode, torchvision resize + crop, eager): "
          f"min cosine {r['min_cosine_vs_fp32_reference']:.5f} ({ok}){compiled}")
    for p in PRECISIONS:
        if p in r:
            print_precision(p, r)


def print_precision(p: str, r: dict) -> None:
    q, runs = r[p], r["runs"]
    print(f"  {p:<10}{r[f'{p}_img_s']:8.1f} img/s   {r[f'{p}_vs_fp32']:.2f}x fp32 featbench, "
          f"{r[f'{p}_vs_model_only']:.2f}x fp32 model-only (end to end"
          f"{', calibrating and quantising included' if p == 'int8' else ''})")
    print("              each run's img/s and ratio to the fp32 featbench run before it: "
          + ", ".join(f"{x[f'{p}_img_s']:.1f} ({x[f'{p}_vs_fp32']:.2f}x)" for x in runs))
    if p == "int8":
        print(f"    a later run {r['int8_kept_img_s']:8.1f} img/s   {r['int8_kept_vs_fp32']:.2f}x fp32 featbench "
              "(every image embedded again, the quantised model kept beside the store); each run: "
              + ", ".join(f"{x['int8_kept_img_s']:.1f} ({x['int8_kept_vs_fp32']:.2f}x)" for x in runs))
    ops = "" if q["fp32_ops"] is None else f"; ops left in fp32: {', '.join(q['fp32_ops']) or 'none'}"
    fp32 = q["fp32_model_only_img_s"]
    print(f"    model-only {q['model_only_img_s']:.1f} img/s ({q['model_only_img_s'] / fp32:.2f}x fp32's {fp32:.1f} "
          f"just before); preparing the graph {q['prepare_seconds']:.1f}s{ops}")
    a, b = q["logreg"], q["logreg_fp32"]
    print(f"    vs the fp32 store ({q['rows']} rows): cosine min {q['min_cosine']:.4f}, "
          f"median {q['median_cosine']:.4f}; logreg test accuracy {a['accuracy']:.2%} vs {b['accuracy']:.2%} "
          f"({(a['accuracy'] - b['accuracy']) * 100:+.2f} points), log-loss {a['log_loss']:.4f} vs "
          f"{b['log_loss']:.4f} ({a['log_loss'] / b['log_loss'] - 1:+.0%})")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES, metavar="FOLDER",
                   help=f"a folder of images (default {DEFAULT_IMAGES})")
    p.add_argument("--backbone", nargs="+", default=["mobilenet_v2", "efficientnet_lite0"])
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=-1,
                   help="featbench's --workers, also the seed-style DataLoader's (default: each one's auto)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N images (default: all)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated: {', '.join(SECTIONS)} (default: all)")
    p.add_argument("--no-compile", action="store_true", help="skip the --compile (torch.compile) rows")
    p.add_argument("--repeats", type=int, default=3,
                   help="featbench runs per backbone, each between model-only measurements; "
                        "medians are printed (default 3)")
    p.add_argument("--precision", nargs="*", default=list(PRECISIONS[1:]), choices=PRECISIONS[1:],
                   help="reduced precisions measured beside fp32, end to end and downstream (on CPU only), and "
                        f"in the memory section; none: only fp32 (default {' '.join(PRECISIONS[1:])})")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")


def check_json(path: Path | None) -> None:
    """Refuse, before any work, a --json file that could not be written at the end (`check_file`, `check_folder`)."""
    if path is not None:
        check_folder(check_file(path, "--json").parent, "--json")


def main(args: argparse.Namespace) -> int:
    sections = {s.strip() for s in args.sections.split(",")}
    unknown = sorted(sections - set(SECTIONS))
    if unknown:
        raise FeatbenchError(f"--sections {args.sections}: unknown section {unknown[0]!r}; choose from "
                             f"{', '.join(SECTIONS)} (comma-separated)")
    check_json(args.json)
    device = pick_device(args.device)
    seed_workers = args.workers if args.workers >= 0 else default_workers(device)
    results = {"throughput": [], "memory": [], "heads": None}
    if "throughput" in sections:
        precisions = args.precision if device.type == "cpu" else []
        if args.precision and not precisions:
            print(f"--precision {' '.join(args.precision)}: skipped on {device.type} (reduced precisions run on "
                  "CPU only; the memory section, on CPU, keeps them)")
        peak = matmul_peak(device)  # once, before any pipeline runs: a property of the machine
        for name in args.backbone:
            with tempfile.TemporaryDirectory(prefix="featbench-speed-") as scratch:
                results["throughput"].append(bench(name, args.images, device, args.batch_size, args.workers,
                                                   seed_workers, args.limit, peak, Path(scratch),
                                                   not args.no_compile, args.repeats, precisions))
            print_row(results["throughput"][-1])
    if "memory" in sections:
        print("extraction peak RSS on CPU (synthetic 64x48 JPEGs, test_resnet random-init):")
        for r in [r for p in ["fp32", *args.precision] for r in extraction_memory(precision=p)]:
            results["memory"].append(r)
            print(f"  {r['precision']:>4} {r['images']:>6} images: main process {r['peak_rss_mib']:.0f} MiB, "
                  f"largest worker {r['worker_peak_rss_mib']:.0f} MiB ({r['seconds']:.0f}s)")
    if "heads" in sections:
        r = results["heads"] = logreg_sweep_seconds()
        print(f"logreg sweep: {r['rows']} x {r['dim']} synthetic features, {r['grid_points']} values of C, "
              f"{r['seconds']:.1f}s (target < 60s)")
    if args.json:
        import json
        atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(results, indent=2)))
    return 0
