"""`python -m benchmarks gpu-check`: featbench's GPU acceptance check, one PASS or FAIL line per check.

It runs in minutes on one CUDA GPU and needs no network: it writes its own JPEGs and uses random-init models.
It first prints the machine: GPU, torch, torchvision and timm versions, CPU cores, /dev/shm (where the
DataLoader's workers hand over their batches).
  cuda-vs-cpu  extraction on cuda (fp32) matches cpu: cosine >= 0.999, all finite, for a convnet and a ViT;
               with it, amp: fp16 and bf16 autocast both finite, cosine >= 0.99 against cpu fp32 (a line each)
  gpu-decode   nvJPEG decodes one file when called directly; then --gpu-decode against the CPU's decoding,
               both fp32 on cuda, 4 batches of 16: every image decoded by nvJPEG (none by the CPU
               fallback), cosine >= 0.999
  compile      --compile: no recompile after the warm-up, short last batch included
  finetune     a 1-epoch fine-tune (fp16 autocast with GradScaler) lowers the val log-loss
  torchrun     ranks on cuda:RANK % GPUs (2 ranks sharing the GPU when there is one), and a dataset with
               fewer images than ranks works; a NOTE line when this torch has no torchrun
  throughput   resnet50 at batch 256: model-only forward, loader-only (featbench's DataLoader, no model) and
               end to end side by side, steady rates (from runs of N and 2N images); end to end >= 0.8 x the
               slower of the other two (the GPU does not wait on featbench's own copies, writes and
               synchronisation); a NOTE line gives --gpu-decode's end to end
A failing check does not stop the others; the exit status is 1 when any failed. `--only` runs some checks
(cheap re-runs). Without a CUDA GPU it says so in one line and exits 2.
"""
import argparse
import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from extract import gpudecode
from extract.backbones import create_backbone
from extract.device import cores
from extract.pipeline import Options, embed_files
from features.errors import FeatbenchError

CONVNET, VIT, TINY = "resnet50", "vit_small_patch16_224", "resnet10t"
MIN_COSINE, MIN_AMP_COSINE, MIN_RATIO = 0.999, 0.99, 0.8
STEPS = ("cuda-vs-cpu", "gpu-decode", "compile", "finetune", "torchrun", "throughput")


class Check(NamedTuple):
    name: str
    ok: bool | None  # None: a NOTE, not judged
    detail: str

    def line(self) -> str:
        return f"{'NOTE' if self.ok is None else 'PASS' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


def attempt(name: str, check: Callable[[], "Check | list[Check]"]) -> list[Check]:
    """`check()`'s lines, or one FAIL line `name` with the exception that stopped it (the next checks still run)."""
    try:
        checks = check()
    except Exception as e:  # noqa: BLE001 - a check that crashes fails, in one line
        return [Check(name, False, _why(e))]
    return checks if isinstance(checks, list) else [checks]


def _name(i: int) -> str:
    return f"{('cat', 'dog')[i % 2]}.{i // 2}.jpg"


def write_images(root: Path, n: int, size: tuple[int, int] = (500, 375)) -> Path:
    """`n` photo-sized JPEGs named as Dogs vs. Cats (cat.I.jpg, dog.I.jpg), smooth random content with a
    colour tint per class (something a fine-tune can learn); kept when already there."""
    from PIL import Image
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = root / _name(i)
        if path.exists():
            continue
        small = rng.integers(0, 196, (12, 16, 3)) + np.array((0, 0, 60) if i % 2 else (60, 0, 0))
        Image.fromarray(small.astype(np.uint8)).resize(size, Image.BICUBIC).save(path, quality=90)
    return root


def linked_images(root: Path, n: int, distinct: int) -> Path:
    """`n` JPEGs named as `write_images` names them, in `root`/linked-`n`, hard links to `distinct` (even)
    written ones: many batches at the cost of writing a few, each image still read, hashed and decoded once
    per name."""
    written = write_images(root / "distinct", distinct)
    folder = root / f"linked-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if not (folder / _name(i)).exists():
            os.link(written / _name(i % distinct), folder / _name(i))
    return folder


def _why(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)).min())


def embed(name: str, files: list, device: str, **options) -> np.ndarray:
    """The store rows `python -m extract` would write for `files` (a fresh random-init `name`, seeded)."""
    torch.manual_seed(0)
    backbone = create_backbone(name, random_init=True)
    feats, reasons = embed_files(backbone, files, Options(device=device, progress=False, **options))
    if any(reasons):
        raise FeatbenchError(f"{next(r for r in reasons if r)}")
    return feats


