"""Turning any file into model input, or into a reason why not.

Handles truncated/corrupt files, zero-byte files, GIF/PNG named `.jpg`, CMYK, grayscale, 16-bit and
palette PNGs, alpha (composited on white), EXIF rotation and decompression bombs (judged by the pixels
decoded, so 100-200 MP photos pass). JPEGs are decoded in draft mode (DCT-domain downscaling) when that
still leaves at least the resize target; RGB and grayscale JPEGs by libjpeg-turbo straight into an array
(simplejpeg: PIL's pixels in half its time).
Decoding alone does not load torch; resizing to a tensor does.
"""
import hashlib
import io
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import simplejpeg
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

if TYPE_CHECKING:
    import torch

    from extract.backbones import Preprocess

RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
            "lanczos": Image.LANCZOS}
ORIENT = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],  # EXIF tag 0x0112,
          5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),     # as PIL's exif_transpose
          7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1], 8: lambda a: np.rot90(a)}


class BadImage(Exception):
    """The file cannot be embedded; the message is the reason recorded in the store."""


OUT_OF_MEMORY = "out of memory decoding or resizing the image"


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


@contextmanager
def _reasons():
    """Turn whatever decoding raises into BadImage with the reason (decompression bomb warnings too; any other
    exception named by its type)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise BadImage(f"decompression bomb refused ({str(e).split(' could be')[0].rstrip(', ')})") from None
        except UnidentifiedImageError:
            raise BadImage("not an image PIL can read") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise BadImage(f"corrupt or truncated image ({str(e) or type(e).__name__})") from None
        except MemoryError:
            raise BadImage(OUT_OF_MEMORY) from None
        except BadImage:
            raise
        except Exception as e:  # noqa: BLE001 - a decoder's bug on odd input (a TIFF tag of the wrong type): a skip
            raise BadImage(f"unreadable image ({type(e).__name__}: {e})") from None


JPEG_START = b"\xff\xd8\xff"  # the start of image and the next marker's first byte, as PIL tells a JPEG


def _open(data: bytes, min_side: int) -> Image.Image:
    """The lazily opened image, its JPEG decoder set to downscale by 2/4/8 while the shorter side stays ≥ min_side;
    refused as a decompression bomb when it would decode more pixels than PIL's limit.

    The limit (`Image.MAX_IMAGE_PIXELS`: 89.5 MP, 256 MiB as 8-bit RGB) bounds what one decode takes, so it is
    applied to the pixels decoded. PIL judges the size a header claims: a JPEG it refuses for that is opened
    again without the check and judged at the size draft mode decodes, so a 200 MP phone photo decodes at 1/8
    (3 MP) for a 256-pixel resize, while a PNG claiming 50,000 × 50,000, or a JPEG decoded whole, is refused."""
    if not data:
        raise BadImage("empty file")
    try:
        img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        if not data.startswith(JPEG_START):
            raise
        img = JpegImagePlugin.jpeg_factory(io.BytesIO(data))  # what Image.open ran, before its size check
    if min_side and img.format == "JPEG" and img.mode in ("RGB", "L"):
        w, h = img.size
        scale = min_side / min(w, h)
        img.draft(img.mode, (int(w * scale + 1), int(h * scale + 1)))
    _refuse_bomb(*img.size)
    return img


def _refuse_bomb(w: int, h: int) -> None:
    """BadImage when a w × h decode is over PIL's limit (as PIL words it, for one reason in the store)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and w * h > limit:
        raise BadImage(f"decompression bomb refused (Image size ({w * h} pixels) exceeds limit of {limit} pixels)")


def _upright_rgb(img: Image.Image) -> Image.Image:
    """PIL decodes the opened image, turns it upright (EXIF) and converts it to RGB."""
    img.load()
    return _to_rgb(ImageOps.exif_transpose(img))


def decode(data: bytes, min_side: int = 0) -> Image.Image:
    """Bytes → upright RGB image by PIL, or BadImage with the reason (`min_side`: see `_open`)."""
    with _reasons():
        return _upright_rgb(_open(data, min_side))


