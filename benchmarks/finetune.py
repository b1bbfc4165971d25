"""`python -m benchmarks finetune`: the fine-tuned baseline, trained and scored on the heads' split.

Modes: `full` trains every layer; `bn-head` trains only the BatchNorm layers and a new linear head
(the seeds' ResNet recipe); `head` trains only a new linear head on the frozen trunk. All three use
the backbone's own preprocessing (as in extraction), random horizontal flips, AdamW with a one-cycle
schedule, and early stopping on validation log-loss (the best epoch's weights are kept). CUDA runs
with fp16 autocast; CPU works too, slowly (`--epochs 1 --epoch-images N` for a quick look).

The split is the one the heads were scored on: read from a feature store of the dataset (the same
backbone's if there is one), or, without a store, recomputed from the listing with the same
fractions and seed. Writes `OUT/DATASET/models/BACKBONE-finetune-MODE.metrics.json` (classify's
keys, head `finetune-MODE`, plus `compute`) and the weights as `.pt`.
"""
import argparse
import copy
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, log_loss
from torch import nn

from classify.metrics import evaluate
from classify.models import atomic_write
from extract.backbones import create_backbone
from extract.config import add_dataset_args, resolve
from extract.datasets import assign_splits, load_dataset
from extract.images import BadImage, load
from extract.inference import keep_freed_memory
from extract.pipeline import default_workers, pick_device, store_path
from features.errors import FeatbenchError
from features.reader import FeatureStore
from features.schema import NO_LABEL, SPLITS, featbench_version, split_fingerprint

MODES = {"full": "every layer trained",
         "bn-head": "BatchNorm layers and a new linear head trained (the seeds' ResNet recipe)",
         "head": "a new linear head trained on the frozen trunk"}
DEFAULT_LR = {"full": 5e-4, "bn-head": 2e-3, "head": 2e-3}


@dataclass
class SplitImages:
    """The labelled images of each split, as relative paths under `root`, and where the split came from."""
    root: Path
    dataset: dict
    class_names: list
    paths: dict  # split → [rel path]
    labels: dict  # split → np.ndarray
    fingerprint: str
    source: str


def _from_store(path: Path) -> SplitImages:
    with FeatureStore(path) as fs:
        labels, splits, paths, meta = fs.labels, fs.splits, fs.paths, fs.meta
    keep = {s: np.flatnonzero((splits == SPLITS.index(s)) & (labels != NO_LABEL)) for s in SPLITS}
    return SplitImages(Path(meta["dataset"]["root"]), meta["dataset"], meta["class_names"],
                       {s: [paths[i] for i in rows] for s, rows in keep.items()},
                       {s: labels[rows] for s, rows in keep.items()}, meta["split_fingerprint"], f"store {path}")


def same_split(settings, backbone: str, features: Path | None = None) -> SplitImages:
    """The heads' split: `features`, else this backbone's store, else any store made with these
    fractions and seed, else the listing split afresh (identical when no image was skipped)."""
    if features is not None:
        return _from_store(features)
    dataset = load_dataset(settings.path, settings.format, settings.target, settings.name)
    folder = settings.out / dataset.name
    candidates = [folder / f"{backbone}.h5"] + sorted(folder.glob("*.h5"))
    for path in dict.fromkeys(candidates):
        if not path.is_file():
            continue
        with FeatureStore(path) as fs:
            same = (fs.meta["split_fractions"] == list(settings.splits) and fs.meta["split_seed"] == settings.seed
                    and fs.meta["dataset"]["root"] == str(dataset.root))
        if same:
            return _from_store(path)
    codes = assign_splits(dataset.items, settings.splits, settings.seed)
    labels = np.array([it.label for it in dataset.items])
    rels = [it.rel for it in dataset.items]
    keep = {s: np.flatnonzero((codes == SPLITS.index(s)) & (labels != NO_LABEL)) for s in SPLITS}
    return SplitImages(dataset.root, dataset.describe(), dataset.class_names,
                       {s: [rels[i] for i in rows] for s, rows in keep.items()},
                       {s: labels[rows] for s, rows in keep.items()},
                       split_fingerprint(rels, labels, codes), "dataset listing (no feature store yet)")


class _Images(torch.utils.data.Dataset):
    """(uint8 CHW image, label, index); None for a file that cannot be read."""

    def __init__(self, root: Path, paths: list, labels: np.ndarray, preprocess):
        self.root, self.paths, self.labels, self.preprocess = root, paths, labels, preprocess

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            x = load((self.root / self.paths[i]).read_bytes(), self.preprocess)
        except (OSError, BadImage):
            x = None
        return x, int(self.labels[i]), i


def _collate(batch):
    good = [b for b in batch if b[0] is not None]
    if not good:
        return None
    return (torch.stack([b[0] for b in good]), torch.tensor([b[1] for b in good]),
            torch.tensor([b[2] for b in good]))


def _is_batchnorm(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm) or getattr(m, "original_name", "").startswith("BatchNorm")


