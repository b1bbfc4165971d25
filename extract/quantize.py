"""Reduced-precision extraction on CPU: bf16 graphs (`inference_model(bf16=True)`) and int8 post-training
static quantisation of a backbone.

`--precision int8` runs the backbone on ONNX Runtime's int8 CPU kernels (VNNI where the CPU has it; the
optional extra `featbench[onnx]`): the fp32 model (uint8 input, normalisation inside, pooled features) is
exported to ONNX, BatchNorm folded, and quantised statically in ONNX Runtime's QDQ form: weights int8 per
output channel, activations uint8 per tensor with ranges at the 99.99th percentile of their magnitudes on
the calibration images; the first `FP32_CONVS` convolutions (the stem and first block, at full resolution)
stay fp32. The embeddings are not those of fp32: `python -m benchmarks speed` measures their cosine to
fp32 and the downstream cost.

Calibration uses images of the dataset itself: the `CALIBRATION_IMAGES` listed files whose path hashes
lowest (spread over the classes), their paths and (a hash of their paths and contents) part of the store's
provenance and reuse key, so every row of a store comes from one quantised model. Once a store has them, they
are the store's: a later run keeps its calibration record and embeds new images with its kept model, even
where new files hash lower (`recorded_calibration`); `--overwrite` calibrates afresh.
"""
import contextlib
import copy
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
from filelock import FileLock
from torch import nn

from extract.backbones import Preprocess
from extract.files import MAX_IMAGE_BYTES, read_file
from extract.images import BadImage, content_hash, load
from extract.inference import same_conv_inputs, same_pads
from features.atomic import atomic_write
from features.errors import FeatbenchError

PRECISIONS = ("fp32", "bf16", "int8")
CALIBRATION_IMAGES = 32
PERCENTILE = 99.99  # activation ranges: this percentile of |x| (MinMax: min cosine 0.80 on mobilenet_v2)
FP32_CONVS = 3  # the first convolutions stay fp32 (mobilenet_v2: min cosine 0.94 -> 0.985)
ORT_MIN = (1, 28)  # the first onnxruntime that quantises Flatten (pyproject.toml's floor)
INSTALL = "pip install 'featbench[onnx]'"
KEY = "featbench_key"  # the kept model's metadata entry: `Calibration.key`


class Calibration(NamedTuple):
    """The calibration images (uint8 NCHW), their record for the store's provenance and, for a store, where its
    quantised model is kept (`kept_model`)."""
    images: torch.Tensor | None  # None: a store's recorded images no longer all in the listing, unchanged
    record: dict  # {images: count, sha256: of the images' relative paths and content hashes, paths: in order}
    keep: Path | None = None  # the .onnx beside the store; None: quantised afresh, not kept
    key: str = ""  # what the kept model must have been made from: the store's provenance, settings and versions

    def kept_at(self, store: Path, provenance: dict) -> "Calibration":
        """This calibration, its quantised model kept beside `store` (`NAME-int8.onnx`) under a key of
        `provenance` (weights, preprocessing, readout, calibration), the quantisation settings and the torch, timm,
        onnx and onnxruntime versions."""
        import onnx
        import onnxruntime
        import timm

        versions = [torch.__version__, timm.__version__, onnx.__version__, onnxruntime.__version__]
        key = json.dumps([provenance, CALIBRATION_IMAGES, PERCENTILE, FP32_CONVS, versions], sort_keys=True)
        return self._replace(keep=store.with_suffix(".onnx"), key=hashlib.sha256(key.encode()).hexdigest())

    def model_kept(self) -> bool:
        """True when the model kept at `keep` was made under `key` (checked under the lock `kept_model` takes)."""
        if self.keep is None:
            return False
        with FileLock(str(self.keep) + ".lock"):
            return _kept_bytes(self) is not None


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
    if precision == "int8":
        _onnxruntime()


def calibration_set(items, preprocess: Preprocess, n: int = CALIBRATION_IMAGES,
                    max_bytes: int = MAX_IMAGE_BYTES) -> Calibration:
    """Up to `n` decodable images of `items` (`Item`s), those whose relative path hashes lowest, read as the
    pipeline reads them (`read_file`: regular files of at most `max_bytes`)."""
    ranked = sorted(items, key=lambda it: hashlib.sha256(it.rel.encode()).digest())
    images, paths, digest = [], [], hashlib.sha256()
    for it in ranked:
        if len(images) == n:
            break
        try:
            image, line = _read(it, preprocess, max_bytes)
        except (OSError, BadImage):
            continue
        images.append(image)
        paths.append(it.rel)
        digest.update(line)
    if not images:
        raise FeatbenchError("--precision int8: no image of the dataset could be decoded to calibrate on")
    return Calibration(torch.stack(images), {"images": len(images), "sha256": digest.hexdigest(), "paths": paths})


