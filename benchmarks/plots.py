"""The report's figures (matplotlib, Agg), each returned as PNG bytes."""
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator  # noqa: E402

from extract.files import MAX_IMAGE_BYTES, read_file  # noqa: E402
from extract.images import BadImage, decode  # noqa: E402
from features.records import ModelMetrics  # noqa: E402

PLAIN = FuncFormatter(lambda v, _: f"{v:g}")
COLOURS = [plt.cm.tab10(i) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]  # no grey: grey marks the head legend
MARKERS = {"logreg": "o", "mlp": "s", "svm": "D", "knn": "v", "avg": "P", "stack": "X", "concat": "*"}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def confusion(metrics: ModelMetrics, title: str) -> bytes:
    """The confusion matrix (counts, rows = true class) of one model."""
    cm = np.asarray(metrics.confusion)
    names = metrics.classes
    k = len(names)
    size = min(14, 2.5 + 0.32 * k)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), names, rotation=90, fontsize=max(5, 10 - k // 8))
    ax.set_yticks(range(k), names, fontsize=max(5, 10 - k // 8))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 40:
        for t in range(k):
            for q in range(k):
                if cm[t, q]:
                    ax.text(q, t, str(cm[t, q]), ha="center", va="center", fontsize=max(5, 11 - k // 5),
                            color="white" if cm[t, q] > cm.max() / 2 else "black")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def accuracy_vs_compute(rows: list[dict]) -> bytes:
    """Test accuracy against compute seconds: frozen heads (extraction + fit) and fine-tunes (training)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    backbones = sorted({r["backbone"] for r in rows})
    colours = {b: COLOURS[i % len(COLOURS)] for i, b in enumerate(backbones)}
    for r in rows:
        if r.get("compute_seconds") is None:
            continue
        frozen = r["kind"] == "frozen"
        ax.scatter(r["compute_seconds"], 100 * r["accuracy"], s=60 if frozen else 110,
                   marker=MARKERS.get(r["head"], "o") if frozen else "^", color=colours[r["backbone"]],
                   edgecolors="black" if not frozen else "none", linewidths=1.2, alpha=0.85)
        if not frozen:
            ax.annotate(f"{r['backbone']} {r['head'].removeprefix('finetune-')} ({r['device']})",
                        (r["compute_seconds"], 100 * r["accuracy"]), textcoords="offset points", xytext=(7, -3),
                        fontsize=8)
    ax.set_xscale("log")
    _log_ticks(ax.xaxis)
    ax.set_xlabel("compute, seconds (frozen: extraction + head fit; fine-tuned: training)")
    ax.set_ylabel("test accuracy, %")
    devices = sorted({r["device"] for r in rows if r.get("device")})
    ax.set_title(f"Accuracy vs compute (device: {', '.join(devices)})", fontsize=10)
    handles = [plt.Line2D([], [], ls="", marker="o", color=colours[b], label=b) for b in backbones]
    handles += [plt.Line2D([], [], ls="", marker=m, color="grey", label=h) for h, m in MARKERS.items()
                if any(r["head"] == h for r in rows)]
    if any(r["kind"] == "fine-tuned" for r in rows):
        handles.append(plt.Line2D([], [], ls="", marker="^", color="grey", markeredgecolor="black",
                                  label="fine-tuned"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(alpha=0.3, which="both")
    return _png(fig)


def label_efficiency(series: dict[tuple, list[dict]], all_x: float | None) -> bytes:
    """Mean test accuracy against labelled train images per class (log x), one series per (kind, store, head),
    its summaries in increasing n: frozen ones as lines in shaded 95% bands, fine-tuned ones as points with
    95% error bars, labelled with their subsets per n; `all` at the full train split's images per class (`all_x`;
    left out when None)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    where = lambda n: all_x if n == "all" else int(n)  # noqa: E731
    for i, ((kind, store, head), rows) in enumerate(series.items()):
        rows = [r for r in rows if r["n"] != "all" or all_x]
        x = np.array([where(r["n"]) for r in rows], dtype=float)
        y = np.array([100 * r["accuracy"] for r in rows])
        ci = np.array([100 * (r["accuracy_ci"] or 0) for r in rows])
        colour = COLOURS[i % len(COLOURS)]
        if kind == "frozen":
            ax.plot(x, y, marker=MARKERS.get(head, "o"), color=colour, label=f"{store} + {head}")
            ax.fill_between(x, y - ci, y + ci, color=colour, alpha=0.15, linewidth=0)
        else:
            subsets = "/".join(str(r["repeats"]) for r in rows)
            ax.errorbar(x, y, yerr=ci, fmt="^", color=colour, markeredgecolor="black", markersize=9, capsize=4,
                        label=f"{store} {head} (fine-tuned; subsets: {subsets})")
    ns = sorted({int(r["n"]) for rows in series.values() for r in rows if r["n"] != "all"})
    ax.set_xscale("log")
    ax.set_xticks(ns + ([all_x] if all_x else []),
                  [str(n) for n in ns] + ([f"all ({all_x:.0f})" if all_x >= 10 else f"all ({all_x:.1f})"]
                                         if all_x else []))
    ax.minorticks_off()
    ax.set_xlabel("labelled train images per class (log scale)")
    ax.set_ylabel("test accuracy, %")
    ax.set_title("Label-efficiency curve: mean test accuracy over repeats, 95% intervals", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(alpha=0.3)
    return _png(fig)


def _log_ticks(axis) -> None:
    """Plain numbers on a log axis, labelled at 1, 2 and 5 × each power of ten."""
    axis.set_major_formatter(PLAIN)
    axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    axis.set_minor_formatter(PLAIN)


def _sweep_axis(rows: list[dict]) -> str | None:
    """The parameter a sweep varies (the one numeric key with more than one value)."""
    keys = [k for k in rows[0] if not k.startswith("val_") and k not in ("epochs", "train_loss", "seconds")
            and all(isinstance(r.get(k), (int, float)) for r in rows)]
    varying = [k for k in keys if len({r[k] for r in rows}) > 1]
    return varying[0] if varying else None


def sweeps(metrics: list[ModelMetrics]) -> bytes | None:
    """Validation log-loss along each head's regularisation sweep (and each fine-tune's epochs)."""
    panels: dict[str, list] = {}
    for m in metrics:
        rows = [] if m.head.startswith("finetune-") else m.sweep
        if len(rows) < 2:
            continue
        for kernel in sorted({r.get("kernel") for r in rows}, key=str):
            part = [r for r in rows if r.get("kernel") == kernel]
            axis = _sweep_axis(part) if len(part) > 1 else None
            if axis:
                title = m.head + (f" ({kernel})" if kernel else "")
                panels.setdefault(f"{title}: {axis}", []).append((m.backbone, [r[axis] for r in part],
                                                                  [r["val_log_loss"] for r in part]))
    if not panels:
        return None
    cols = min(3, len(panels))
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.6 * cols, 3.4 * rows_n), squeeze=False)
    for ax, (title, lines) in zip(axes.flat, panels.items()):
        axis = title.rsplit(": ", 1)[1]
        for backbone, x, y in lines:
            ax.plot(x, y, marker=".", label=backbone)
        if axis in ("C", "lr") and min(min(x) for _, x, _ in lines) > 0:
            ax.set_xscale("log")
        ax.set_yscale("log")
        _log_ticks(ax.yaxis)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(axis, fontsize=8)
        ax.set_ylabel("val log-loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="both")
        if len(lines) > 1:
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def finetune_curves(metrics: list[ModelMetrics]) -> bytes | None:
    """Each fine-tune's validation log-loss and accuracy per epoch, a line per run (learning rate, seed)."""
    tuned = [m for m in metrics if m.head.startswith("finetune-") and m.sweep]
    if not tuned:
        return None
    fig, axes = plt.subplots(2, len(tuned), figsize=(4.6 * len(tuned), 6.4), squeeze=False)
    for col, m in enumerate(tuned):
        p = m.params
        runs: dict[tuple, list] = {}
        for row in m.sweep:
            runs.setdefault((row.get("lr", p.get("lr")), row.get("seed", 0)), []).append(row)
        for (lr, seed), rows in runs.items():
            label = f"lr {lr:g}" + (f", seed {seed}" if seed != p.get("train_seed", 0) else "")
            style = "-" if seed == p.get("train_seed", 0) else ":"
            for ax, key in zip(axes[:, col], ("val_log_loss", "val_accuracy")):
                ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], style, marker=".", label=label)
        best = next((r for r in m.sweep if r.get("lr", p.get("lr")) == p.get("lr")
                     and r.get("seed", 0) == p.get("train_seed", 0) and r["epoch"] == p.get("best_epoch")), None)
        for ax, key in zip(axes[:, col], ("val_log_loss", "val_accuracy")):
            if best:
                ax.plot(best["epoch"], best[key], "*", color="black", markersize=12)
            ax.set_xlabel("epoch", fontsize=8)
            ax.set_ylabel(key.replace("_", " ").replace("val", "val."), fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        recipe = p.get("recipe", {}).get("name", "")
        axes[0, col].set_title(f"{m.backbone} {m.head}{f' ({recipe})' if recipe else ''}", fontsize=9)
        axes[0, col].set_yscale("log")
        _log_ticks(axes[0, col].yaxis)
        axes[0, col].legend(fontsize=6)
    fig.tight_layout()
    return _png(fig)


def _thumbnail(path: Path, side: int = 224) -> np.ndarray | None:
    """The image at `path` as a thumbnail, read as extraction reads it (`read_file`); None where it cannot be."""
    try:
        img = decode(read_file(path, MAX_IMAGE_BYTES)[0], side)  # draft: a 200 MP photo decodes at thumbnail scale
    except BadImage:
        return None
    img.thumbnail((side, side))
    return np.asarray(img)


def image_grid(items: list[tuple[str, str]], root: Path, title: str, cols: int = 3) -> bytes | None:
    """Images (path relative to `root`, caption) as thumbnails in a grid of `cols` columns under `title`."""
    if not items:
        return None
    cols = min(cols, len(items))
    rows = -(-len(items) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.5 * rows), squeeze=False)
    for ax, (path, caption) in zip(axes.flat, items):
        pixels = _thumbnail(Path(root) / path)
        if pixels is None:
            ax.text(0.5, 0.5, "image not found", ha="center", va="center")
        else:
            ax.imshow(pixels)
        ax.set_title(caption, fontsize=8)
        ax.axis("off")
    for ax in list(axes.flat)[len(items):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def top_losses(metrics: ModelMetrics, root: Path, title: str, k: int = 9) -> bytes | None:
    """The highest-loss test images with predicted / true labels, loss and probability (fastai style)."""
    items = [t for t in metrics.top_losses if t["loss"] > 1e-6][:k]  # zero-loss images say nothing
    return image_grid([(t["path"], f"{t['predicted']} / {t['true']}\nloss {t['loss']:.2f}, p {t['probability']:.2f}\n"
                                   f"{Path(t['path']).name}") for t in items], root,
                      f"{title}: predicted / true, loss, probability of the prediction")
