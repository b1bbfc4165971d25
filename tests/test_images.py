"""Hostile inputs: every kind of bad or unusual file is embedded after conversion or refused with a reason."""
import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
import torch.nn.functional as F
from PIL import Image, ImageFile

from extract.backbones import Preprocess
from extract.images import BadImage, decode, decode_array, load, resize_crop

PRE = Preprocess(32, 36)


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width × height RGB pixels, with a few bytes of pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def big_jpeg(width: int, height: int) -> bytes:
    """A solid grey width × height JPEG (4:2:0; sides multiples of 16) made in milliseconds: two rows of 16-pixel
    blocks encoded with a restart marker after each, the first row's coded data repeated (each after its RSTn
    marker) and the height in the frame header set."""
    data = _jpeg(Image.new("RGB", (width, 32), (128, 128, 128)), quality=50, restart_marker_rows=1)
    sos = data.index(b"\xff\xda")
    start = sos + 2 + struct.unpack(">H", data[sos + 2:sos + 4])[0]
    row = data[start:data.index(b"\xff\xd0", start)]
    scan = row + b"".join(bytes([0xFF, 0xD0 + i % 8]) + row for i in range(height // 16 - 1))
    sof = data.index(b"\xff\xc0")
    return data[:sof + 5] + struct.pack(">H", height) + data[sof + 7:start] + scan + b"\xff\xd9"


RGB = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))


def hostile_files() -> dict[str, bytes | None]:
    """name → bytes (None: not creatable as bytes); names say what each one is."""
    gif = io.BytesIO()
    RGB.convert("P").save(gif, "GIF")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    return {
        "cmyk.jpg": _jpeg(RGB.convert("CMYK")),
        "gray.jpg": _jpeg(RGB.convert("L")),
        "gif-named.jpg": gif.getvalue(),
        "png-named.jpg": _png(RGB),
        "gray16.png": _png(Image.fromarray((np.arange(60 * 80).reshape(60, 80) * 13).astype(np.uint16))),
        "palette.png": _png(RGB.convert("P", palette=Image.ADAPTIVE)),
        "alpha.png": _png(RGB.convert("RGBA")),
        "exif-rotated.jpg": _jpeg(RGB, exif=exif),
        "thin-1x20000.png": _png(Image.new("RGB", (1, 20000), (200, 10, 10))),
    }