class Finetuned(nn.Module):
    """The backbone (uint8 images in, normalisation inside) and a new linear head."""

    def __init__(self, backbone, n_classes: int, mode: str):
        super().__init__()
        self.trunk, self.mode = backbone.model, mode
        self.head = nn.Linear(backbone.dim, n_classes)
        self.trunk.requires_grad_(mode == "full")
        if mode == "bn-head":
            for m in self.trunk.modules():
                if _is_batchnorm(m):
                    m.requires_grad_(True)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.mode == "head":  # a frozen trunk keeps its BatchNorm statistics and no dropout
            self.trunk.eval()
        return self

    def forward(self, x):
        return self.head(self.trunk(x))


def _loader(data: SplitImages, split: str, preprocess, batch_size: int, workers: int, cuda: bool,
            sampler=None) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(_Images(data.root, data.paths[split], data.labels[split], preprocess),
                                       batch_size=batch_size, sampler=sampler, num_workers=workers,
                                       collate_fn=_collate, pin_memory=cuda)


def _autocast(device: torch.device, amp: bool):
    return torch.autocast("cuda", dtype=torch.float16, enabled=amp) if device.type == "cuda" \
        else torch.autocast("cpu", enabled=False)


def predict(model: nn.Module, loader, device, amp: bool, n: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, which rows were read) for every image of the loader's split."""
    model.eval()
    p = np.zeros((n, n_classes))
    seen = np.zeros(n, bool)
    with torch.inference_mode(), _autocast(device, amp):
        for batch in loader:
            if batch is None:
                continue
            x, _, idx = batch
            p[idx.numpy()] = torch.softmax(model(x.to(device, non_blocking=True)).double(), 1).cpu().numpy()
            seen[idx.numpy()] = True
    return p, seen


def _val_scores(p, seen, y, n_classes) -> tuple[float, float]:
    return (float(log_loss(y[seen], p[seen], labels=range(n_classes))),
            float(accuracy_score(y[seen], p[seen].argmax(1))))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def model_name(store_stem: str, mode: str) -> str:
    """`BACKBONE[-random-init|-w<sha8>]-finetune-MODE`: named after the backbone's feature store."""
    return f"{store_stem}-finetune-{mode}"


