"""Where a model runs: the device choice, this process's CPU cores, and the one autocast decision."""
import os

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
            raise FeatbenchError("--device cuda: no CUDA GPU visible to torch; use --device cpu")
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


def cores() -> int:
    """CPU cores for this process (its affinity), shared among the ranks of a `torchrun` on this machine."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def default_workers(device: torch.device) -> int:
    """Decoding processes: all cores (up to 8) feed a GPU; on CPU they share the cores with the model."""
    return min(8, cores()) if device.type != "cpu" else max(1, cores() // 2)


def uses_amp(device: torch.device, amp: bool = True) -> bool:
    """Whether a run with `amp` asked for computes in fp16 autocast: on CUDA only."""
    return amp and device.type == "cuda"


def autocast(device: torch.device, amp: bool = True) -> torch.autocast:
    """fp16 autocast on CUDA when `amp`; elsewhere (and without `amp`) full precision."""
    if uses_amp(device, amp):
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast("cpu", enabled=False)
