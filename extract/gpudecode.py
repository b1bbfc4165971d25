"""`--gpu-decode`: JPEGs decoded on the GPU (nvJPEG through torchvision), a batch at a time, for when CPU
decoding caps throughput.

A worker still reads and hashes each file; a JPEG that `resize_crop` would resize with torch (RGB or
grayscale, upright: no EXIF turn, bilinear or bicubic) goes to the device as its bytes, and is decoded
there at full size, resized and cropped as `resize_crop` does (antialiased, in float32, rounded to
uint8). Every other file is decoded on the CPU as without the flag. The CPU decodes in draft mode (a
DCT-scaled image), so the two paths' pixels differ slightly; their embeddings agree (the tests: cosine).
"""
import io
from typing import NamedTuple

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from extract.backbones import Preprocess
from extract.images import BadImage, by_torch, geometry, load
from features.errors import FeatbenchError

RESIZE_VALUES = 2**27  # float32 values resized in one call: 512 MiB


def on_device(data: bytes, pre: Preprocess) -> bool:
    """Whether the device decodes this file: a JPEG whose CPU path would be `resize_crop`'s torch resize."""
    try:
        img = Image.open(io.BytesIO(data))
        if img.format != "JPEG" or img.mode not in ("RGB", "L") or img.getexif().get(0x0112, 1) != 1:
            return False
        w, h = img.size
    except Exception:  # noqa: BLE001 - anything PIL cannot open: the CPU path says why
        return False
    return by_torch(pre, *geometry(h, w, pre))


def resize_crop(images: list[torch.Tensor], pre: Preprocess) -> list[torch.Tensor]:
    """CHW uint8 images on any device → CHW uint8 `pre.size` squares: `images.resize_crop`'s torch path, in
    float32. Images of one size are resized together (a few kernels a batch, not a few an image), at most
    `RESIZE_VALUES` float32 values at a time."""
    out: list = [None] * len(images)
    sizes: dict[tuple, list[int]] = {}
    for i, x in enumerate(images):
        sizes.setdefault(tuple(x.shape), []).append(i)
    for (c, h, w), idx in sizes.items():
        nh, nw, top, left = geometry(h, w, pre)
        step = max(1, RESIZE_VALUES // (c * max(h * w, nh * nw)))
        for start in range(0, len(idx), step):
            chunk = idx[start:start + step]
            y = F.interpolate(torch.stack([images[i] for i in chunk]).float(), (nh, nw), mode=pre.interpolation,
                              antialias=True)
            y = y[:, :, top:top + pre.size, left:left + pre.size].round().clamp(0, 255).to(torch.uint8)
            for i, yi in zip(chunk, y):
                out[i] = yi
    return out


class Packed(NamedTuple):
    """A batch as a DataLoader worker sends it: its JPEGs' bytes end to end in one tensor (a tensor an image
    costs more to send than the file costs to read), their lengths, the images the CPU decoded (one
    (M, 3, S, S) tensor) and which of the batch's images are JPEGs, in order."""
    jpegs: torch.Tensor | None
    lengths: list[int]
    decoded: torch.Tensor | None
    is_jpeg: list[bool]


def pack(images: list[torch.Tensor]) -> Packed:
    """A batch's images, each decoded (CHW) or JPEG bytes (1-D), as one `Packed`."""
    jpegs = [x for x in images if x.ndim == 1]
    decoded = [x for x in images if x.ndim != 1]
    return Packed(torch.cat(jpegs) if jpegs else None, [len(x) for x in jpegs],
                  torch.stack(decoded) if decoded else None, [x.ndim == 1 for x in images])


def decode_batch(batch: Packed, pre: Preprocess, device: torch.device) -> torch.Tensor:
    """A `Packed` batch as one (N, 3, S, S) uint8 tensor on `device`, in order: the JPEGs decoded there in one
    call. A JPEG the device cannot decode is decoded by the CPU path."""
    jpegs = list(batch.jpegs.split(batch.lengths)) if batch.jpegs is not None else []
    try:
        decoded = iter(device_decode(jpegs, pre, device))
    except RuntimeError:  # one bad file fails the whole call: take the files one by one on the CPU
        decoded = iter([_on_cpu(x, pre).to(device) for x in jpegs])
    others = iter(batch.decoded.to(device, non_blocking=True) if batch.decoded is not None else ())
    return torch.stack([next(decoded) if jpeg else next(others) for jpeg in batch.is_jpeg])


def device_decode(jpegs: list[torch.Tensor], pre: Preprocess, device: torch.device) -> list[torch.Tensor]:
    """JPEG bytes (1-D uint8 tensors) → CHW uint8 `pre.size` squares, decoded on `device` in one call and
    resized there; a RuntimeError when the device cannot decode one of them.

    On CUDA the queued work (the previous batch's forward) finishes first: nvJPEG's hardware engine can write
    its output into memory the caching allocator has freed but queued kernels still read (torchvision
    pull 9606; torchcodec pull 1634 added the same wait)."""
    if not jpegs:
        return []
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    return resize_crop(decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device), pre)


def _on_cpu(data: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    try:
        return load(data.cpu().numpy().tobytes(), pre)
    except BadImage as e:
        raise FeatbenchError(f"a JPEG of this batch is corrupt ({e}), which --gpu-decode cannot skip; "
                             "run without --gpu-decode") from None