def recorded_calibration(items, record: dict, preprocess: Preprocess, max_bytes: int = MAX_IMAGE_BYTES,
                         rows=()) -> Calibration:
    """The calibration a store records (`record`), its images read again from `items` where they are all
    there unchanged, else None (then only the store's kept model can embed its new images). A record before
    its paths were listed is found again as the calibration set of the listing or of the store's `rows` (paths)."""
    if "paths" not in record:
        rows = set(rows)
        for among in (items, [it for it in items if it.rel in rows]):
            try:
                found = calibration_set(among, preprocess, record["images"], max_bytes)
            except FeatbenchError:
                continue
            if found.record["sha256"] == record["sha256"]:
                return found._replace(record=record)
        return Calibration(None, record)
    by_rel = {it.rel: it for it in items}
    images, digest = [], hashlib.sha256()
    for rel in record["paths"]:
        try:
            image, line = _read(by_rel[rel], preprocess, max_bytes)
        except (KeyError, OSError, BadImage):
            return Calibration(None, record)
        images.append(image)
        digest.update(line)
    if not images or digest.hexdigest() != record["sha256"]:
        return Calibration(None, record)
    return Calibration(torch.stack(images), record)


def _read(item, preprocess: Preprocess, max_bytes: int) -> tuple[torch.Tensor, bytes]:
    """One calibration image, and its line of the calibration set's hash."""
    data, _ = read_file(item.path, max_bytes)
    return load(data, preprocess), f"{item.rel}\0{content_hash(data)}\n".encode()


def _onnxruntime():
    """onnxruntime, or a one-line FeatbenchError saying how to install it (or, older than `ORT_MIN`, upgrade it)."""
    try:
        have = importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        have = None
    if have and tuple(int(x) for x in re.findall(r"\d+", have)[:2]) < ORT_MIN:
        raise FeatbenchError(f"--precision int8 needs onnxruntime {'.'.join(map(str, ORT_MIN))} or newer, not {have}: "
                             f"{INSTALL.replace('install', 'install -U')}")
    try:
        import onnx  # noqa: F401 - the export and the quantiser need it
        import onnxruntime
    except ImportError:
        raise FeatbenchError(f"--precision int8 runs on ONNX Runtime, which is not installed: {INSTALL}") from None
    return onnxruntime


class _Batches:
    """ONNX Runtime's `CalibrationDataReader`: the calibration images in batches of 32."""

    def __init__(self, images: torch.Tensor):
        self.batches = iter([{"x": images[i:i + 32].numpy()} for i in range(0, len(images), 32)])

    def get_next(self):
        return next(self.batches, None)


class OrtModel:
    """An ONNX model (uint8 NCHW → features) called like the torch model: a uint8 tensor in, a float32 tensor out.

    Each process builds its own session on its first call, with as many threads as torch has there (a forked
    embedding worker: one), so a model prepared before the fork is shared without sharing ONNX Runtime's
    threads. `optimize` False: ONNX Runtime's graph optimisations off (the QDQ graph run as written, in fp32)."""

    def __init__(self, model: bytes, optimize: bool = True):
        self.onnx, self.optimize, self._session, self._key = model, optimize, None, None

    def session(self):
        key = (os.getpid(), torch.get_num_threads())
        if self._key != key:
            ort = _onnxruntime()
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = key[1], 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if self.optimize else
                                                ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
            self._session = ort.InferenceSession(self.onnx, options, providers=["CPUExecutionProvider"])
            self._key = key
        return self._session

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().cpu().contiguous().numpy()
        return torch.from_numpy(self.session().run(None, {"x": x})[0])

    def __getstate__(self):  # pickled (spawned workers): the model, not the session
        return {**self.__dict__, "_session": None, "_key": None}

    def fp32_ops(self) -> list[str]:
        """The compute ops of the QDQ graph that run in fp32, each with its count: those whose data input (and for a
        convolution or matrix product, weight) is not dequantised int8."""
        import onnx

        graph = onnx.load_from_string(self.onnx).graph
        dequantised = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        counts = {}
        for n in graph.node:
            ins = n.input[:2] if n.op_type in ("Conv", "Gemm", "MatMul") else n.input[:1]
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and not set(ins) <= dequantised:
                counts[n.op_type] = counts.get(n.op_type, 0) + 1
        return [k + (f" x{c}" if c > 1 else "") for k, c in counts.items()]