def agrees(name: str, reference: np.ndarray, feats: np.ndarray, bar: float, against: str = "cpu fp32") -> Check:
    """PASS when `feats` are all finite and each row's cosine to `reference`'s is at least `bar`."""
    cos, finite = min_cosine(reference, feats), bool(np.isfinite(feats).all())
    return Check(name, finite and cos >= bar,
                 f"min cosine {cos:.5f} against {against} (>= {bar}), {'all finite' if finite else 'NON-FINITE'}")


def check_matches_cpu(files: list, device: str = "cuda") -> list[Check]:
    """Extraction on `device`, fp32 and under each autocast type, against the CPU's fp32 (workers 0 on the
    CPU: no process forks after CUDA started); each its own line, a crash in one failing only that one."""
    kinds = {"cuda-vs-cpu": (MIN_COSINE, {"amp": False}), "amp float16": (MIN_AMP_COSINE, {"amp_dtype": "float16"}),
             "amp bfloat16": (MIN_AMP_COSINE, {"amp_dtype": "bfloat16"})}
    out = []
    for name in (CONVNET, VIT):
        try:
            cpu = embed(name, files, "cpu", workers=0)
        except Exception as e:  # noqa: BLE001 - no reference: each check of this model fails, saying why
            out += [Check(f"{kind} {name}", False, f"the cpu reference: {_why(e)}") for kind in kinds]
            continue
        for kind, (bar, options) in kinds.items():
            label = f"{kind} {name}"
            out += attempt(label, lambda: agrees(label, cpu, embed(name, files, device, **options), bar))
    return out


def check_gpu_decode(files: list, device: str = "cuda", batch_size: int = 16) -> Check:
    """nvJPEG called directly on one file (its error is the FAIL line), then `--gpu-decode` against the CPU's
    decoding, counting the images the device decoded: a fallback to the CPU is a FAIL, not a silent pass.
    Several batches, so that a batch decodes while the previous one computes."""
    pre = create_backbone(CONVNET, random_init=True).preprocess
    jpeg = torch.frombuffer(bytearray(files[0].read_bytes()), dtype=torch.uint8)
    try:
        gpudecode.device_decode([jpeg], pre, torch.device(device))
    except RuntimeError as e:
        return Check("gpu-decode", False, f"nvJPEG on {files[0].name}: {_why(e)}")
    cpu_decoded = embed(CONVNET, files, device, amp=False, batch_size=batch_size)
    decoded, real = 0, gpudecode.device_decode

    def counted(*args):
        nonlocal decoded
        out = real(*args)
        decoded += len(out)
        return out
    gpudecode.device_decode = counted
    try:
        gpu_decoded = embed(CONVNET, files, device, amp=False, gpu_decode=True, batch_size=batch_size)
    finally:
        gpudecode.device_decode = real
    check = agrees("gpu-decode", cpu_decoded, gpu_decoded, MIN_COSINE, "CPU decoding")
    return check._replace(ok=check.ok and decoded == len(files),
                          detail=f"nvJPEG decoded {decoded} of {len(files)} images; {CONVNET} {check.detail}")