@pytest.mark.parametrize("name", list(hostile_files()))
def test_unusual_images_become_rgb(name):
    img = decode(hostile_files()[name])
    assert img.mode == "RGB"
    assert np.array_equal(decode_array(hostile_files()[name]), np.asarray(img))  # libjpeg-turbo path: PIL's pixels
    x = load(hostile_files()[name], PRE)
    assert x.shape == (3, 32, 32) and str(x.dtype) == "torch.uint8"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_rotation_applied(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _jpeg(RGB, exif=exif)
    assert decode(data).size == ((60, 80) if orientation >= 5 else (80, 60))  # 5-8: portrait after rotation
    assert np.array_equal(decode_array(data), np.asarray(decode(data)))


@pytest.mark.parametrize("min_side", [0, 256, 500, 700, 1000])
def test_fast_jpeg_decoding_gives_pils_pixels_and_draft_scale(min_side):
    data = _jpeg(RGB.resize((2000, 1500), Image.BICUBIC), quality=90)
    fast, pil = decode_array(data, min_side), np.asarray(decode(data, min_side))
    assert fast.shape == pil.shape and min(fast.shape[:2]) >= min(min_side, 1500) and np.array_equal(fast, pil)


def test_alpha_composited_on_white():
    clear = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert decode(_png(clear)).getpixel((5, 5)) == (255, 255, 255)


BAD = {
    "empty": (b"", "empty file"),
    "truncated": (_jpeg(RGB)[:300], "corrupt or truncated"),
    "text": (b"this is not an image\n" * 10, "not an image"),
    "garbage-jpeg-header": (b"\xff\xd8\xff\xe0" + b"\x00" * 100, "not an image|corrupt"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_files_refused_with_reason(name):
    data, reason = BAD[name]
    with pytest.raises(BadImage, match=reason):
        load(data, PRE)


def test_decompression_bomb_refused(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 60×80 = 4800 pixels > 2× limit
    with pytest.raises(BadImage, match=r"decompression bomb refused \(Image size \(4800 pixels\) exceeds limit of \d+ "
                                       r"pixels\)$"):
        decode(_png(RGB))


@pytest.mark.parametrize("width, height", [(12000, 9008), (16320, 12240)])  # 108 MP and 200 MP phone sensors
def test_large_photos_are_judged_by_the_pixels_decoded(width, height):
    """PIL's limit (89.5 MP, 256 MiB as 8-bit RGB) bounds what is decoded: a JPEG whose header claims more is
    decoded in draft mode at the scale the resize needs (here 1/8: 1.7 and 3 MP) and embedded; decoded at full
    size it is refused, with the reason."""
    data = big_jpeg(width, height)
    x = load(data, Preprocess(224, 256))
    assert x.shape == (3, 224, 224) and x.min() == x.max() == 128
    assert decode_array(data, 256).shape == (height // 8, width // 8, 3)
    with pytest.raises(BadImage, match=rf"^decompression bomb refused \(Image size \({width * height} pixels\) "
                                       rf"exceeds limit of {Image.MAX_IMAGE_PIXELS} pixels\)$"):
        decode(data)


def test_a_png_claiming_50000_by_50000_is_refused():
    with pytest.raises(BadImage, match=rf"^decompression bomb refused \(Image size \(2500000000 pixels\) exceeds "
                                       rf"limit of {2 * Image.MAX_IMAGE_PIXELS} pixels\)$"):
        load(png_header_only(50000, 50000), PRE)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "lanczos"])
def test_resize_crop_matches_torchvision(interpolation):
    """torch's uint8 antialiased resize (bilinear, bicubic) and PIL's on the crop region (others) stay within
    two levels of torchvision's Resize + CenterCrop on a PIL image, > 98% of pixels identical."""
    from torchvision.transforms import CenterCrop, InterpolationMode, Resize
    pre = Preprocess(224, 256, interpolation)
    for size in [(500, 375), (375, 500), (333, 333), (1000, 301), (256, 256), (230, 240), (100, 60), (3000, 2000)]:
        img = RGB.resize(size, Image.BICUBIC)
        ref = CenterCrop(224)(Resize(256, InterpolationMode(interpolation), antialias=True)(img))
        out = resize_crop(np.asarray(img).copy(), pre)
        assert out.shape == (3, 224, 224) and out.is_contiguous()
        diff = np.abs(out.permute(1, 2, 0).numpy().astype(int) - np.asarray(ref, dtype=int))
        assert diff.max() <= 2 and (diff == 0).mean() > 0.98, (size, diff.max(), (diff == 0).mean())


def test_thin_image_resized_within_memory(tmp_path):
    """A 1×20000 PNG: only the crop region is resized (the whole image scaled first took gigabytes).
    Measured in a fresh process: ru_maxrss is a process-wide high-water mark, so in this one it would
    depend on whichever test ran before."""
    thin = tmp_path / "thin.png"
    thin.write_bytes(hostile_files()["thin-1x20000.png"])
    probe = (
        "import resource, sys\n"
        "from extract.backbones import Preprocess\n"
        "from extract.images import load\n"
        f"load({_png(RGB)!r}, Preprocess(224, 256))\n"  # warm: the first resize's own buffers are not the image's
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "x = load(open(sys.argv[1], 'rb').read(), Preprocess(224, 256))\n"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(grown, x.shape[0], x.shape[1], x.shape[2], *x[:, 100, 100].tolist())\n")
    done = subprocess.run([sys.executable, "-c", probe, str(thin)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    grown, *shape_and_pixel = map(int, done.stdout.split())
    assert shape_and_pixel == [3, 224, 224, 200, 10, 10]
    assert grown < 200_000, f"{grown} KiB"  # the whole 256×5,120,000 RGB image would be 3.7 GiB


@pytest.mark.parametrize("owner,step,data", [(ImageFile.ImageFile, "load", _png(RGB)), (simplejpeg, "decode_jpeg", _jpeg(RGB)),
                                             (F, "interpolate", _png(RGB)),
                                             (Image.Image, "resize", _png(Image.new("RGB", (1, 20000))))])
def test_out_of_memory_is_a_skip_reason(monkeypatch, owner, step, data):
    def no_memory(*a, **kw):
        raise MemoryError
    monkeypatch.setattr(owner, step, no_memory)
    with pytest.raises(BadImage, match="out of memory"):
        load(data, PRE)


def test_draft_decoding_stays_close_to_full_decode():
    big = RGB.resize((1200, 900), Image.BICUBIC)
    data = _jpeg(big, quality=95)
    pre = Preprocess(224, 256)
    fast, full = load(data, pre).float(), load(data, pre, draft=False).float()
    assert (fast - full).abs().mean() < 3.0  # of 255: visually identical
