"""CLIP image towers from open_clip (`open_clip:ARCH/TAG`): stored rows are `encode_image`, preprocessing is
open_clip's, weights files load through open_clip's safe loader, and every failure is one line."""
import importlib.metadata
import sys

import numpy as np
import pytest
import torch

from extract import clip
from extract.backbones import create_backbone
from extract.datasets import load_dataset
from extract.images import load
from extract.pipeline import Options, extract
from features import FeatureStore
from features.errors import FeatbenchError

from conftest import write_image

open_clip = pytest.importorskip("open_clip")
ARCH = "ViT-S-32"  # open_clip's smallest ViT: 22M image-tower parameters, no tag of its own


def _model(seed: int):
    torch.manual_seed(seed)
    return open_clip.create_model(ARCH, pretrained=None, pretrained_text=False).eval()


def _encode_image(model, x: torch.Tensor, pre) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (pre.mean, pre.std))
    with torch.inference_mode():
        return model.encode_image((x / 255 - mean) / std)


def test_stored_rows_are_encode_image_with_open_clips_preprocessing(tmp_path):
    """Random init (pretrained=None, seeded as every backbone): the store holds `encode_image` of the same
    preprocessed input, unnormalised, through the default CPU path (a frozen TorchScript trace), and records
    open_clip's version."""
    for i in range(4):
        write_image(tmp_path / "d" / f"{('cat', 'dog')[i % 2]}.{i}.jpg", i)
    name = f"open_clip:{ARCH}"
    bb = create_backbone(name, random_init=True)
    model = _model(0)
    cfg = open_clip.get_model_preprocess_cfg(model)
    assert cfg["resize_mode"] == "shortest"  # shorter side to the input size, centre crop
    assert (bb.preprocess.size, bb.preprocess.resize) == (cfg["size"][0], cfg["size"][0])
    assert (bb.preprocess.interpolation, bb.preprocess.mean, bb.preprocess.std) == (
        cfg["interpolation"], tuple(cfg["mean"]), tuple(cfg["std"]))
    summary = extract(load_dataset(tmp_path / "d"), bb, tmp_path / "out",
                      options=Options(progress=False, batch_size=4, workers=0))
    assert summary.path.name == f"open_clip_{ARCH}-random-init.h5"
    with FeatureStore(summary.path) as s:
        stored, paths, dim, backbone = s.embeddings(np.arange(len(s.paths))), s.paths, s.dim, s.backbone
        assert s.meta.versions["open_clip_torch"] == importlib.metadata.version("open_clip_torch")
    x = torch.stack([load((tmp_path / "d" / p).read_bytes(), bb.preprocess) for p in paths])
    ref = _encode_image(model, x, bb.preprocess)
    assert backbone == name and dim == bb.dim == ref.shape[1] == 384 and len(paths) == 4
    assert not np.allclose(np.linalg.norm(stored, axis=1), 1)  # not L2-normalised
    np.testing.assert_allclose(stored, ref.numpy(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("arch, tag, resize", [("ViT-B-32", "openai", 224), ("ViT-B-16-SigLIP", "webli", 0)])
def test_a_tags_preprocessing_is_open_clips(arch, tag, resize):
    """The tag's mean, std and interpolation; 'shortest' is resize-then-crop, 'squash' (SigLIP) a plain resize."""
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    pre = clip.spec(f"open_clip:{arch}/{tag}").preprocess
    assert (pre.size, pre.resize, pre.interpolation, pre.mean, pre.std) == (
        224, resize, cfg["interpolation"], tuple(cfg["mean"]), tuple(cfg["std"]))


def test_a_weights_file_loads_through_open_clips_safe_loader(tmp_path):
    """safetensors and torch.save files of a whole open_clip model (read with weights_only=True); an image tower
    alone is one line naming the missing keys, and a pickle naming code to call is refused."""
    from safetensors.torch import save_file
    model = _model(3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "m.safetensors")
    torch.save({"state_dict": model.state_dict()}, tmp_path / "m.pt")
    x = torch.randint(0, 255, (2, 3, 224, 224), dtype=torch.uint8)
    fingerprints = set()
    for file in ("m.safetensors", "m.pt"):
        bb = create_backbone(f"open_clip:{ARCH}", weights=tmp_path / file)
        with torch.inference_mode():
            np.testing.assert_allclose(bb.model(x), _encode_image(model, x, bb.preprocess), rtol=0, atol=1e-4)
        fingerprints.add(bb.weights["fingerprint"])
    assert len(fingerprints) == 1
    torch.save(model.visual.state_dict(), tmp_path / "visual.pt")
    with pytest.raises(FeatbenchError, match=r"^\S+visual.pt: cannot load as open_clip:ViT-S-32 weights \(ValueError: "
                                             r"not a whole ViT-S-32 open_clip model: Missing key\(s\)"):
        create_backbone(f"open_clip:{ARCH}", weights=tmp_path / "visual.pt")
    torch.save({"state_dict": model.state_dict(), "hook": print}, tmp_path / "code.pt")  # a global: code to run
    with pytest.raises(FeatbenchError, match=r"^\S+code.pt: cannot load as open_clip:ViT-S-32 weights \(UnpicklingError: "
                                             r"not a pickle of tensors only, and featbench unpickles nothing else\)"):
        create_backbone(f"open_clip:{ARCH}", weights=tmp_path / "code.pt")


def test_open_clip_names_that_cannot_load_are_one_actionable_line(monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as a machine without the hub, at once
    listing = "python -c 'import open_clip; print(open_clip.list_pretrained())'"
    cases = {"open_clip:ViT-B-32/laion2b_s34b_b79k":
             "cannot get the weights of open_clip:ViT-B-32/laion2b_s34b_b79k (RuntimeError: Failed to download weights "
             "for tag 'laion2b_s34b_b79k': Failed to download file (open_clip_pytorch_model.bin) for "
             "laion/CLIP-ViT-B-32-laion2B-s34B-b79K); where there is a network, run `hf download "
             "laion/CLIP-ViT-B-32-laion2B-s34B-b79K --local-dir DIR`, copy DIR here and pass --backbone "
             "open_clip:ViT-B-32/laion2b_s34b_b79k --weights DIR/open_clip_model.safetensors (or "
             "open_clip_pytorch_model.bin)",
             "open_clip:ViT-B-32-nope/openai": "unknown open_clip architecture 'ViT-B-32-nope': name a model "
                                               f"open_clip:ARCH/TAG, with the (ARCH, TAG) pairs of {listing}",
             "open_clip:RN50/nope": "unknown open_clip tag 'nope' for RN50: one of openai, yfcc15m, cc12m (every pair: "
                                    f"{listing})",
             "open_clip:RN50": "open_clip:RN50 names no weights: open_clip:RN50/TAG with TAG one of openai, yfcc15m, "
                               "cc12m, or pass --weights FILE or --random-init"}
    for name, message in cases.items():
        with pytest.raises(FeatbenchError) as err:
            create_backbone(name)
        assert str(err.value) == message
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if not installed
    with pytest.raises(FeatbenchError, match=r"^open_clip:RN50/openai needs open_clip, which is not installed: "
                                             r"pip install -e '\.\[clip\]'$"):
        create_backbone("open_clip:RN50/openai")
