"""`python -m benchmarks gpu-check`: featbench's GPU acceptance check, one PASS or FAIL line per check.

It runs in minutes on one CUDA GPU and needs no network: it writes its own JPEGs and uses random-init models.
  cuda-vs-cpu  extraction on cuda (fp32) matches cpu: cosine >= 0.999, all finite, for a convnet and a ViT
  amp          fp16 and bf16 autocast both give finite embeddings, cosine >= 0.99 against cpu fp32
  gpu-decode   --gpu-decode (nvJPEG) against the CPU's decoding, both fp32 on cuda: cosine >= 0.999
  compile      --compile: no recompile after the warm-up, short last batch included
  finetune     a 1-epoch fine-tune (fp16 autocast with GradScaler) lowers the val log-loss
  torchrun     (2+ GPUs) the ranks run on distinct GPUs, and a dataset with fewer images than ranks works
  throughput   resnet50 at batch 256: featbench end to end / model-only forward >= 0.8
A failing check does not stop the others; the exit status is 1 when any failed. Without a CUDA GPU it
says so in one line and exits 2.
"""
import argparse
import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from extract.backbones import create_backbone
from extract.pipeline import Options, embed_files
from features.errors import FeatbenchError

CONVNET, VIT, TINY = "resnet50", "vit_small_patch16_224", "resnet10t"
MIN_COSINE, MIN_AMP_COSINE, MIN_RATIO = 0.999, 0.99, 0.8


class Check(NamedTuple):
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


def write_images(root: Path, n: int, size: tuple[int, int] = (500, 375)) -> Path:
    """`n` photo-sized JPEGs named as Dogs vs. Cats (cat.I.jpg, dog.I.jpg), smooth random content with a
    colour tint per class (something a fine-tune can learn); kept when already there."""
    from PIL import Image
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        kind = ("cat", "dog")[i % 2]
        path = root / f"{kind}.{i // 2}.jpg"
        if path.exists():
            continue
        small = rng.integers(0, 196, (12, 16, 3)) + np.array((60, 0, 0) if kind == "cat" else (0, 0, 60))
        Image.fromarray(small.astype(np.uint8)).resize(size, Image.BICUBIC).save(path, quality=90)
    return root


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


def check_matches_cpu(files: list, device: str = "cuda") -> list[Check]:
    """Extraction on `device`, fp32 and under each autocast type, against the CPU's fp32 (workers 0 on the
    CPU: no process forks after CUDA started)."""
    out = []
    for name in (CONVNET, VIT):
        cpu = embed(name, files, "cpu", workers=0)
        fp32 = embed(name, files, device, amp=False)
        cos, finite = min_cosine(cpu, fp32), bool(np.isfinite(fp32).all())
        out.append(Check(f"cuda-vs-cpu {name}", finite and cos >= MIN_COSINE,
                         f"min cosine {cos:.5f} (>= {MIN_COSINE}), {'all finite' if finite else 'NON-FINITE'}"))
        for dtype in ("float16", "bfloat16"):
            amp = embed(name, files, device, amp_dtype=dtype)
            cos = min_cosine(cpu, amp)
            out.append(Check(f"amp {dtype} {name}", np.isfinite(amp).all() and cos >= MIN_AMP_COSINE,
                             f"min cosine {cos:.5f} against cpu fp32 (>= {MIN_AMP_COSINE})"))
    return out


def check_gpu_decode(files: list, device: str = "cuda") -> Check:
    cpu_decoded, gpu_decoded = (embed(CONVNET, files, device, amp=False, gpu_decode=g) for g in (False, True))
    cos = min_cosine(cpu_decoded, gpu_decoded)
    return Check("gpu-decode", cos >= MIN_COSINE,
                 f"{CONVNET} min cosine {cos:.5f} against CPU decoding (>= {MIN_COSINE})")


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
                          timeout=300)


def check_torchrun(root: Path) -> list[Check]:
    ranks = min(torch.cuda.device_count(), 8)
    run = torchrun(write_images(root / "many", 8 * ranks, (160, 120)), root / "runs", ranks)
    devices = rank_devices(run.stdout)
    ok = run.returncode == 0 and len(devices) == ranks and len(set(devices.values())) == ranks
    out = [Check("torchrun distinct GPUs", ok, f"{ranks} ranks on {', '.join(devices[r] for r in sorted(devices))}"
                 if devices else f"exit {run.returncode}: {(run.stderr.strip().splitlines() or [''])[-1][:160]}")]
    run = torchrun(write_images(root / "one", 1, (160, 120)), root / "runs", ranks)
    out.append(Check("torchrun 1 image, more ranks", run.returncode == 0,
                     f"exit {run.returncode}" + (f": {(run.stderr.strip().splitlines() or [''])[-1][:160]}"
                                                 if run.returncode else "")))
    return out


def check_throughput(root: Path, device: str = "cuda", batch_size: int = 256, batches: int = 12) -> Check:
    """resnet50 end to end (files to store; the better of two runs, the first warms cuDNN and the page cache)
    against the model-only forward of `benchmarks speed` (synchronised, channels-last, autocast)."""
    from benchmarks.speed import featbench, model_only
    backbone = create_backbone(CONVNET, random_init=True)
    folder = write_images(root, batch_size * batches)
    dev = torch.device(device)
    end_to_end = max(featbench(backbone, folder, dev, batch_size, -1)[0] for _ in range(2))
    model = model_only(backbone, dev, batch_size, batch_size * batches)
    ratio = end_to_end / model
    return Check("throughput", ratio >= MIN_RATIO, f"{CONVNET} batch {batch_size}: end to end {end_to_end:.0f} img/s, "
                                                  f"model-only {model:.0f} img/s, ratio {ratio:.2f} (>= {MIN_RATIO})")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter


def main(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available():
        raise FeatbenchError(f"gpu-check: no CUDA GPU visible to torch {torch.__version__} "
                             f"(CUDA build {torch.version.cuda or 'none'}); nothing was checked")
    print(f"gpu-check on {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible), torch "
          f"{torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="featbench-gpu-check-"))
    files = sorted(write_images(root / "small", 64).iterdir())
    steps = {"cuda-vs-cpu and amp": lambda: check_matches_cpu(files), "gpu-decode": lambda: check_gpu_decode(files),
             "compile": lambda: check_compile(files),
             "finetune": lambda: check_finetune(write_images(root / "tinted", 240, (80, 60)))}
    if torch.cuda.device_count() > 1:
        steps["torchrun"] = lambda: check_torchrun(root / "torchrun")
    steps["throughput"] = lambda: check_throughput(root / "throughput")
    failed, started = 0, time.perf_counter()
    for name, step in steps.items():
        t = time.perf_counter()
        try:
            checks = step()
        except Exception as e:  # noqa: BLE001 - a check that crashes fails, in one line; the others still run
            checks = Check(name, False, _why(e))
        for c in checks if isinstance(checks, list) else [checks]:
            print(f"{c.line()} ({time.perf_counter() - t:.0f}s)", flush=True)
            failed += not c.ok
    print(f"{'all passed' if not failed else f'{failed} FAILED'} in {time.perf_counter() - started:.0f}s")
    return 1 if failed else 0
