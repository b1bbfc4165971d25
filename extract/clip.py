"""CLIP image towers from open_clip as backbones: `open_clip:ARCH/TAG` (the optional extra: pip install -e '.[clip]').

The embedding is the image tower's output, what `model.encode_image(x)` returns: projected and *not*
L2-normalised, as in the linear-probe example of openai/CLIP's README (the paper's CLIP-ViT probes read the
features before that projection, as openai/CLIP issue #353 quotes it). Preprocessing is open_clip's own
for the tag (size, mean, std, interpolation, resize mode). The tag's weights download through open_clip from
the Hugging Face Hub when the network allows; offline, `--weights FILE` with the same name loads a
downloaded checkpoint through open_clip's loader (safetensors, or `torch.load(weights_only=True)`, which
unpickles tensors only) and keeps the tag's preprocessing. `open_clip:ARCH` alone takes --weights FILE or --random-init.
"""
import logging
import os
from contextlib import contextmanager

from extract.backbones import Preprocess, Spec
from features.errors import FeatbenchError

PREFIX = "open_clip:"


def _why(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0].split('. ')[0][:160]}"


@contextmanager
def _quiet():
    """open_clip logs to the root logger (a warning for each random init, an error before each failure it raises):
    featbench stamps the one and words the other itself."""
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


def spec(name: str) -> Spec:
    """The Spec of `open_clip:ARCH[/TAG]`, or one line saying why there is none."""
    try:
        import open_clip
    except ImportError:
        raise FeatbenchError(f"{name} needs open_clip, which is not installed: pip install -e '.[clip]'") from None
    arch, _, tag = name[len(PREFIX):].partition("/")
    if arch not in open_clip.list_models():
        raise FeatbenchError(f"unknown open_clip architecture {arch!r}: name a model open_clip:ARCH/TAG, with the "
                             "(ARCH, TAG) pairs of python -c 'import open_clip; print(open_clip.list_pretrained())'")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag and not open_clip.get_pretrained_cfg(arch, tag):
        raise FeatbenchError(f"unknown open_clip tag {tag!r} for {arch}: one of {', '.join(tags) or 'none'} "
                             "(every pair: python -c 'import open_clip; print(open_clip.list_pretrained())')")
    cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}

    def create(pretrained: str | None):
        with _quiet():
            model = open_clip.create_model(arch, pretrained=pretrained, pretrained_text=False, weights_only=True,
                                           force_quick_gelu=cfg.get("quick_gelu", False))  # as the tag was trained
        return model.visual, None

    def build():
        try:
            return create(None)
        except Exception as e:  # noqa: BLE001 - e.g. a text tower whose config is on the Hub, offline: one line
            raise FeatbenchError(f"cannot build {name} ({_why(e)})") from None

    def online():
        if not tag:
            raise FeatbenchError(f"{name} names no weights: open_clip:{arch}/TAG with TAG one of "
                                 f"{', '.join(tags) or 'none'}, or pass --weights FILE or --random-init")
        try:
            return create(tag)
        except Exception as e:  # noqa: BLE001 - offline, the Hub unreachable: one actionable line
            raise FeatbenchError(_offline(name, cfg["hf_hub"], e)) from None

    def load_file(trunk, head, path):
        try:
            return create(str(path))
        except RuntimeError as e:  # torch's strict load: its first line names the model, the second the keys
            lines = str(e).splitlines()
            if len(lines) < 2 or not lines[0].startswith("Error(s) in loading state_dict"):
                raise
            raise ValueError(f"not a whole {arch} open_clip model: {lines[1].strip()}") from None

    return Spec(name, None, _preprocess(name, open_clip, arch, cfg), build, load_file, online,
                note="open_clip image tower")


def _offline(name: str, hub: str, e: Exception) -> str:
    repo, file = os.path.split(hub)  # open_clip's 'ORG/NAME/' (its default file names) or 'ORG/NAME/FILE'
    files = file or "open_clip_model.safetensors (or open_clip_pytorch_model.bin)"
    return (f"cannot get the weights of {name} ({_why(e)}); where there is a network, run `hf download {repo} "
            f"--local-dir DIR`, copy DIR here and pass --backbone {name} --weights DIR/{files}")


def _preprocess(name: str, open_clip, arch: str, cfg: dict) -> Preprocess:
    """open_clip's eval transform as a featbench Preprocess: 'shortest' resizes the shorter side to the input size
    and centre-crops, 'squash' resizes to size×size; 'longest' (letterbox padding) has no equivalent here."""
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict
    size = open_clip.get_model_config(arch)["vision_cfg"]["image_size"]
    p = merge_preprocess_dict(PreprocessCfg(size=size), cfg)
    if p["resize_mode"] not in ("shortest", "squash"):
        raise FeatbenchError(f"{name}: open_clip resize mode {p['resize_mode']!r} (padding) is not supported")
    interpolation = "bilinear" if p["interpolation"] == "bilinear" else "bicubic"  # open_clip's eval rule
    return Preprocess(size, size if p["resize_mode"] == "shortest" else 0, interpolation, tuple(p["mean"]),
                      tuple(p["std"]))
