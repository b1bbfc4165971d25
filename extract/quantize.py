"""Reduced-precision extraction on CPU: bf16 graphs (`inference_model(bf16=True)`) and int8 post-training
static quantisation of a backbone.

`--precision int8` runs the backbone as an int8 graph on oneDNN's kernels (AVX-512 VNNI where the CPU
has it): PyTorch's FX quantisation with the oneDNN backend's defaults (weights per channel, 8-bit
activations with ranges from a histogram of the calibration images), BatchNorm folded into the
convolutions, then traced and frozen like the fp32 graph. The embeddings are not those of fp32:
`python -m benchmarks speed` measures their cosine to fp32 and the downstream cost.

Calibration uses images of the dataset itself: the `CALIBRATION_IMAGES` listed files whose path hashes
lowest (stable as images are added, spread over the classes), by their content hashes part of the
store's provenance and reuse key, so every row of a store comes from one quantised model.
"""
import copy
import hashlib
import warnings
from typing import NamedTuple

import torch
from torch import nn

from extract.backbones import Preprocess
from extract.images import BadImage, content_hash, load
from extract.inference import keep_freed_memory, static_same_padding
from features.errors import FeatbenchError

PRECISIONS = ("fp32", "bf16", "int8")
CALIBRATION_IMAGES = 64
ENGINE = "onednn"


class Calibration(NamedTuple):
    """The calibration images (uint8 NCHW) and their record for the store's provenance."""
    images: torch.Tensor
    record: dict  # {images: count, sha256: of the images' relative paths and content hashes}


def check_precision(precision: str, device: torch.device, compile: bool = False, optimize: bool = True) -> None:
    """One-line refusal of a precision this device, CPU, torch build or `--compile`/`--no-optimize` cannot run."""
    if precision not in PRECISIONS:
        raise FeatbenchError(f"unknown --precision {precision!r}; use {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return
    if device.type != "cpu":
        raise FeatbenchError(f"--precision {precision} runs on CPU only, not {device.type}; use --device cpu, or fp32 "
                             "(on CUDA it runs under autocast: --amp-dtype)")
    if compile or (precision == "bf16" and not optimize):
        raise FeatbenchError(f"--precision {precision} runs its own frozen graph; drop --compile and --no-optimize")
    if precision == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        raise FeatbenchError("--precision bf16: this CPU has no native bfloat16 arithmetic (AVX-512 BF16 or AMX), "
                             "so it would be slower than fp32; use fp32 or int8")
    if precision == "int8" and ENGINE not in torch.backends.quantized.supported_engines:
        raise FeatbenchError(f"--precision int8: this torch build has no {ENGINE} quantised kernels "
                             f"(it has {', '.join(torch.backends.quantized.supported_engines)}); use fp32")


def calibration_set(items, preprocess: Preprocess, n: int = CALIBRATION_IMAGES) -> Calibration:
    """Up to `n` decodable images of `items` (`Item`s), those whose relative path hashes lowest."""
    ranked = sorted(items, key=lambda it: hashlib.sha256(it.rel.encode()).digest())
    images, digest = [], hashlib.sha256()
    for it in ranked:
        if len(images) == n:
            break
        try:
            data = it.path.read_bytes()
            images.append(load(data, preprocess))
        except (OSError, BadImage):
            continue
        digest.update(f"{it.rel}\0{content_hash(data)}\n".encode())
    if not images:
        raise FeatbenchError("--precision int8: no image of the dataset could be decoded to calibrate on")
    return Calibration(torch.stack(images), {"images": len(images), "sha256": digest.hexdigest()})


def plain_batch_norm(model: nn.Module) -> nn.Module:
    """`model` with timm's fused BatchNorm + activation modules split into BatchNorm2d, dropout, activation.

    Quantisation folds a BatchNorm2d into the convolution before it; timm's `BatchNormAct2d` calls
    batch norm as a function, which would stay an fp32 op between dequantising and requantising.
    """
    from timm.layers import BatchNormAct2d

    for name, m in list(model.named_modules()):
        if isinstance(m, BatchNormAct2d):
            bn = nn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
            bn.load_state_dict(m.state_dict(), strict=False)
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, nn.Sequential(bn, m.drop, m.act).eval())
    return model


def quantized_model(model: nn.Module, calibration: torch.Tensor, optimize: bool = True):
    """`model` (uint8 NCHW → features) as an int8 graph calibrated on `calibration`, frozen unless not `optimize`.

    Sets torch's quantised engine (process-wide) to oneDNN, whose kernels the graph's weights are packed for.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    keep_freed_memory()
    torch.backends.quantized.engine = ENGINE
    example = calibration[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FX quantisation's deprecation notices
        model = plain_batch_norm(copy.deepcopy(static_same_padding(model, example)).eval())
        observed = prepare_fx(model, get_default_qconfig_mapping(ENGINE), (example,))
        with torch.inference_mode():
            for i in range(0, len(calibration), 32):
                observed(calibration[i:i + 32])
        quantized = convert_fx(observed)
        if not optimize:
            return quantized
        with torch.inference_mode():
            traced = torch.jit.trace(quantized, example, check_trace=False)
            return torch.jit.optimize_for_inference(torch.jit.freeze(traced))