def decode_array(data: bytes, min_side: int = 0) -> np.ndarray:
    """Bytes → upright RGB HWC uint8 array, or BadImage; as `decode`, but RGB and grayscale JPEGs are
    decoded by libjpeg-turbo into the array directly (same pixels and draft scale as PIL's decoder)."""
    with _reasons():
        img = _open(data, min_side)
        if img.format == "JPEG" and img.mode in ("RGB", "L"):
            w, h = img.size  # after draft: the size simplejpeg's DCT scaling has to produce
            try:
                arr = simplejpeg.decode_jpeg(data, "RGB", min_height=h, min_width=w)
            except ValueError:  # corrupt or unusual: PIL decodes it or says why
                arr = None
            if arr is not None and arr.shape[:2] == (h, w):
                turn = ORIENT.get(img.getexif().get(0x0112))
                return np.ascontiguousarray(turn(arr)) if turn else arr
        return np.array(_upright_rgb(img))


def geometry(h: int, w: int, pre: "Preprocess") -> tuple[int, int, int, int]:
    """(height, width, top, left): the size an h × w image is resized to and the corner of its centre crop."""
    if pre.resize == 0:
        nw = nh = pre.size
    elif w <= h:
        nw, nh = pre.resize, max(1, int(h * pre.resize / w))
    else:
        nw, nh = max(1, int(w * pre.resize / h)), pre.resize
    return nh, nw, int(round((nh - pre.size) / 2)), int(round((nw - pre.size) / 2))


def by_torch(pre: "Preprocess", nh: int, nw: int, top: int, left: int) -> bool:
    """Whether `resize_crop` resizes with torch's antialiased interpolation (else PIL's)."""
    return (pre.interpolation in ("bilinear", "bicubic") and min(left, top) >= 0
            and max(nw, nh) <= 8 * max(pre.resize, pre.size))


def resize_crop(img: np.ndarray, pre: "Preprocess") -> "torch.Tensor":
    """HWC uint8 RGB → CHW uint8: shorter side to `pre.resize`, centre crop `pre.size`, as torchvision does
    (resize=0: squash).

    Bilinear and bicubic use torch's antialiased uint8 resize (a port of PIL's, faster: a small share of
    pixels a level or two off torchvision's PIL-based Resize). Other filters, and strips so thin that
    the whole resized image would take gigabytes, use PIL: downscales resample only the source region
    under the crop (`box`, float32: a small share of pixels a level off).
    """
    import torch
    h, w = img.shape[:2]
    nh, nw, top, left = geometry(h, w, pre)
    if by_torch(pre, nh, nw, top, left):
        x = torch.nn.functional.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None], (nh, nw),
                                            mode=pre.interpolation, antialias=True)[0]
        return x[:, top:top + pre.size, left:left + pre.size].contiguous()
    crop, resample = (left, top, left + pre.size, top + pre.size), RESAMPLE[pre.interpolation]
    pil = Image.fromarray(img)
    if nw > w and max(nw, nh) <= 8 * pre.resize:  # upscale: whole (a float32 box moves a fifth of the pixels)
        region = pil.resize((nw, nh), resample).crop(crop)
    else:
        x0, y0, x1, y1 = max(left, 0), max(top, 0), min(crop[2], nw), min(crop[3], nh)  # crop ∩ resized image
        sx, sy = w / nw, h / nh
        region = pil.resize((x1 - x0, y1 - y0), resample, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy))
        if (x0, y0, x1, y1) != crop:
            region = region.crop((left - x0, top - y0, crop[2] - x0, crop[3] - y0))
    return torch.from_numpy(np.array(region)).permute(2, 0, 1).contiguous()


def min_decode_side(pre: "Preprocess") -> int:
    return pre.resize or pre.size


def load(data: bytes, pre: "Preprocess", draft: bool = True) -> "torch.Tensor":
    """Bytes → uint8 CHW tensor ready for the backbone (raises BadImage, also when memory runs out)."""
    try:
        return resize_crop(decode_array(data, min_decode_side(pre) if draft else 0), pre)
    except MemoryError:
        raise BadImage(OUT_OF_MEMORY) from None