def check_compile(files: list, device: str = "cuda", name: str = TINY, batch_size: int = 16) -> Check:
    """--compile over three batches, the last one short (padded): any recompile after the warm-up is an
    error (dynamo's `error_on_recompile`), which featbench's fallback names on stderr."""
    import torch._dynamo
    torch._dynamo.reset()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), torch._dynamo.config.patch(error_on_recompile=True):
        try:
            embed(name, files[:2 * batch_size + batch_size // 2], device, compile=True, batch_size=batch_size)
        except Exception as e:  # noqa: BLE001 - a recompile on a later batch: the check fails, in one line
            return Check("compile", False, _why(e))
    note = [line for line in err.getvalue().splitlines() if line.startswith("note: not compiled")]
    return Check("compile", not note, note[0] if note else "no recompile after the warm-up (3 batches, last padded)")


def check_finetune(root: Path, device: str = "cuda", batch_size: int = 16) -> Check:
    """One epoch of featbench's fine-tune (`seed` recipe, random-init resnet10t, autocast and GradScaler on
    CUDA) on the tinted images: the val log-loss after it is below the untrained model's."""
    from benchmarks.finetune import finetune
    from benchmarks.recipes import recipe_for
    from benchmarks.splits import same_split
    from extract.config import DatasetSettings
    out = root.parent / "finetune-runs"
    data = same_split(DatasetSettings(root, "auto", "breed", "", (0.6, 0.2, 0.2), 0, out), TINY)
    m = finetune(data, TINY, "full", out, recipe=recipe_for("full", "seed", lrs=3e-3), epochs=1,
                 batch_size=batch_size, device=device, workers=0, random_init=True, save_weights=False)
    before, after = m.sweep[0]["val_log_loss"], m.sweep[1]["val_log_loss"]
    return Check("finetune", after < before, f"val log-loss {before:.4f} -> {after:.4f} after 1 epoch "
                                             f"(amp {m.compute.get('amp')})")


RANK_LINE = re.compile(r"^rank (\d+)/(\d+): .* on (\S+)$", re.MULTILINE)


def rank_devices(stdout: str) -> dict[int, str]:
    """Each rank's device, from the `rank R/N: … on DEVICE` lines of `python -m extract` under torchrun."""
    return {int(m[1]): m[3] for m in RANK_LINE.finditer(stdout)}


def torchrun(folder: Path, out: Path, ranks: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
                           "-m", "extract", "--backbone", TINY, "--random-init", "--device", "cuda", "--quiet",
                           "--data", str(folder), "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=120)


def _last_error(run: subprocess.CompletedProcess) -> str:
    return f"exit {run.returncode}: {(run.stderr.strip().splitlines() or [''])[-1][:160]}"


def check_torchrun(root: Path, gpus: int) -> list[Check]:
    """`python -m extract` under torchrun: one rank per GPU (2 ranks on one GPU: `set_device`, the gather and
    the merge under CUDA all the same), each on cuda:RANK % `gpus`; then 1 image for those ranks."""
    if not torch.distributed.is_available():
        return [Check("torchrun", None, f"skipped: torch {torch.__version__} has no torch.distributed")]
    ranks = min(max(gpus, 2), 8)
    want = [f"cuda:{r % gpus}" for r in range(ranks)]

    def on_their_gpus() -> Check:
        run = torchrun(write_images(root / "many", 8 * ranks, (160, 120)), root / "runs", ranks)
        devices = rank_devices(run.stdout)
        got = [devices.get(r, "?") for r in range(ranks)]
        return Check("torchrun ranks' GPUs", run.returncode == 0 and got == want,
                     f"{ranks} ranks on {', '.join(got)} (expected {', '.join(want)})" if devices else _last_error(run))

    def fewer_images() -> Check:
        run = torchrun(write_images(root / "one", 1, (160, 120)), root / "runs", ranks)
        return Check(f"torchrun 1 image, {ranks} ranks", run.returncode == 0,
                     _last_error(run) if run.returncode else "exit 0")
    return attempt("torchrun ranks' GPUs", on_their_gpus) + attempt(f"torchrun 1 image, {ranks} ranks", fewer_images)


def check_throughput(root: Path, device: str = "cuda", name: str = CONVNET, batch_size: int = 256,
                     batches: int = 64, distinct: int = 1024) -> list[Check]:
    """`name` end to end (files to store) against the slower of its two feeds: the model-only forward of
    `benchmarks speed` (synchronised, channels-last, autocast) and featbench's DataLoader alone (CPU decoding:
    not featbench's to speed up). End to end and loader-only each run over `batches` and over twice as many
    batches of `batch_size` hard links to `distinct` images, and are judged on the steady rate, the extra
    images over the extra seconds: a run's fixed costs (workers starting, the model prepared, the store
    written), which a longer run spreads, cancel; the whole runs and the fixed cost are printed beside it.
    A first end to end run warms cuDNN and the page cache. Then, not judged, end to end with `--gpu-decode`
    (the GPU decodes as well as runs the model, so model-only is not its ceiling)."""
    from benchmarks.speed import featbench, loader_only, model_only
    backbone = create_backbone(name, random_init=True)
    n, dev = batch_size * batches, torch.device(device)
    folders = {k: linked_images(root, k * n, distinct) for k in (1, 2)}

    def end_to_end_seconds(k: int, gpu_decode: bool = False) -> float:
        rate, store, _ = featbench(backbone, folders[k], dev, batch_size, -1, gpu_decode=gpu_decode, scratch=root)
        shutil.rmtree(store.parent.parent)  # this run's store: the next starts afresh
        return k * n / rate
    end_to_end_seconds(1)
    e1, e2 = end_to_end_seconds(1), end_to_end_seconds(2)
    l1, l2 = (k * n / loader_only(backbone, folders[k], dev, batch_size, -1) for k in (1, 2))
    model = model_only(backbone, dev, batch_size, 2 * n)
    if e2 <= e1 or l2 <= l1:
        out = [Check("throughput", False, f"twice the images took no longer (end to end {e1:.2f} s then {e2:.2f} s, "
                                          f"loader-only {l1:.2f} s then {l2:.2f} s): too noisy to judge, re-run")]
    else:
        end_to_end, loader = n / (e2 - e1), n / (l2 - l1)
        ceiling, binds = min((model, "model-only"), (loader, "loader-only"))
        ratio = end_to_end / ceiling
        out = [Check("throughput", ratio >= MIN_RATIO,
                     f"{name} batch {batch_size}, steady rate from {n} and {2 * n} images: end to end "
                     f"{end_to_end:.0f} img/s, model-only {model:.0f}, loader-only {loader:.0f} ({binds} binds); "
                     f"end to end / {binds} {ratio:.2f} (>= {MIN_RATIO}). Whole runs of {2 * n}: end to end "
                     f"{2 * n / e2:.0f} img/s, loader-only {2 * n / l2:.0f}; end to end's fixed cost "
                     f"{2 * e1 - e2:.1f} s a run")]

    def gpu_decode() -> Check:
        rate = n / end_to_end_seconds(1, gpu_decode=True)
        return Check("throughput --gpu-decode", None, f"end to end {rate:.0f} img/s over {n} images, whole run "
                                                      f"({rate / model:.2f} x model-only, {rate * e1 / n:.2f} x "
                                                      "with CPU decoding; not judged)")
    return out + attempt("throughput --gpu-decode", gpu_decode)


def environment() -> str:
    """The machine as the checks see it: GPU, library versions, CPU cores, /dev/shm."""
    import timm
    import torchvision
    try:
        shm = shutil.disk_usage("/dev/shm")
        shm_text = f"/dev/shm {shm.total / 2**30:.1f} GiB ({shm.free / 2**30:.1f} free)"
        if shm.free < 2**30:
            shm_text += ": under 1 GiB, the DataLoader's workers may die (bus error) handing over batches of 256"
    except OSError:
        shm_text = "no /dev/shm"
    return (f"gpu-check on {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible), torch "
            f"{torch.__version__} (CUDA {torch.version.cuda}), torchvision {torchvision.__version__}, timm "
            f"{timm.__version__}; {cores()} CPU cores usable of {os.cpu_count()}, {shm_text}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--only", metavar="NAME[,NAME]", help=f"run only these checks, of: {', '.join(STEPS)} "
                                                          "(default: all)")


def chosen(only: str | None) -> list[str]:
    """The checks `--only` names, in their usual order; all without it."""
    names = [n.strip() for n in only.split(",")] if only else list(STEPS)
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        raise FeatbenchError(f"gpu-check --only: unknown check {unknown[0]!r}; use {', '.join(STEPS)}")
    return [n for n in STEPS if n in names]


def main(args: argparse.Namespace) -> int:
    names = chosen(args.only)
    if not torch.cuda.is_available():
        raise FeatbenchError(f"gpu-check: no CUDA GPU visible to torch {torch.__version__} "
                             f"(CUDA build {torch.version.cuda or 'none'}); nothing was checked")
    print(environment(), flush=True)
    root = Path(tempfile.mkdtemp(prefix="featbench-gpu-check-"))
    files = sorted(write_images(root / "small", 64).iterdir())
    steps = {"cuda-vs-cpu": lambda: check_matches_cpu(files), "gpu-decode": lambda: check_gpu_decode(files),
             "compile": lambda: check_compile(files),
             "finetune": lambda: check_finetune(write_images(root / "tinted", 240, (80, 60))),
             "torchrun": lambda: check_torchrun(root / "torchrun", torch.cuda.device_count()),
             "throughput": lambda: check_throughput(root / "throughput")}
    failed, started = 0, time.perf_counter()
    for name in names:
        t = time.perf_counter()
        for c in attempt(name, steps[name]):
            print(f"{c.line()} ({time.perf_counter() - t:.0f}s)", flush=True)
            failed += c.ok is False
    print(f"{'all passed' if not failed else f'{failed} FAILED'} in {time.perf_counter() - started:.0f}s")
    shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0
