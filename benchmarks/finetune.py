"""`python -m benchmarks finetune`: the fine-tuned baseline, trained and scored on the heads' split.

Modes: `full` trains every layer; `bn-head` trains only the BatchNorm layers and a new linear head
(the seeds' ResNet recipe); `head` trains only a new linear head on the frozen trunk. How they
train is a recipe (`benchmarks.recipes`): `full` defaults to `lp-ft` (a linear probe's head, then
layer-wise learning rates, one-cycle AdamW, RandomResizedCrop + flip, label smoothing, a swept peak
rate and a temperature fitted on val), `bn-head` and `head` to the seeds' `seed` recipe. Every
setting is a flag here and a key of a benchmark config's [[finetune]] table.

Each run keeps its best epoch by validation log-loss, epoch 0 (the starting point, before any
step) included: a fine-tune that only does harm on val reports its start, not its least bad
epoch. The run with the lowest one wins, and the test split is scored once, with that model.
`--seeds N` then repeats the winning configuration with N-1 further seeds and records each
seed's test scores and their mean ± std. Evaluation reads images exactly as extraction does.
The budget (runs, epochs, images seen, seconds, device) is recorded for the report's verdicts.

Writes `OUT/DATASET/models/BACKBONE-finetune-MODE[-RECIPE].metrics.json` (a `ModelMetrics`
like classify's, with head `finetune-MODE`, `compute`, `seeds` and `log_loss_raw`, the test log-loss
before the val temperature) and the weights as `.pt`.
"""
import argparse
import ast
import copy
import hashlib
import importlib.util
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from functools import cache
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, log_loss
from timm.utils import ModelEmaV3
from torch import nn
from torchvision.transforms import InterpolationMode, v2

from benchmarks.recipes import (
    DEFAULT_RECIPE,
    MODES,
    RECIPES,
    Recipe,
    param_groups,
    recipe_for,
)
from benchmarks.splits import SplitImages, same_split
from classify.calibration import fit_temperature, log_loss_at, softmax
from classify.heads import HEADS
from classify.metrics import correct_mask, evaluate, over_seeds
from classify.select import first_best, near_best, sweep
from extract.backbones import Backbone, create_backbone
from extract.config import add_dataset_args, dataset_flags, refuse_with_features, resolve
from extract.datasets import train_counts
from extract.device import autocast, default_workers, pick_device, uses_amp
from extract.files import read_file
from extract.images import BadImage, decode_array, load, min_decode_side
from extract.inference import keep_freed_memory
from extract.pipeline import store_path
from features.atomic import atomic_write, check_folder, check_outside, keep_earlier, same_outcome
from features.errors import FeatbenchError
from features.records import ModelMetrics
from features.schema import SPLITS, featbench_version

DEFAULT_EPOCHS = {"cuda": 10, "cpu": 5, "mps": 5}  # per run; a GPU affords more
MIN_EPOCH_IMAGES = 320  # an epoch of a small train split: ten batches of 32


def default_epochs(device: torch.device) -> int:
    return DEFAULT_EPOCHS.get(device.type, DEFAULT_EPOCHS["cpu"])


def epoch_size(n_train: int, epoch_images: int = 0) -> int:
    """Images an epoch trains on: `epoch_images` if given, else the train split but at least MIN_EPOCH_IMAGES (a
    small split's images repeat, each augmented afresh), so that the one-cycle schedule has steps to warm up in."""
    return epoch_images or max(n_train, MIN_EPOCH_IMAGES)


