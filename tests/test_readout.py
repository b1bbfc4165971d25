"""Readout: ViT token pooling (--pool), the last N blocks (--blocks), the input size (--image-size) and flip TTA
(--tta), each in the store's name, provenance and reuse key."""
import numpy as np
import pytest
import torch

from classify.models import backbone_record, build_backbones
from extract.__main__ import main
from extract.backbones import DEFAULT_READOUT, Readout, create_backbone
from extract.datasets import load_dataset
from extract.images import load
from extract.pipeline import Options, extract
from features import FeatureStore
from features.cli import run_cli
from features.errors import FeatbenchError

from conftest import write_image

VIT, SIZE = "vit_tiny_patch16_224", 64


def _vit(**readout):
    return create_backbone(VIT, random_init=True, readout=Readout(image_size=SIZE, **readout))


def _normalised(bb, x):
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (bb.preprocess.mean, bb.preprocess.std))
    return (x / 255 - mean) / std


def test_pooling_reads_the_class_token_the_mean_patch_token_or_both():
    """Against timm's own forward_features (final norm applied), at 64 px with position embeddings resampled."""
    x = torch.randint(0, 255, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    default = _vit()
    with torch.inference_mode():
        tokens = default.model.trunk.forward_features(_normalised(default, x))
        cls, avg = tokens[:, 0], tokens[:, 1:].mean(1)
        got = {pool: _vit(pool=pool).model(x) for pool in ("cls", "avg", "cls+avg")}
        assert torch.allclose(default.model(x), cls, atol=1e-5)  # the model's own pooling is its class token
        assert torch.allclose(got["cls"], cls, atol=1e-5) and torch.allclose(got["avg"], avg, atol=1e-5)
        assert torch.allclose(got["cls+avg"], torch.cat([cls, avg], 1), atol=1e-5)
        two = _vit(blocks=2)
        assert two.readout == Readout(pool="cls", blocks=2, image_size=SIZE) and two.dim == 2 * default.dim
        feats = two.model(x)
        assert torch.allclose(feats[:, default.dim:], cls, atol=1e-5)  # the last block comes last
        assert not torch.allclose(feats[:, :default.dim], cls, atol=1e-3)
    assert default.preprocess.size == SIZE and default.preprocess.resize == round(SIZE * 248 / 224)
    assert default.weights["fingerprint"] == two.weights["fingerprint"]  # the weights, whatever the readout


def test_flip_embeds_the_mean_of_the_image_and_its_mirror():
    plain = create_backbone("resnet10t", random_init=True)
    flip = create_backbone("resnet10t", random_init=True, readout=Readout(tta="flip"))
    x = torch.randint(0, 255, (3, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        want = (plain.model(x) + plain.model(x.flip(3))) / 2
        assert torch.allclose(flip.model(x), want, atol=1e-5) and not torch.allclose(plain.model(x), want, atol=1e-3)


def test_readout_names_the_store_is_its_reuse_key_and_travels_with_a_model(tmp_path):
    for i in range(4):
        write_image(tmp_path / "d" / f"{('cat', 'dog')[i % 2]}.{i}.jpg", i)
    data = load_dataset(tmp_path / "d")
    bb = _vit(pool="cls+avg", blocks=2, tta="flip")
    run = extract(data, bb, tmp_path / "out", options=Options(progress=False, batch_size=4, workers=0))
    assert run.path.name == f"{VIT}-cls+avg-last2-{SIZE}px-flip-random-init.h5" and run.embedded == 4
    with FeatureStore(run.path) as s:
        assert s.meta.readout == {"pool": "cls+avg", "blocks": 2, "image_size": SIZE, "tta": "flip"}
        stored, paths, meta, stem = s.embeddings(np.arange(4)), s.paths, s.meta, s.path.stem
    x = torch.stack([load((tmp_path / "d" / p).read_bytes(), bb.preprocess) for p in paths])
    with torch.inference_mode():  # the stored rows went through the frozen TorchScript graph
        np.testing.assert_allclose(stored, bb.model(x).numpy(), atol=1e-4)
    again = extract(data, _vit(pool="cls+avg", blocks=2, tta="flip"), tmp_path / "out",
                    options=Options(progress=False, workers=0))
    assert again.embedded == 0 and again.path == run.path
    other = extract(data, _vit(pool="cls+avg", blocks=2), tmp_path / "out", options=Options(progress=False, workers=0))
    assert other.embedded == 4 and other.path != run.path
    rebuilt, = build_backbones({"backbones": [backbone_record(stem, meta)]}, "model.skops")
    assert rebuilt.readout == bb.readout and rebuilt.dim == bb.dim and rebuilt.preprocess == bb.preprocess
    assert create_backbone(VIT, random_init=True, readout=Readout(image_size=224)).readout == DEFAULT_READOUT


@pytest.mark.parametrize("name, readout, message", [
    ("resnet10t", Readout(pool="avg"), "--pool/--blocks read a ViT-style model's tokens, and resnet10t has none"),
    ("vit_medium_patch16_reg4_gap_256", Readout(pool="cls+avg"),
     "--pool cls+avg: vit_medium_patch16_reg4_gap_256 has no class token; use --pool avg"),
    ("inception_v3_fid", Readout(image_size=320), "--image-size: inception_v3_fid is a fixed TorchScript graph"),
    ("open_clip:ViT-S-32", Readout(image_size=64), "--image-size 64: open_clip:ViT-S-32 does not run at that size"),
    ("open_clip:ViT-S-32", Readout(pool="avg"), "--pool/--blocks read a ViT-style model's tokens, and "
                                                 "open_clip:ViT-S-32 has none"),
])
def test_a_readout_the_backbone_cannot_give_is_one_line(name, readout, message):
    if name.startswith("open_clip:"):
        pytest.importorskip("open_clip")
    with pytest.raises(FeatbenchError, match="^" + message.replace("+", r"\+")):
        create_backbone(name, random_init=name != "inception_v3_fid", readout=readout)


@pytest.mark.parametrize("flags, message", [
    (["--blocks", "0"], "--blocks 0: expected a whole number of blocks, at least 1"),
    (["--image-size", "8"], "--image-size 8: expected a side in pixels from 16 to 4096"),
])
def test_bad_readout_flags_are_one_line(dvc_folder, tmp_path, capsys, flags, message):
    argv = ["--backbone", "resnet10t", "--random-init", "--data", str(dvc_folder), "--out", str(tmp_path / "runs"), *flags]
    assert run_cli(main, argv) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