def explicit_same_padding(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of `model` whose TensorFlow-style "same" convolutions (timm's `Conv2dSame`) are a fixed zero padding
    for the input size of `example` and a plain convolution: exported to ONNX as Pad + Conv, which ONNX Runtime
    fuses into one convolution with asymmetric padding. (`static_same_padding`'s kernel one tap larger, what the
    TorchScript graph needs, is slower in ONNX Runtime; the shape arithmetic of `Conv2dSame` itself exports as
    a computed Pad, which quantises badly: min cosine 0.82 on efficientnet_lite0.)"""
    from timm.layers import Conv2dSame

    if not any(isinstance(m, Conv2dSame) for m in model.modules()):
        return copy.deepcopy(model)
    model = copy.deepcopy(model)
    inputs = same_conv_inputs(model, example, lambda m: isinstance(m, Conv2dSame))
    for name, conv in list(model.named_modules()):
        if conv not in inputs:
            continue
        ph, pw = same_pads(conv, inputs[conv])
        plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                          conv.groups, conv.bias is not None)
        plain.load_state_dict(conv.state_dict())
        parent, _, attr = name.rpartition(".")
        pad = nn.ZeroPad2d((pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        setattr(model.get_submodule(parent), attr, nn.Sequential(pad, plain).eval().requires_grad_(False))
    return model


def quantized_model(model: nn.Module, calibration: torch.Tensor, optimize: bool = True) -> OrtModel:
    """`model` (uint8 NCHW → features) as an ONNX Runtime int8 model calibrated on `calibration` (the module
    docstring says how). Files are written only to a temporary folder, removed on return."""
    _onnxruntime()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    example = calibration[:2]
    model = explicit_same_padding(model, example).eval()
    quiet = logging.getLogger().level
    with tempfile.TemporaryDirectory(prefix="featbench-int8-") as tmp, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):  # the calibrator prints its progress
        warnings.simplefilter("ignore")
        logging.getLogger().setLevel(logging.ERROR)
        try:
            fp32, pre, int8 = (Path(tmp) / f"{n}.onnx" for n in ("fp32", "pre", "int8"))
            with torch.inference_mode():
                torch.onnx.export(model, (example,), str(fp32), opset_version=17, dynamo=False, input_names=["x"],
                                  output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
            quant_pre_process(str(fp32), str(pre))  # shapes inferred, BatchNorm folded
            import onnx

            convs = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"]
            quantize_static(str(pre), str(int8), _Batches(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.Percentile, nodes_to_exclude=convs[:FP32_CONVS],
                            extra_options={"CalibPercentile": PERCENTILE})
            return OrtModel(int8.read_bytes(), optimize)
        finally:
            logging.getLogger().setLevel(quiet)


def kept_model(model: nn.Module, calibration: Calibration, optimize: bool = True) -> OrtModel:
    """`quantized_model`, or without quantising again the one kept at `calibration.keep` when it was made under the
    same key; a model quantised afresh is kept there (written atomically, the key in its metadata). The torchrun
    ranks of one store share it: one quantises while the others wait on `NAME-int8.onnx.lock`, then read it."""
    if calibration.keep is None:
        return quantized_model(model, calibration.images, optimize)
    with FileLock(str(calibration.keep) + ".lock"):
        return _kept_model(model, calibration, optimize)


def _kept_model(model: nn.Module, calibration: Calibration, optimize: bool) -> OrtModel:
    import onnx

    data = _kept_bytes(calibration)
    if data is not None:
        return OrtModel(data, optimize)
    if calibration.images is None:
        raise FeatbenchError(f"{calibration.keep}: gone or made otherwise, and the store's calibration images are "
                             "no longer all in the dataset unchanged; re-run to calibrate afresh (or --overwrite)")
    fresh = quantized_model(model, calibration.images, optimize)
    graph = onnx.load_from_string(fresh.onnx)
    onnx.helper.set_model_props(graph, {KEY: calibration.key})
    atomic_write(calibration.keep, lambda tmp: tmp.write_bytes(graph.SerializeToString()))
    return fresh


def _kept_bytes(calibration: Calibration) -> bytes | None:
    """The model kept at `calibration.keep` when it was made under `calibration.key`; None where it is missing,
    unreadable, not an ONNX model or made under another key."""
    import onnx

    keep = calibration.keep
    if keep.is_file() and not keep.is_symlink():
        try:
            data = keep.read_bytes()
            if {p.key: p.value for p in onnx.load_from_string(data).metadata_props}.get(KEY) == calibration.key:
                return data
        except Exception:  # unreadable, or not an ONNX model: quantised again and replaced
            pass
    return None
