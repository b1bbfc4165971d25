"""A saved model on new images: embed them with the model's own backbones, then predict.

`predict` gives a label and probability per image; `submit` writes a Kaggle Dogs vs. Cats
submission (`id,label`, label = P(dog), sorted by numeric id).
"""
import csv
import io
import re
import sys
from pathlib import Path

import numpy as np

from classify.metrics import proba
from classify.models import build_backbones, load_model
from extract.datasets import IMAGE_EXT
from extract.device import pick_device
from extract.pipeline import Options, embed_files
from extract.quantize import check_precision
from features.atomic import atomic_write, check_file, check_folder, keep_earlier
from features.errors import FeatbenchError

KAGGLE_ID = re.compile(r"^(\d+)\.[^.]+$")


def image_files(inputs) -> list[Path]:
    """Entries as given; folders expanded to every entry named like an image (recursively, sorted), whatever it
    is: a broken link or a FIFO is listed too, and reported with why it could not be read, not dropped."""
    out = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXT and not f.name.startswith("."))
        elif p.exists() or p.is_symlink():
            out.append(p)
        else:
            raise FeatbenchError(f"{p}: no such image or folder")
    if not out:
        raise FeatbenchError(f"no images found in {', '.join(map(str, inputs))}")
    return out


def embedding_precision(record: dict, device: str) -> str:
    """The precision to embed new images in for a model trained on `record`'s store: its own where it can be
    reproduced here (bf16, on a CPU with bf16 arithmetic), else fp32 with a note on stderr (int8's graph is
    calibrated on the training images, which a model does not carry)."""
    precision = record.get("precision") or "fp32"
    if precision == "fp32":
        return precision
    why = "its int8 graph was calibrated on the training images"
    if precision == "bf16":
        try:
            check_precision(precision, pick_device(device))
            return precision
        except FeatbenchError as e:
            why = str(e)
    print(f"note: {record['store']} was extracted in {precision}; embedding these images in fp32 ({why})",
          file=sys.stderr)
    return "fp32"


def probabilities(model: dict, model_path, files: list[Path], device: str = "auto") -> tuple[np.ndarray, list]:
    """(class probabilities per file — NaN rows where it failed, reason per file ("" = ok)); one line naming the
    files and why where none could be read.

    The images are embedded exactly as extraction embedded the model's training images."""
    reasons = [""] * len(files)
    blocks = []
    for record, bb in zip(model["backbones"], build_backbones(model, model_path)):
        # autocast (CUDA) only where the training store had it, in its type (fp16 before the type was kept);
        # models before `amp` was kept: the default
        X, why = embed_files(bb, files, Options(device=device, amp=record.get("amp") is not False,
                                                amp_dtype=record.get("amp_dtype") or "float16",
                                                precision=embedding_precision(record, device), progress=False))
        blocks.append(X)
        reasons = [r or w for r, w in zip(reasons, why)]
    ok = np.array([not r for r in reasons])
    if not ok.any():
        named = ", ".join(f"{f} ({why})" for f, why in zip(files[:3], reasons))
        raise FeatbenchError(f"{named}{f' and {len(files) - 3} more' if len(files) > 3 else ''}: none of the "
                             f"{len(files)} images could be read; pass images that open (JPEG, PNG, …)")
    P = np.full((len(files), len(model["class_names"])), np.nan)
    P[ok] = proba(model["estimator"], np.hstack(blocks)[ok], len(model["class_names"]))
    return P, reasons


def predict(model_path, inputs, device: str = "auto", as_csv: bool = False,
            trust_pickle: bool = False) -> str:
    """A table (or CSV) of path, label, probability of that label, failed images naming their reason."""
    files = image_files(inputs)
    model = load_model(model_path, trust_pickle)
    P, reasons = probabilities(model, model_path, files, device)
    names = model["class_names"]
    rows = [(str(f), "", "", why) if why else (str(f), names[int(p.argmax())], f"{p.max():.4f}", "")
            for f, p, why in zip(files, P, reasons)]
    if as_csv:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["path", "label", "probability", "error"])
        writer.writerows(rows)
        return buf.getvalue().rstrip("\n")
    width = max(len(r[0]) for r in rows) + 2
    label_w = max(len(n) for n in ["label", *names]) + 2
    lines = [f"{'image':<{width}}{'label':<{label_w}}probability"]
    lines += [f"{f:<{width}}{'(skipped: ' + why + ')' if why else f'{lab:<{label_w}}{prob}'}"
              for f, lab, prob, why in rows]
    return "\n".join(lines)


def submit(model_path, folder, output, clip: float = 0.0, device: str = "auto",
           trust_pickle: bool = False) -> tuple[Path, int, int]:
    """Write `id,label` (label = P(dog)) for every N.jpg in `folder`; returns (path, rows, failed).

    Every entry so named is listed, whatever it is; those that cannot be read as images (a broken link, a FIFO,
    a corrupt file) get 0.5, so that the submission still lists every id. An earlier, different submission at
    `output` moves to `previous/N/` beside it (`keep_earlier`).
    """
    folder = Path(folder)
    if not 0 <= clip < 0.5:
        raise FeatbenchError(f"--clip must be in [0, 0.5), got {clip}")
    if not folder.is_dir():
        raise FeatbenchError(f"{folder}: no such test folder")
    entries = sorted(folder.iterdir())
    files = sorted((f for f in entries if KAGGLE_ID.match(f.name)), key=lambda f: int(KAGGLE_ID.match(f.name)[1]))
    if not files:
        raise FeatbenchError(f"{folder}: no test images named N.jpg (the Kaggle Dogs vs. Cats test1 layout)")
    ids = [int(KAGGLE_ID.match(f.name)[1]) for f in files]
    if len(set(ids)) < len(ids):
        raise FeatbenchError(f"{folder}: two images share a numeric id; Kaggle ids must be unique")
    output = check_file(output)
    check_folder(output.parent)
    model = load_model(model_path, trust_pickle)
    if "dog" not in model["class_names"]:
        raise FeatbenchError(f"{model_path}: a Dogs vs. Cats submission needs a model with a 'dog' class; "
                             f"this one has {', '.join(model['class_names'][:5])}")
    if others := [f.name for f in entries if not KAGGLE_ID.match(f.name)]:
        print(f"note: {folder}: {len(others)} name{'s' * (len(others) != 1)} not N.jpg left out of the submission "
              f"(first: {others[0]})", file=sys.stderr)
    P, reasons = probabilities(model, model_path, files, device)
    dog = np.where(np.isnan(P[:, 0]), 0.5, P[:, model["class_names"].index("dog")])
    dog = np.clip(dog, clip, 1 - clip)
    text = "id,label\n" + "".join(f"{i},{p:.6f}\n" for i, p in zip(ids, dog))
    data = text.encode()  # bytes: the same on every system, and compared as written
    keep_earlier(output, output.is_file() and output.read_bytes() == data)
    atomic_write(output, lambda tmp: tmp.write_bytes(data))
    return output, len(ids), sum(bool(r) for r in reasons)