class _Images(torch.utils.data.Dataset):
    """(uint8 CHW image, label, index) of one split; None for a file that cannot be read (`read_file`: regular
    files only, up to the store's byte cap) or decoded.

    Without `recipe` an image is read exactly as extraction reads it (resize, centre crop); with it,
    it is augmented: RandomResizedCrop of the upright decoded image (`rrc`) or the extraction crop
    (`flip`), then a random horizontal flip."""

    def __init__(self, data: SplitImages, split: str, pre, recipe: Recipe | None = None):
        self.root, self.paths, self.labels, self.pre = data.root, data.paths[split], data.labels[split], pre
        self.max_bytes = data.max_bytes
        self.augment = recipe.augment if recipe else None
        if self.augment == "rrc":
            self.crop = v2.RandomResizedCrop(pre.size, scale=(recipe.crop_scale, 1.0),
                                             interpolation=InterpolationMode(pre.interpolation), antialias=True)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            data, _ = read_file(self.root / self.paths[i], self.max_bytes)
            if self.augment == "rrc":
                x = self.crop(torch.from_numpy(decode_array(data, min_decode_side(self.pre))).permute(2, 0, 1))
            else:
                x = load(data, self.pre)
        except (BadImage, MemoryError):
            return None, int(self.labels[i]), i
        if self.augment and torch.rand(()) < 0.5:
            x = x.flip(2)
        return x.contiguous(), int(self.labels[i]), i


def _collate(batch):
    good = [b for b in batch if b[0] is not None]
    if not good:
        return None
    return (torch.stack([b[0] for b in good]), torch.tensor([b[1] for b in good]),
            torch.tensor([b[2] for b in good]))


def _is_batchnorm(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm) or getattr(m, "original_name", "").startswith("BatchNorm")


class Finetuned(nn.Module):
    """The backbone (uint8 images in, normalisation inside) and a new linear head. With
    `freeze_bn_stats`, BatchNorm layers stay in inference mode while training (their weights still learn)."""

    def __init__(self, backbone: Backbone, n_classes: int, mode: str, freeze_bn_stats: bool = False):
        super().__init__()
        self.trunk, self.mode, self.freeze_bn_stats = backbone.model, mode, freeze_bn_stats
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
        elif self.freeze_bn_stats:
            for m in self.trunk.modules():
                if _is_batchnorm(m):
                    m.eval()
        return self

    def forward(self, x):
        return self.head(self.trunk(x))


@dataclass
class Device:
    """Where and how a fine-tune computes."""
    device: torch.device
    amp: bool  # fp16 autocast (CUDA only)
    workers: int
    batch_size: int

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        return autocast(self.device, self.amp, "float16")  # the type GradScaler is for

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """A uint8 batch on the device, channels-last (faster convolutions on CPU and GPU)."""
        return x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)

    @classmethod
    def choose(cls, device: str, amp: bool, workers: int, batch_size: int) -> "Device":
        """`device` (auto: CUDA, MPS, CPU); decoding workers by default only on a GPU, where they do not take
        cores from the model's threads; malloc keeps freed memory on CPU, as extraction's does."""
        dev = pick_device(device)
        if dev.type == "cpu":
            keep_freed_memory()
        return cls(dev, uses_amp(dev, amp), workers if workers >= 0 else 0 if dev.type == "cpu" else
                   default_workers(dev), batch_size)

    def name(self) -> str:
        if self.cuda:
            return torch.cuda.get_device_name(self.device)
        return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def _loader(dataset, dev: Device, sampler=None, generator=None, drop_last=False):
    return torch.utils.data.DataLoader(dataset, batch_size=dev.batch_size, sampler=sampler, num_workers=dev.workers,
                                       collate_fn=_collate, pin_memory=dev.cuda, generator=generator,
                                       drop_last=drop_last)


