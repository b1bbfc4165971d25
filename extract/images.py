"""Turning any file into model input, or into a reason why not.

Handles truncated/corrupt files, zero-byte files, GIF/PNG named `.jpg`, CMYK, grayscale, 16-bit and
palette PNGs, alpha (composited on white), EXIF rotation and decompression bombs. JPEGs are decoded
in draft mode (DCT-domain downscaling) when that still leaves at least the resize target.
"""
import hashlib
import io
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from extract.backbones import Preprocess

RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
            "lanczos": Image.LANCZOS}


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


def decode(data: bytes, min_side: int = 0) -> Image.Image:
    """Bytes → upright RGB image, or BadImage with the reason.

    `min_side`: the JPEG decoder may downscale by 2/4/8 as long as the shorter side stays ≥ this.
    """
    if not data:
        raise BadImage("empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
            if min_side and img.format == "JPEG" and img.mode in ("RGB", "L"):
                w, h = img.size
                scale = min_side / min(w, h)
                img.draft(img.mode, (int(w * scale + 1), int(h * scale + 1)))
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise BadImage(f"decompression bomb refused ({e})".split(" could be")[0] + ")") from None
        except UnidentifiedImageError:
            raise BadImage("not an image PIL can read") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise BadImage(f"corrupt or truncated image ({str(e) or type(e).__name__})") from None
        except MemoryError:
            raise BadImage(OUT_OF_MEMORY) from None


def resize_crop(img: Image.Image, pre: Preprocess) -> Image.Image:
    """Shorter side to `pre.resize`, centre crop `pre.size`, as torchvision does (resize=0: squash).

    A downscaled image has only the source region under the crop resampled (PIL's `box`): a third
    less work, and a 1×20000 strip no longer takes gigabytes. PIL passes the box as float32, so ~1% of
    pixels differ by one level from torchvision's Resize + CenterCrop. Upscaled images (small) are
    resized whole: exactly torchvision's pixels (a float32 box moves a fifth of them there).
    """
    resample = RESAMPLE[pre.interpolation]
    if pre.resize == 0:
        return img.resize((pre.size, pre.size), resample)
    w, h = img.size
    if w <= h:
        nw, nh = pre.resize, max(1, int(h * pre.resize / w))
    else:
        nw, nh = max(1, int(w * pre.resize / h)), pre.resize
    left, top = int(round((nw - pre.size) / 2)), int(round((nh - pre.size) / 2))
    crop = (left, top, left + pre.size, top + pre.size)
    if nw > w and max(nw, nh) <= 8 * pre.resize:
        return img.resize((nw, nh), resample).crop(crop)
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(crop[2], nw), min(crop[3], nh)  # crop ∩ resized image
    sx, sy = w / nw, h / nh
    region = img.resize((x1 - x0, y1 - y0), resample, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy))
    return region if (x0, y0, x1, y1) == crop else region.crop((left - x0, top - y0, crop[2] - x0, crop[3] - y0))


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image → uint8 CHW tensor (normalisation happens on the batch, in the model)."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def min_decode_side(pre: Preprocess) -> int:
    return pre.resize or pre.size


def load(data: bytes, pre: Preprocess, draft: bool = True) -> torch.Tensor:
    """Bytes → uint8 CHW tensor ready for the backbone (raises BadImage, also when memory runs out)."""
    try:
        return to_tensor(resize_crop(decode(data, min_decode_side(pre) if draft else 0), pre))
    except MemoryError:
        raise BadImage(OUT_OF_MEMORY) from None
