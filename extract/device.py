"""Where a model runs: the device choice (a torchrun rank's GPU included), this process's CPU cores, the
default batch size, and the one autocast decision."""
import os
from typing import Mapping

import torch

from features.errors import FeatbenchError


def pick_device(name: str = "auto") -> torch.device:
    """`auto` (CUDA, then MPS, then CPU) or an explicit device, checked against what torch can see."""
    if name != "auto":
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise FeatbenchError(f"unknown --device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise FeatbenchError(f"--device {name}: no CUDA GPU visible to torch; use --device cpu")
        if dev.type == "cuda" and (dev.index or 0) >= (n := torch.cuda.device_count()):
            raise FeatbenchError(f"--device {name}: only {n} CUDA GPU{'s' if n != 1 else ''} visible "
                                 f"(cuda:0..cuda:{n - 1}); check CUDA_VISIBLE_DEVICES")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise FeatbenchError("--device mps: Apple MPS is not available; use --device cpu")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def rank_device(name: str, env: Mapping[str, str], cuda_devices: int) -> str:
    """`name` for this process: under torchrun (`LOCAL_RANK` set), a plain `cuda`, or `auto` when CUDA GPUs are
    visible, is `cuda:LOCAL_RANK % cuda_devices` (ranks share GPUs when there are fewer); anything else unchanged."""
    if "LOCAL_RANK" not in env or cuda_devices < 1 or name not in ("cuda", "auto"):
        return name
    return f"cuda:{int(env['LOCAL_RANK']) % cuda_devices}"


def claim(device: torch.device) -> None:
    """Make `device` this process's current CUDA GPU (before any CUDA work, so nothing lands on GPU 0)."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


DEFAULT_BATCH = {"cuda": 256}  # images per forward pass by device type; others 32


def default_batch_size(device: torch.device) -> int:
    return DEFAULT_BATCH.get(device.type, 32)


def cores() -> int:
    """CPU cores for this process (its affinity), shared among the ranks of a `torchrun` on this machine."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


MAX_GPU_WORKERS = 32  # a GPU's resnet50 forward outruns ~28 cores decoding photos (H200: 15,000 img/s)


def default_workers(device: torch.device) -> int:
    """Decoding processes: a GPU is fed by all cores but one (the main process's, which feeds the GPU and
    writes), up to `MAX_GPU_WORKERS`; on CPU they share the cores with the model."""
    return max(1, min(MAX_GPU_WORKERS, cores() - 1)) if device.type != "cpu" else max(1, cores() // 2)


def to_host(y: torch.Tensor):
    """Start copying `y` (on a CUDA GPU) into pinned host memory, without waiting: returns a call that waits
    for the copy and gives the numpy array."""
    host = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
    host.copy_(y, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()

    def wait():
        copied.synchronize()
        return host.numpy()
    return wait


AMP_DTYPES = ("float16", "bfloat16")


def uses_amp(device: torch.device, amp: bool = True) -> bool:
    """Whether a run with `amp` asked for computes in autocast: on CUDA only."""
    return amp and device.type == "cuda"


def amp_dtype(name: str | None = None) -> str:
    """The CUDA autocast type: `name`, or by default bfloat16 where the GPU supports it (Ampere and newer: no
    fp16 overflow), else float16."""
    if name is None:
        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float16"
    if name not in AMP_DTYPES:
        raise FeatbenchError(f"unknown --amp-dtype {name!r}; use {' or '.join(AMP_DTYPES)}")
    return name


def autocast(device: torch.device, amp: bool = True, dtype: str | None = None) -> torch.autocast:
    """Autocast in `amp_dtype(dtype)` on CUDA when `amp`; elsewhere (and without `amp`) full precision."""
    if uses_amp(device, amp):
        return torch.autocast("cuda", dtype=getattr(torch, amp_dtype(dtype)))
    return torch.autocast("cpu", enabled=False)