def outputs(module: nn.Module, loader, dev: Device, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(float32 outputs of `module` for every row of the loader's split, which rows could be read)."""
    module.eval()
    out, seen = None, np.zeros(n, bool)
    with torch.inference_mode(), dev.autocast():
        for batch in loader:
            if batch is None:
                continue
            x, _, idx = batch
            y = module(dev.batch(x)).float().cpu().numpy()  # float32 on the device: MPS has no float64
            if out is None:
                out = np.zeros((n, y.shape[1]), np.float32)
            out[idx.numpy()], seen[idx.numpy()] = y, True
    if out is None:
        raise FeatbenchError(f"none of the {n} images of a split could be read")
    return out, seen


@dataclass
class Probe:
    """The linear probe a `head_init = probe` fine-tune starts from: classify's logreg on trunk features."""
    weight: np.ndarray  # (classes, dim), standardisation folded in
    bias: np.ndarray
    C: float
    configurations: int
    val_log_loss: float
    images: int


def linear_head(pipeline, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A fitted scaler (mean_, scale_) → LogisticRegression pipeline as the (weight, bias) of one Linear layer
    with a logit per class (binary: ±z/2, the same softmax); classes absent from train get no chance."""
    scale, lr = pipeline.named_steps["scale"], pipeline.named_steps["logreg"]
    coef = lr.coef_ / scale.scale_
    intercept = lr.intercept_ - coef @ scale.mean_
    if len(coef) == 1:
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = np.zeros((n_classes, coef.shape[1]))
    bias = np.full(n_classes, intercept.min() - 30.0)
    weight[lr.classes_], bias[lr.classes_] = coef, intercept
    return weight, bias


def linear_probe(model: Finetuned, data: SplitImages, pre, dev: Device, n_classes: int) -> Probe:
    """LP of LP-FT: the trunk's features of train and val (read as extraction reads them), classify's
    logreg head swept over C on val."""
    feats = {}
    for split in ("train", "val"):
        X, seen = outputs(model.trunk, _loader(_Images(data, split, pre), dev), dev, len(data.paths[split]))
        feats[split] = (X[seen].astype(np.float64), data.labels[split][seen])
    head = HEADS["logreg"]
    sel = sweep(head.make(), head.grid(len(feats["train"][1])), *feats["train"], *feats["val"], n_classes)
    weight, bias = linear_head(sel.model, n_classes)
    return Probe(weight, bias, sel.params["C"], len(sel.sweep), sel.val_log_loss,
                 len(feats["train"][1]) + len(feats["val"][1]))


@dataclass(frozen=True)
class Epoch:
    """One point of a run's curve: the weights scored on val after an epoch (epoch 0: before training)."""
    lr: float
    seed: int
    epoch: int
    train_loss: float | None  # None at epoch 0
    val_log_loss: float  # at `temperature`
    val_log_loss_raw: float  # at temperature 1
    val_accuracy: float
    temperature: float
    seconds: float


@dataclass
class Run:
    """One training run (one peak learning rate, one seed): its curve and its best epoch's weights."""
    lr: float
    seed: int
    curve: list[Epoch]  # from epoch 0 (before training)
    best: Epoch  # the epoch (0: the starting point) with the lowest validation log-loss
    state: dict  # that epoch's weights
    images_seen: int
    seconds: float


def train_run(model: Finetuned, start: dict, data: SplitImages, pre, recipe: Recipe, lr: float, seed: int,
              epochs: int, per_epoch: int, dev: Device, log) -> Run:
    """Train from `start` (pretrained trunk, initial head) for `epochs`, scoring val before and after each
    (the weights' moving average with `recipe.ema`); the best epoch by validation log-loss is kept, the
    start (epoch 0) included."""
    model.load_state_dict(start)
    torch.manual_seed(seed)
    if recipe.head_init == "random":
        model.head.reset_parameters()
    groups = param_groups(model, recipe)
    for g in groups:
        g["lr"] = lr * g.pop("lr_scale")
    opt = torch.optim.AdamW(groups, lr=lr)
    n_train = len(data.paths["train"])
    sampler = torch.utils.data.RandomSampler(range(n_train), num_samples=per_epoch,
                                             generator=torch.Generator().manual_seed(seed))
    drop = per_epoch > dev.batch_size  # a batch of one breaks BatchNorm in training mode
    train = _loader(_Images(data, "train", pre, recipe), dev, sampler, torch.Generator().manual_seed(seed + 1), drop)
    val = _loader(_Images(data, "val", pre), dev)
    steps = epochs * len(train)
    ema = ModelEmaV3(model, decay=1 - 1 / max(len(train), 2), use_warmup=True) if recipe.ema else None
    scored = ema.module if ema else model
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=steps,
                                                pct_start=warm_up_share(recipe.pct_start, steps))
    scaler = torch.amp.GradScaler("cuda", enabled=dev.amp)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    y_val = data.labels["val"]
    curve, kept, images_seen, step = [], [], 0, 0  # kept: (row, weights) of the epochs `first_best` may choose
    started = time.perf_counter()
    for epoch in range(epochs + 1):  # epoch 0 scores the starting point (the probe's head)
        total, count = 0.0, 0
        model.train()
        for batch in train if epoch else ():
            if batch is None or len(batch[0]) < 2:
                continue
            x, y, _ = batch
            opt.zero_grad(set_to_none=True)
            with dev.autocast():
                loss = loss_fn(model(dev.batch(x)), y.to(dev.device, non_blocking=True))
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if sched.last_epoch + 1 < steps:
                sched.step()
            step += 1
            if ema:
                ema.update(model, step=step)
            total += float(loss.detach()) * len(x)
            count += len(x)
        images_seen += count
        logits, seen = outputs(scored, val, dev, len(y_val))
        logits, yv = logits[seen].astype(np.float64), y_val[seen]
        temperature = fit_temperature(logits, yv) if recipe.calibrate else 1.0
        row = Epoch(lr, seed, epoch, round(total / count, 6) if count else None,
                    round(log_loss_at(logits, yv, temperature), 6), round(log_loss_at(logits, yv, 1.0), 6),
                    round(float(accuracy_score(yv, logits.argmax(1))), 6), round(temperature, 4),
                    round(time.perf_counter() - started, 3))
        curve.append(row)
        log(f"lr {lr:g} seed {seed} epoch {epoch}/{epochs}: train loss {row.train_loss or 0:.4f}, val log-loss "
            f"{row.val_log_loss:.4f} (T {temperature:.2f}; raw {row.val_log_loss_raw:.4f}), val acc "
            f"{row.val_accuracy:.4f} ({row.seconds:.0f}s)")
        near = near_best([_scores(r) for r, _ in kept] + [_scores(row)])
        if len(kept) in near:
            kept.append((row, copy.deepcopy(scored.state_dict())))
            kept = [kept[i] for i in near]
    best, state = kept[first_best([_scores(r) for r, _ in kept])]
    return Run(lr, seed, curve, best, state, images_seen, time.perf_counter() - started)


def _scores(row: Epoch) -> tuple[float, float]:
    """An epoch's (val log-loss, at T = 1), as `classify.select.first_best` compares frozen heads' points."""
    return row.val_log_loss, row.val_log_loss_raw


def model_name(store_stem: str, mode: str, recipe: str | None = None) -> str:
    """`BACKBONE[-random-init|-w<sha8>]-finetune-MODE[-RECIPE]`, named after the backbone's feature store;
    the recipe is named when it is not the mode's default."""
    return f"{store_stem}-finetune-{mode}" + (f"-{recipe}" if recipe and recipe != DEFAULT_RECIPE[mode] else "")


FEATBENCH = ("benchmarks", "classify", "extract", "features")  # the packages whose source a fine-tune's key covers


def _imported(path: Path) -> set[str]:
    """The featbench modules a source file imports, inside functions too, with their packages (`from P import m`
    counts P and P.m)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    parents = {n.rsplit(".", k)[0] for n in names for k in range(n.count(".") + 1)}  # whose __init__ runs first
    return {n for n in parents if n.split(".")[0] in FEATBENCH}


def _sources(module: str) -> dict[str, Path]:
    """`module`'s source file and those of every featbench module it imports, transitively, by module name."""
    found, todo = {}, [module]
    while todo:
        name = todo.pop()
        try:
            spec = importlib.util.find_spec(name) if name not in found else None
        except ModuleNotFoundError:  # `from P import f` where P is a module, not a package
            spec = None
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue  # an attribute imported from a module (`from P import f`), or seen already
        found[name] = Path(spec.origin)
        todo += sorted(_imported(found[name]) - found.keys())
    return found


@cache
def code_fingerprint() -> str:
    """12 hex digits of sha256 over the source of this module and of every featbench module it imports,
    transitively (the probe's heads, the selection and calibration, image decoding, the backbones…), and the
    torch, torchvision, timm, scikit-learn and numpy versions: a fine-tune cached by other code is trained again,
    not reused."""
    import sklearn
    import timm
    import torchvision

    digest = hashlib.sha256(f"{torch.__version__} {torchvision.__version__} {timm.__version__} "
                            f"{sklearn.__version__} {np.__version__}".encode())
    for name, path in sorted(_sources(__name__).items()):
        digest.update(f"{name}\n".encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def budget_params(mode: str, recipe: Recipe, epochs: int, epoch_images: int, batch_size: int, seeds: int,
                  train_seed: int, device: torch.device, amp: bool = True) -> dict:
    """The settings a fine-tune's metrics record (`params`), which decide whether it can be reused: the device
    type and autocast among them, since a fine-tune trained on the CPU or in fp32 is not the one asked for on a
    GPU in fp16."""
    return {"mode": mode, "recipe": recipe.as_dict(), "epochs": epochs, "epoch_images": epoch_images,
            "batch_size": batch_size, "seeds": seeds, "train_seed": train_seed, "device": device.type,
            "amp": uses_amp(device, amp), "code": code_fingerprint()}


def reusable(path: Path, data: SplitImages, weights_fp: str, params: dict) -> ModelMetrics | None:
    """Earlier metrics of this fine-tune when split, images (`SplitImages.files_fingerprint`), weights and every
    setting match."""
    if not path.is_file():
        return None
    m = ModelMetrics.read(path)
    same = (m.split_fingerprint == data.fingerprint and (m.weights or {}).get("fingerprint") == weights_fp
            and all(m.params.get(k) == v for k, v in {**params, "files": data.files_fingerprint()}.items()))
    return replace(m, path=str(path.with_name(m.model))) if same else None


def _test_logits(model: Finetuned, run: Run, test, dev: Device, data: SplitImages) -> tuple[np.ndarray, np.ndarray]:
    """(logits, readable rows) of the test split under `run`'s best weights (its temperature not applied)."""
    model.load_state_dict(run.state)
    return outputs(model, test, dev, len(data.paths["test"]))


def _check(data: SplitImages, mode: str, epochs: int | None, batch_size: int, seeds: int, epoch_images: int):
    """Refuse, in one line, a fine-tune that cannot run."""
    if mode not in MODES:
        raise FeatbenchError(f"unknown --mode {mode!r}; choose {', '.join(MODES)}")
    if (epochs is not None and epochs < 1) or batch_size < 2 or seeds < 1 or epoch_images < 0:
        raise FeatbenchError("--epochs and --seeds must be at least 1, --batch-size at least 2")
    for split in SPLITS:
        if not len(data.paths[split]):
            raise FeatbenchError(f"{data.source}: no labelled {split} images to fine-tune with")


def starting_model(backbone: Backbone, data: SplitImages, mode: str, recipe: Recipe, dev: Device, seed: int,
                   log) -> tuple[Finetuned, Probe | None]:
    """What every run starts from: the pretrained trunk and a new head, the linear probe's when
    `recipe.head_init` is `probe`."""
    torch.manual_seed(seed)
    n_classes = len(data.class_names)
    model = Finetuned(backbone, n_classes, mode, recipe.freeze_bn_stats).to(dev.device)
    model = model.to(memory_format=torch.channels_last)
    if recipe.head_init != "probe":
        return model, None
    started = time.perf_counter()
    probe = linear_probe(model, data, backbone.preprocess, dev, n_classes)
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(probe.weight))
        model.head.bias.copy_(torch.from_numpy(probe.bias))
    log(f"{backbone.name} linear probe: C={probe.C:.3g}, val log-loss {probe.val_log_loss:.4f} "
        f"({time.perf_counter() - started:.0f}s)")
    return model, probe


def _seed_scores(run: Run, logits: np.ndarray, seen: np.ndarray, data: SplitImages) -> dict:
    """One seed's row of `over_seeds`: its chosen epoch on val and its test scores at its temperature."""
    y, p = data.labels["test"][seen], softmax(logits, run.best.temperature)
    return {"seed": run.seed, "best_epoch": run.best.epoch, "val_log_loss": run.best.val_log_loss,
            "val_accuracy": run.best.val_accuracy, "accuracy": float(accuracy_score(y, p[seen].argmax(1))),
            "log_loss": float(log_loss(y, p[seen], labels=range(len(data.class_names))))}


def _compute(model: Finetuned, runs: list[Run], replicas: list[Run], probe: Probe | None, recipe: Recipe,
             epochs: int, dev: Device) -> dict:
    """The budget a fine-tune was given, as the report states it beside the frozen heads'. Configurations:
    every trained epoch of every run, and the runs' shared starting point (epoch 0): the probe's C values,
    among them the one it starts from, or the random head."""
    epochs_run = sum(len(r.curve) - 1 for r in runs)
    return {"device": dev.device.type, "device_name": dev.name(), "amp": dev.amp, "channels_last": True,
            "runs": len(runs), "epochs": epochs, "epochs_run": epochs_run,
            "images_seen": sum(r.images_seen for r in runs), "probe_images": probe.images if probe else 0,
            "configurations": epochs_run + (probe.configurations if probe else 1), "augment": recipe.describe(),
            "seeds_images_seen": sum(r.images_seen for r in replicas),
            "trainable_params": sum(q.numel() for q in model.parameters() if q.requires_grad),
            "total_params": sum(q.numel() for q in model.parameters()), "torch": torch.__version__}


def warm_up_share(pct_start: float, steps: int) -> float:
    """`pct_start` for OneCycleLR over `steps`, except where its warm-up would be exactly one step: OneCycleLR
    divides by the warm-up's length in steps minus one, so a half step stands for it (no warm-up)."""
    return pct_start / 2 if pct_start * steps == 1 else pct_start


def finetune(data: SplitImages, backbone_name: str, mode: str, out: Path, *, recipe: Recipe | None = None,
             epochs: int | None = None, epoch_images: int = 0, batch_size: int = 32, seeds: int = 1,
             train_seed: int = 0, device: str = "auto", workers: int = -1, amp: bool = True,
             weights: str | None = None, random_init: bool = False, path: Path | None = None,
             save_weights: bool = True, log=lambda msg: None) -> ModelMetrics:
    """Fine-tune on `data`'s train split, choose on val, score test once; returns the metrics, written to
    `path` (default OUT/DATASET/models/NAME.metrics.json), with the weights beside it as NAME.pt."""
    _check(data, mode, epochs, batch_size, seeds, epoch_images)
    recipe = recipe or recipe_for(mode)
    dev = Device.choose(device, amp, workers, batch_size)
    epochs = epochs or default_epochs(dev.device)
    n_train = len(data.paths["train"])
    per_epoch = epoch_size(n_train, epoch_images)
    files = data.files_fingerprint()  # the images as they are before training reads them
    backbone = create_backbone(backbone_name, weights, random_init)
    started = time.perf_counter()
    model, probe = starting_model(backbone, data, mode, recipe, dev, train_seed, log)
    start = copy.deepcopy(model.state_dict())

    def train(lr: float, seed: int) -> Run:
        return train_run(model, start, data, backbone.preprocess, recipe, lr, seed, epochs, per_epoch, dev, log)
    runs = [train(lr, train_seed) for lr in recipe.lrs]
    chosen = runs[first_best([_scores(r.best) for r in runs])]
    fit_seconds = time.perf_counter() - started

    test = _loader(_Images(data, "test", backbone.preprocess), dev)
    t0 = time.perf_counter()
    logits, seen = _test_logits(model, chosen, test, dev, data)
    p = softmax(logits, chosen.best.temperature)
    predict_seconds = time.perf_counter() - t0
    if not seen.any():
        raise FeatbenchError(f"{data.root}: none of the test images could be read")
    final = copy.deepcopy(model.state_dict())
    y_test = data.labels["test"][seen]
    scores = evaluate(y_test, p[seen], [q for q, s in zip(data.paths["test"], seen) if s], data.class_names)
    t0 = time.perf_counter()
    replicas = [train(chosen.lr, seed) for seed in range(train_seed + 1, train_seed + seeds)]  # other seeds
    seed_rows = [_seed_scores(chosen, logits, seen, data)] + [
        _seed_scores(r, *_test_logits(model, r, test, dev, data), data) for r in replicas]
    seeds_seconds = time.perf_counter() - t0

    stem = store_path(out, data.dataset["name"], backbone, weights, "float32").stem  # as classify names it
    model_path = (Path(str(path).removesuffix(".metrics.json") + ".pt") if path else
                  Path(out) / data.dataset["name"] / "models" / f"{model_name(stem, mode, recipe.name)}.pt")
    metrics = ModelMetrics(
        dataset=data.dataset["name"], backbone=stem, backbones=[backbone.name],
        head=f"finetune-{mode}", model=model_path.name, refit=False, classes=data.class_names,
        n_train=n_train, n_val=len(data.paths["val"]), n_test=int(seen.sum()), **scores,
        log_loss_raw=float(log_loss(y_test, softmax(logits[seen]), labels=range(len(data.class_names)))),
        val_log_loss=chosen.best.val_log_loss, val_accuracy=chosen.best.val_accuracy,
        val_log_loss_raw=chosen.best.val_log_loss_raw if recipe.calibrate else None,
        params={**budget_params(mode, recipe, epochs, per_epoch, batch_size, seeds, train_seed, dev.device, dev.amp),
                "files": files, "lr": chosen.lr, "best_epoch": chosen.best.epoch,
                "temperature": chosen.best.temperature,
                **({"probe_C": probe.C} if probe else {})},
        sweep=[asdict(row) for r in runs + replicas for row in r.curve], members={},
        fit_seconds=round(fit_seconds, 3), predict_seconds=round(predict_seconds, 4),
        seeds_seconds=round(seeds_seconds, 3), features={},
        split_fingerprint=data.fingerprint, split_source=data.source, dataset_root=str(data.root),
        weights=backbone.weights, compute=_compute(model, runs, replicas, probe, recipe, epochs, dev),
        seeds=over_seeds(seed_rows) if seeds > 1 else None, path=str(model_path),
        test_correct=correct_mask(seen & (p.argmax(1) == data.labels["test"]), data.paths["test"]),
        featbench_version=featbench_version(), created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    record = model_path.with_suffix(".metrics.json")
    keep_earlier(record, same_outcome(record, metrics.to_json()), [model_path])
    if save_weights:
        def save(tmp):
            with open(tmp, "wb") as fh:  # a file object: a full disk is then an OSError, not torch's RuntimeError
                torch.save({"state_dict": final, "class_names": data.class_names, "backbone": backbone.name,
                            "mode": mode, "temperature": chosen.best.temperature, "weights": backbone.weights}, fh)
        atomic_write(model_path, save)
    atomic_write(record, lambda tmp: tmp.write_text(metrics.dumps()))
    return metrics


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("recipe (default: the mode's recipe; each flag overrides one setting)")
    g.add_argument("--recipe", choices=list(RECIPES),
                   help=f"lp-ft or seed (default: {', '.join(f'{m}: {r}' for m, r in DEFAULT_RECIPE.items())})")
    g.add_argument("--lr", type=float, nargs="+", metavar="LR",
                   help="peak learning rate(s) of the head, each a run, chosen on val log-loss (default lp-ft: "
                        + " ".join(f"{x:g}" for x in RECIPES["lp-ft"].lrs) + "; seed: 5e-4 full, 2e-3 else)")
    g.add_argument("--head-init", choices=["probe", "random"], help="probe: LP-FT; random: a fresh head")
    g.add_argument("--layer-ratio", type=float, help="head lr / stem lr (lp-ft: 100; 1 = one rate)")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.01)")
    g.add_argument("--decay-norm-bias", action=argparse.BooleanOptionalAction, default=None,
                   help="also decay norm weights and biases (lp-ft: no; seed: yes)")
    g.add_argument("--augment", choices=["rrc", "flip"], help="rrc: RandomResizedCrop + flip; flip: flip only")
    g.add_argument("--crop-scale", type=float, help="smallest RandomResizedCrop area fraction (default 0.35)")
    g.add_argument("--label-smoothing", type=float, help="lp-ft: 0.1; seed: 0")
    g.add_argument("--freeze-bn-stats", action=argparse.BooleanOptionalAction, default=None,
                   help="BatchNorm layers keep their pretrained statistics while training (lp-ft: yes; seed: no)")
    g.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="score and keep a moving average of the weights (lp-ft: yes; seed: no)")
    g.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=None,
                   help="temperature fitted on val (lp-ft: yes; seed: no)")
    g.add_argument("--pct-start", type=float, help="warm-up share of the one-cycle schedule (lp-ft: 0.3)")


