"""The fastest exact form of a backbone on this device (same embeddings to float rounding)."""
import copy
import ctypes
import itertools
import sys
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from features.errors import FeatbenchError


def same_conv_inputs(model: nn.Module, example: torch.Tensor, which) -> dict:
    """Each module of `model` that `which` picks (timm's `Conv2dSame`s) → its input's (height, width) for the
    size of `example`, from one forward pass."""
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda m, args: inputs.__setitem__(m, args[0].shape[-2:]))
             for m in model.modules() if which(m)]
    with torch.inference_mode():
        model(example[:1])
    for h in hooks:
        h.remove()
    return inputs


def same_pads(conv: nn.Conv2d, size) -> list[int]:
    """The total (height, width) padding TensorFlow's "same" gives `conv` on an input of `size`."""
    return [max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
            for n, k, s, d in zip(size, conv.kernel_size, conv.stride, conv.dilation)]


def static_same_padding(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of `model` whose TensorFlow-style "same" convolutions (timm's `Conv2dSame`) pad statically.

    `Conv2dSame` pads asymmetrically (one more on the right/bottom) before each strided convolution.
    For the fixed input size of `example`, that equals a symmetric padding of a kernel one tap larger
    whose leading tap is zero: a plain convolution, which the CPU graph keeps in oneDNN's layout
    instead of converting every tensor to pad it.
    """
    from timm.layers import Conv2dSame

    def same(m):
        return isinstance(m, Conv2dSame) and m.dilation == (1, 1)

    if not any(map(same, model.modules())):
        return model
    model = copy.deepcopy(model)
    inputs = same_conv_inputs(model, example, same)
    for name, conv in list(model.named_modules()):
        if conv not in inputs:
            continue
        pads = same_pads(conv, inputs[conv])
        weight = F.pad(conv.weight.detach(), (pads[1] % 2, 0, pads[0] % 2, 0))  # odd padding: a leading zero tap
        plain = nn.Conv2d(conv.in_channels, conv.out_channels, tuple(weight.shape[-2:]), conv.stride,
                          tuple(p - p // 2 for p in pads), groups=conv.groups, bias=conv.bias is not None,
                          device=weight.device, dtype=weight.dtype)
        plain.weight.data.copy_(weight)
        if conv.bias is not None:
            plain.bias.data.copy_(conv.bias.detach())
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, plain.requires_grad_(False))
    return model


class _Flat(nn.Module):
    """`model` behind one module that owns all its parameters and buffers (as buffers).

    Tracing builds a ScriptModule per registered submodule (timm's backbones have hundreds), which
    lengthens each run's set-up. Traced through this wrapper, the same ops are recorded into one module,
    and freezing inlines the weights just the same.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        object.__setattr__(self, "inner", model)  # not registered: not a submodule
        for i, t in enumerate(itertools.chain(model.parameters(), model.buffers())):
            self.register_buffer(f"t{i}", t)
        self.train(model.training)

    def forward(self, x):
        return self.inner(x)


def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse freed activation memory instead of returning it to the kernel.

    By default every block over 32 MiB (a batch's activations) is mmapped and unmapped each time, so
    every forward pass page-faults its memory back in, and much of the CPU time goes to the kernel.
    Raising the mmap and trim thresholds keeps the peak batch's memory mapped (flat across batches).
    Process-wide; False where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library already loaded in this process
    except (OSError, AttributeError, TypeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, 1 << 30) and mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))


class _Compiled:
    """`torch.compile`'s model, with the usual form in reserve until its first two calls (the warm-up, which
    compiles, and the first real batch) have returned: a failure in either (e.g. no C++ compiler) runs the
    usual form from then on."""

    def __init__(self, model: nn.Module, usual):
        self.model, self.usual, self.trials = torch.compile(model), usual, 2  # usual(): the usual form

    def __call__(self, x):
        if not self.trials:
            return self.model(x)
        try:
            y = self.model(x)
        except Exception as e:  # noqa: BLE001 - any compile failure falls back to the exact model
            print(f"note: not compiled ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); "
                  "running the usual form", file=sys.stderr)
            self.model, self.trials = self.usual(), 0
            return self.model(x)
        self.trials -= 1
        return y


def inference_model(model: nn.Module, device: torch.device, example: torch.Tensor, optimize: bool = True,
                    compile: bool = False, warm_up=None, bf16: bool = False):
    """The fastest exact form of `model` here: channels-last on GPU (cuDNN picking the fastest kernels for
    the fixed batch shape); on CPU a frozen TorchScript graph with BatchNorm folded into convolutions
    (`optimize_for_inference`) and "same" padding made static, eager if tracing fails, and malloc set to
    keep freed activation memory.

    `compile`: `torch.compile` instead, compiled now by `warm_up(model, example)`, which must call it as
    every batch will (same autocast, memory format and shape: pad short batches); the usual form if
    compiling fails, now or on the first real batch (`_Compiled`).
    `bf16` (CPU, with `optimize`): the graph traced under bfloat16 autocast, channels-last (oneDNN's bf16
    kernels): not exact, and its output is bfloat16; a failure to trace is a FeatbenchError."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    if device.type == "cpu":
        keep_freed_memory()
    if compile:
        compiled = _Compiled(model, lambda: _usual(model, device, example, optimize, bf16))
        with torch.inference_mode():
            warm_up(compiled, example.clone())  # an inference tensor, as the batches are: no recompile on CPU
        return compiled
    return _usual(model, device, example, optimize, bf16)


def _usual(model: nn.Module, device: torch.device, example: torch.Tensor, optimize: bool, bf16: bool = False):
    if not optimize or device.type != "cpu":
        return model
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            model = static_same_padding(model, example)
            if bf16:
                model = copy.deepcopy(model).to(memory_format=torch.channels_last)
            if not any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):  # those must be registered
                model = _Flat(model)
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):  # the casts are recorded in the graph
                traced = torch.jit.trace(model, example, check_trace=False)  # the tests compare it with eager
            return torch.jit.optimize_for_inference(torch.jit.freeze(traced))
    except Exception as e:  # noqa: BLE001 - any tracing failure falls back to the exact eager model
        if bf16:
            raise FeatbenchError(f"--precision bf16: cannot trace the model ({type(e).__name__}); use fp32") from None
        print(f"note: running eager ({type(e).__name__} while optimising the model)", file=sys.stderr)
        return model
