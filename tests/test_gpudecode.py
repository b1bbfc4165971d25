"""--gpu-decode's code run with device="cpu": same embeddings as the CPU decoding path, same fallbacks."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from extract import gpudecode
from extract.__main__ import main as extract_main
from extract.backbones import create_backbone
from extract.images import load
from extract.pipeline import Options, _provenance, embed_files
from features.cli import run_cli
from features.errors import FeatbenchError

from conftest import DOGS_VS_CATS, needs, write_image


def jpeg(size=(300, 200), **save) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        out, "JPEG", **save)
    return out.getvalue()


@pytest.fixture(scope="module")
def pre():
    return create_backbone("resnet10t", random_init=True).preprocess


def test_only_upright_rgb_jpegs_go_to_the_device(pre):
    exif = Image.Exif()
    exif[0x0112] = 6
    png = io.BytesIO()
    Image.new("RGB", (300, 200)).save(png, "PNG")
    assert gpudecode.on_device(jpeg(), pre)
    assert not gpudecode.on_device(jpeg(exif=exif), pre)  # an EXIF turn: the CPU path turns it
    assert not gpudecode.on_device(png.getvalue(), pre) and not gpudecode.on_device(b"not an image", pre)
    assert not gpudecode.on_device(jpeg((4000, 10)), pre)  # a strip resize_crop gives to PIL


def test_a_batch_keeps_its_order_and_the_cpu_decoded_images(pre):
    a, b = jpeg((300, 200)), jpeg((200, 300), quality=70)
    cpu_decoded = load(b, pre)
    raw = torch.frombuffer(bytearray(a), dtype=torch.uint8)
    batch = gpudecode.decode_batch(gpudecode.pack([raw, cpu_decoded, raw]), pre, torch.device("cpu"))
    assert batch.shape == (3, 3, pre.size, pre.size) and batch.dtype == torch.uint8
    assert torch.equal(batch[1], cpu_decoded) and torch.equal(batch[0], batch[2])
    diff = (batch[0].int() - load(a, pre).int()).abs().float()  # full decode vs draft: pixels close
    assert diff.mean() < 3


def test_images_of_one_size_are_resized_together_as_one_by_one(pre, monkeypatch):
    rng = np.random.default_rng(1)
    images = [torch.from_numpy(rng.integers(0, 255, (3, *hw), dtype=np.uint8)) for hw in
              ((200, 300), (300, 200), (200, 300), (200, 300), (120, 90))]
    together = gpudecode.resize_crop(images, pre)
    monkeypatch.setattr(gpudecode, "RESIZE_VALUES", 1)  # one image a call
    one_by_one = gpudecode.resize_crop(images, pre)
    assert [tuple(x.shape) for x in together] == [(3, pre.size, pre.size)] * 5
    assert all(torch.equal(a, b) for a, b in zip(together, one_by_one))
    assert not torch.equal(together[0], together[2])  # each image its own, in order


def test_a_corrupt_jpeg_is_one_line(pre):
    bad = torch.frombuffer(bytearray(jpeg()[:400]), dtype=torch.uint8)
    with pytest.raises(FeatbenchError, match="corrupt .*run without --gpu-decode"):
        gpudecode.decode_batch(gpudecode.pack([bad]), pre, torch.device("cpu"))


@needs(DOGS_VS_CATS)
def test_same_embeddings_as_the_cpu_path_on_real_photos():
    """Real weights (a random-init model's features agree too easily): full decode on the device against the
    CPU's draft decode."""
    from test_backbones import real
    files = sorted(DOGS_VS_CATS.glob("cat.*.jpg"))[:12] + sorted(DOGS_VS_CATS.glob("dog.*.jpg"))[:12]
    bb = real("mobilenet_v2")
    options = {"device": "cpu", "workers": 0, "progress": False, "batch_size": 8}
    plain, _ = embed_files(bb, files, Options(**options))
    gpu, reasons = embed_files(bb, files, Options(**options, gpu_decode=True))
    cos = (plain * gpu).sum(1) / np.linalg.norm(plain, axis=1) / np.linalg.norm(gpu, axis=1)
    assert not any(reasons) and cos.min() >= 0.999, cos.min()


def test_without_cuda_the_flags_are_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    write_image(tmp_path / "d" / "cat.0.jpg", 0)
    assert run_cli(extract_main, ["--backbone", "resnet10t", "--random-init", "--data", str(tmp_path / "d"),
                                  "--device", "cpu", "--gpu-decode", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == "error: --gpu-decode needs a CUDA GPU (this run is on cpu); drop --gpu-decode\n"
    assert run_cli(extract_main, ["--backbone", "resnet10t", "--random-init", "--data", str(tmp_path / "d"),
                                  "--device", "cpu", "--amp-dtype", "float16", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == "error: --amp-dtype needs a CUDA GPU (this run is on cpu); drop --amp-dtype\n"
    assert not (tmp_path / "o").exists()


def test_device_decoding_is_in_the_reuse_key_only_when_used():
    bb = create_backbone("resnet10t", random_init=True)
    assert _provenance(bb, None, gpu_decode=True)["gpu_decode"] is True and "gpu_decode" not in _provenance(bb, None)