def finetune(data: SplitImages, backbone_name: str, mode: str, out: Path, *, epochs: int = 3,
             epoch_images: int = 0, batch_size: int = 32, lr: float | None = None, weight_decay: float = 0.01,
             patience: int = 2, device: str = "auto", workers: int = -1, amp: bool = True,
             weights: str | None = None, random_init: bool = False, seed: int = 0,
             log=lambda msg: None) -> dict:
    """Fine-tune on `data`'s train split, early-stop on val, score test once; returns the metrics."""
    if mode not in MODES:
        raise FeatbenchError(f"unknown --mode {mode!r}; choose {', '.join(MODES)}")
    if epochs < 1 or batch_size < 1:
        raise FeatbenchError("--epochs and --batch-size must be at least 1")
    for split in SPLITS:
        if not len(data.paths[split]):
            raise FeatbenchError(f"{data.source}: no labelled {split} images to fine-tune with")
    dev = pick_device(device)
    cuda = dev.type == "cuda"
    amp = amp and cuda
    if dev.type == "cpu":
        keep_freed_memory()  # as extraction does: a fair baseline (1.6x faster on CPU, same weights)
    workers = workers if workers >= 0 else default_workers(dev)
    lr = lr or DEFAULT_LR[mode]
    backbone = create_backbone(backbone_name, weights, random_init)
    n_classes = len(data.class_names)
    torch.manual_seed(seed)
    model = Finetuned(backbone, n_classes, mode).to(dev)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_train = len(data.paths["train"])
    per_epoch = min(epoch_images or n_train, n_train)
    gen = torch.Generator().manual_seed(seed)
    sampler = torch.utils.data.RandomSampler(range(n_train), num_samples=per_epoch, generator=gen)
    train = _loader(data, "train", backbone.preprocess, batch_size, workers, cuda, sampler)
    val = _loader(data, "val", backbone.preprocess, batch_size, workers, cuda)
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(per_epoch / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.25)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loss_fn = nn.CrossEntropyLoss()
    y_val = data.labels["val"]
    curve, best, waited, images_seen = [], None, 0, 0
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        total, count = 0.0, 0
        for batch in train:
            if batch is None:
                continue
            x, y, _ = batch
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            flip = torch.rand(len(x), device=dev) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            opt.zero_grad(set_to_none=True)
            with _autocast(dev, amp):
                loss = loss_fn(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            total += float(loss.detach()) * len(x)
            count += len(x)
        images_seen += count
        p, seen = predict(model, val, dev, amp, len(y_val), n_classes)
        loss_val, acc_val = _val_scores(p, seen, y_val, n_classes)
        curve.append({"epoch": epoch, "train_loss": round(total / max(count, 1), 6),
                      "val_log_loss": round(loss_val, 6), "val_accuracy": round(acc_val, 6),
                      "seconds": round(time.perf_counter() - started, 3)})
        log(f"{backbone.name} finetune-{mode} epoch {epoch}/{epochs}: train loss {curve[-1]['train_loss']:.4f}, "
            f"val log-loss {loss_val:.4f}, val acc {acc_val:.4f} ({curve[-1]['seconds']:.0f}s)")
        if best is None or loss_val < best[0] - 1e-6:
            best, waited = (loss_val, acc_val, epoch, copy.deepcopy(model.state_dict())), 0
        else:
            waited += 1
            if waited >= patience:
                break
    fit_seconds = time.perf_counter() - started
    model.load_state_dict(best[3])
    test = _loader(data, "test", backbone.preprocess, batch_size, workers, cuda)
    y_test = data.labels["test"]
    started = time.perf_counter()
    p, seen = predict(model, test, dev, amp, len(y_test), n_classes)
    predict_seconds = time.perf_counter() - started
    if not seen.any():
        raise FeatbenchError(f"{data.root}: none of the test images could be read")

    stem = store_path(out, data.dataset["name"], backbone, weights, "float32").stem  # as classify names it
    name = model_name(stem, mode)
    metrics = {
        "dataset": data.dataset["name"], "backbone": stem, "backbones": [backbone.name],
        "head": f"finetune-{mode}", "model": f"{name}.pt", "refit": False, "classes": data.class_names,
        "n_train": n_train, "n_val": int(len(y_val)), "n_test": int(seen.sum()),
        **evaluate(y_test[seen], p[seen], [q for q, s in zip(data.paths["test"], seen) if s], data.class_names),
        "val_log_loss": best[0], "val_accuracy": best[1],
        "params": {"mode": mode, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size,
                   "epochs": epochs, "epoch_images": per_epoch, "patience": patience, "seed": seed,
                   "best_epoch": best[2], "optimizer": "AdamW", "schedule": "one-cycle", "augment": "hflip"},
        "sweep": curve, "members": {}, "fit_seconds": round(fit_seconds, 3),
        "predict_seconds": round(predict_seconds, 4), "features": {},
        "split_fingerprint": data.fingerprint, "split_source": data.source, "dataset_root": str(data.root),
        "weights": backbone.weights,
        "compute": {"device": dev.type, "device_name": _device_name(dev), "amp": amp,
                    "epochs_run": len(curve), "images_seen": images_seen,
                    "trainable_params": sum(p.numel() for p in trainable),
                    "total_params": sum(p.numel() for p in model.parameters()),
                    "torch": torch.__version__},
        "featbench_version": featbench_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    folder = Path(out) / data.dataset["name"] / "models"
    model_path = folder / metrics["model"]
    atomic_write(model_path, lambda tmp: torch.save({"state_dict": model.state_dict(), "class_names": data.class_names,
                                                     "backbone": backbone.name, "mode": mode,
                                                     "weights": backbone.weights}, tmp))
    metrics["path"] = str(model_path)
    atomic_write(model_path.with_suffix(".metrics.json"), lambda tmp: tmp.write_text(json.dumps(metrics, indent=1) + "\n"))
    return metrics


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks finetune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", required=True, help="registered backbone or timm model name")
    p.add_argument("--mode", choices=list(MODES), default="full", help="; ".join(f"{k}: {v}" for k, v in MODES.items()))
    p.add_argument("--epochs", type=int, default=3, help="maximum epochs (default 3; early stopping may end sooner)")
    p.add_argument("--epoch-images", type=int, default=0,
                   help="train on a random N of the train images per epoch (default: all of them)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, help="peak one-cycle learning rate (default: " + ", ".join(f"{v:g} for {k}" for k, v in DEFAULT_LR.items()) + ")")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--patience", type=int, default=2, help="epochs without a better val log-loss before stopping")
    p.add_argument("--train-seed", type=int, default=0, help="head initialisation, order and flips")
    p.add_argument("--features", type=Path, metavar="STORE", help="take the split from this feature store")
    p.add_argument("--weights", metavar="FILE", help="backbone weights file (as in extract)")
    p.add_argument("--random-init", action="store_true", help="random backbone weights (tests only)")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    p.add_argument("--workers", type=int, default=-1, help="decoding processes (default: auto)")
    p.add_argument("--no-amp", action="store_true", help="full fp32 on GPU (default: fp16 autocast on CUDA)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    add_dataset_args(p)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    settings = resolve(args, need_data=args.features is None)
    data = same_split(settings, args.backbone, args.features)
    out = settings.out if args.features is None else args.features.parent.parent
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    log(f"split from {data.source}: {', '.join(f'{len(data.paths[s])} {s}' for s in SPLITS)}")
    m = finetune(data, args.backbone, args.mode, out, epochs=args.epochs, epoch_images=args.epoch_images,
                 batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, patience=args.patience,
                 device=args.device, workers=args.workers, amp=not args.no_amp, weights=args.weights,
                 random_init=args.random_init, seed=args.train_seed, log=log)
    print(f"{m['model'].removesuffix('.pt')}: test accuracy {m['accuracy']:.4f}, log-loss {m['log_loss']:.4f} "
          f"(best epoch {m['params']['best_epoch']}/{m['compute']['epochs_run']}, {m['fit_seconds']:.0f}s on "
          f"{m['compute']['device_name']}); {Path(m['path']).with_suffix('.metrics.json')}")
    return 0