def recipe_from_args(args, mode: str) -> Recipe:
    return recipe_for(mode, args.recipe, lrs=args.lr, head_init=args.head_init, layer_ratio=args.layer_ratio,
                      weight_decay=args.weight_decay, decay_norm_bias=args.decay_norm_bias, augment=args.augment,
                      crop_scale=args.crop_scale, label_smoothing=args.label_smoothing,
                      freeze_bn_stats=args.freeze_bn_stats, ema=args.ema, calibrate=args.calibrate,
                      pct_start=args.pct_start)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.add_argument("--backbone", required=True, help="registered backbone or timm model name")
    p.add_argument("--mode", choices=list(MODES), default="full", help="; ".join(f"{k}: {v}" for k, v in MODES.items()))
    p.add_argument("--epochs", type=int,
                   help="epochs of each run (default: " + ", ".join(f"{v} on {k}" for k, v in DEFAULT_EPOCHS.items())
                        + ")")
    p.add_argument("--epoch-images", type=int, default=0,
                   help="train on a random N of the train images per epoch (default: all of them, but at least "
                        f"{MIN_EPOCH_IMAGES}; more than there are repeats them, each augmented afresh)")
    p.add_argument("--batch-size", type=int, default=32, help="(default 32)")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="N seeds in all (default 1): the chosen peak rate is trained again with N-1 more seeds (not "
                        "swept again; each seed's epoch and temperature chosen on val), and the test scores' "
                        "mean ± std over the N are recorded")
    p.add_argument("--train-seed", type=int, default=0,
                   help="first training seed: head, order, augmentation (default 0)")
    add_recipe_args(p)
    p.add_argument("--features", type=Path, metavar="STORE",
                   help="take the split from this feature store (models go beside it unless --out is given)")
    p.add_argument("--weights", metavar="FILE", help="backbone weights file (as in extract)")
    p.add_argument("--random-init", action="store_true", help="random backbone weights (tests only)")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    p.add_argument("--workers", type=int, default=-1,
                   help="decoding processes (default: none on CPU, where a decoder would take a core from the "
                        "model's threads; as extraction's on a GPU)")
    p.add_argument("--no-amp", action="store_true", help="full fp32 on GPU (default: fp16 autocast on CUDA)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    add_dataset_args(p)


def main(args: argparse.Namespace) -> int:
    if args.features:
        refuse_with_features(dataset_flags(args))
    settings = resolve(**dataset_flags(args), need_data=args.features is None)
    data = same_split(settings, args.backbone, args.features)
    out = settings.out if args.out or args.features is None else args.features.parent.parent
    # where finetune() writes: outside every folder the dataset record names, the one its images are read from included
    check_folder(check_outside(Path(out) / data.dataset["name"] / "models", data.dataset, data.store))
    train_counts(f"{data.root} (split from {data.source})", data.class_names, data.labels["train"])
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    log(f"split from {data.source}: {', '.join(f'{len(data.paths[s])} {s}' for s in SPLITS)}")
    m = finetune(data, args.backbone, args.mode, out, recipe=recipe_from_args(args, args.mode), epochs=args.epochs,
                 epoch_images=args.epoch_images, batch_size=args.batch_size, seeds=args.seeds,
                 train_seed=args.train_seed, device=args.device, workers=args.workers, amp=not args.no_amp,
                 weights=args.weights, random_init=args.random_init, log=log)
    c, prm = m.compute, m.params
    spread = (f"; over {m.seeds['n']} seeds {100 * m.seeds['accuracy_mean']:.2f} ± "
              f"{100 * m.seeds['accuracy_std']:.2f}%, log-loss {m.seeds['log_loss_mean']:.4f} ± "
              f"{m.seeds['log_loss_std']:.4f}") if m.seeds else ""
    print(f"{m.model.removesuffix('.pt')}: test accuracy {m.accuracy:.4f}, log-loss {m.log_loss:.4f} "
          f"(lr {prm['lr']:g}, epoch {prm['best_epoch']}/{prm['epochs']}"
          f"{', the starting point' if prm['best_epoch'] == 0 else ''}; val {m.val_accuracy:.4f}, "
          f"{m.val_log_loss:.4f}; {c['runs']} runs, {c['images_seen']} images seen, {m.fit_seconds:.0f}s on "
          f"{c['device_name']}){spread}; {Path(m.path).with_suffix('.metrics.json')}")
    return 0
