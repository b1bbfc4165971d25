"""How a fine-tune trains: named recipes and layer-wise learning rates.

`lp-ft`, the default of `--mode full`, is what transfer-learning practice does (fastai's
`fine_tune`, timm's layer decay, LP-FT):

1. the new head starts from a linear probe: logistic regression on the frozen trunk's features of
   the train split, C chosen on val (Kumar et al., "Fine-Tuning can Distort Pretrained Features and
   Underperform Out-of-Distribution", ICLR 2022);
2. then every layer trains with AdamW under a one-cycle schedule (Smith & Topin 2019), the learning
   rate rising layer by layer from `peak / layer_ratio` at the stem to `peak` at the head (fastai's
   discriminative rates, `slice(lr/100, lr)`; timm's `param_groups_layer_decay`), no weight decay on
   norm layers and biases, RandomResizedCrop(scale=(0.35, 1)) + horizontal flip, label smoothing 0.1,
   and BatchNorm layers kept in inference mode (their affine weights train, their statistics stay the
   pretrained ones: Keras' transfer-learning guide; measured, updating only the statistics on a new
   dataset moves the probe's features enough to cost it several points before any gradient step);
3. the weights scored after each epoch are an exponential moving average over about the last epoch's
   steps (timm's `ModelEmaV3`, as timm's fine-tuning recipes use `--model-ema`): the one-cycle peak
   makes single epochs' weights noisy on a small dataset;
4. the peak rate is swept (`lrs`), and the run, epoch and temperature (`classify.calibration`, fitted on
   val so that label smoothing does not cost log-loss) with the lowest validation log-loss win.

`seed` is the seed notebooks' recipe (`bn-head`, `head`, and the old `full`): a random head, one
learning rate for every layer, weight decay on everything, flips only, plain cross-entropy.
"""
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING

from features.errors import FeatbenchError

if TYPE_CHECKING:
    from torch import nn

MODES = {"full": "every layer trained",
         "bn-head": "BatchNorm layers and a new linear head trained (the seeds' ResNet recipe)",
         "head": "a new linear head trained on the frozen trunk"}
AUGMENTS = ("rrc", "flip")
HEAD_INITS = ("probe", "random")


@dataclass(frozen=True)
class Recipe:
    """Everything about how a fine-tune trains except its budget (epochs, images, seeds)."""
    name: str
    lrs: tuple  # peak learning rates of the head, each a run; the best on val log-loss is kept
    head_init: str = "probe"  # probe: LP-FT; random: a freshly initialised head
    layer_ratio: float = 100.0  # head lr / stem lr; 1: one rate for every layer
    weight_decay: float = 0.01
    decay_norm_bias: bool = False  # also decay norm layers' weights and every bias
    augment: str = "rrc"  # rrc: RandomResizedCrop + flip; flip: flip only
    crop_scale: float = 0.35  # smallest area fraction of RandomResizedCrop
    label_smoothing: float = 0.1
    freeze_bn_stats: bool = True  # BatchNorm layers normalise with their pretrained statistics while training
    ema: bool = True  # score and keep an exponential moving average of the weights (about an epoch's horizon)
    calibrate: bool = True  # fit a temperature on val logits (selection and test use it)
    pct_start: float = 0.3  # share of the one-cycle schedule spent warming up

    def as_dict(self) -> dict:
        return {**asdict(self), "lrs": list(self.lrs)}

    def describe(self) -> str:
        """The augmentation and loss in words, for budgets and reports."""
        aug = (f"RandomResizedCrop(scale {self.crop_scale:g}-1) + flip" if self.augment == "rrc" else "flip")
        parts = [aug, f"label smoothing {self.label_smoothing:g}" if self.label_smoothing else "plain cross-entropy"]
        if self.head_init == "probe":
            parts.append("head from a linear probe")
        if self.freeze_bn_stats:
            parts.append("BatchNorm statistics frozen")
        if self.ema:
            parts.append("EMA of weights")
        if self.layer_ratio != 1:
            parts.append(f"layer-wise lr (stem = head / {self.layer_ratio:g})")
        if self.calibrate:
            parts.append("temperature fitted on val")
        return ", ".join(parts)


LP_FT = Recipe("lp-ft", (1e-4, 3e-4, 1e-3))
SEED = Recipe("seed", (5e-4,), head_init="random", layer_ratio=1.0, decay_norm_bias=True, augment="flip",
              label_smoothing=0.0, freeze_bn_stats=False, ema=False, calibrate=False, pct_start=0.25)
RECIPES = {"lp-ft": LP_FT, "seed": SEED}
DEFAULT_RECIPE = {"full": "lp-ft", "bn-head": "seed", "head": "seed"}
SEED_LR = {"full": 5e-4, "bn-head": 2e-3, "head": 2e-3}  # the seed notebooks' rates
OVERRIDES = tuple(f.name for f in fields(Recipe) if f.name != "name")


def recipe_for(mode: str, name: str | None = None, **overrides) -> Recipe:
    """The named recipe (default: the mode's) with `overrides` (None values ignored) applied and checked."""
    name = name or DEFAULT_RECIPE[mode]
    if name not in RECIPES:
        raise FeatbenchError(f"unknown recipe {name!r}; choose {', '.join(RECIPES)}")
    base = RECIPES[name]
    if name == "seed":
        base = replace(base, lrs=(SEED_LR[mode],))
    unknown = set(overrides) - set(OVERRIDES)
    if unknown:
        raise FeatbenchError(f"unknown recipe settings {sorted(unknown)}; known: {', '.join(OVERRIDES)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    if "lrs" in given:
        given["lrs"] = tuple(float(v) for v in (given["lrs"] if isinstance(given["lrs"], (list, tuple))
                                                else [given["lrs"]]))
    r = replace(base, **given)
    if not r.lrs or any(not (0 < lr < 10) for lr in r.lrs):
        raise FeatbenchError(f"learning rates must be positive (got {list(r.lrs)})")
    if r.head_init not in HEAD_INITS or r.augment not in AUGMENTS:
        raise FeatbenchError(f"head init must be {'|'.join(HEAD_INITS)} and augment {'|'.join(AUGMENTS)}")
    if not (r.layer_ratio >= 1 and 0 < r.crop_scale <= 1 and 0 <= r.label_smoothing < 1 and 0 < r.pct_start < 1
            and r.weight_decay >= 0):
        raise FeatbenchError(f"recipe out of range: layer ratio ≥ 1, crop scale in (0, 1], label smoothing in "
                             f"[0, 1), pct start in (0, 1), weight decay ≥ 0 (got {r.as_dict()})")
    return r


def param_groups(model: "nn.Module", recipe: Recipe, head_prefix: str = "head") -> list[dict]:
    """AdamW parameter groups of `model`'s trainable parameters, each with its `lr_scale`.

    timm's `param_groups_layer_decay` groups the trunk's parameters in order of depth (12 tensors a
    group) and the `head_prefix` ones last; the scale grows geometrically from 1/layer_ratio at the
    stem to 1 at the head. Norm weights and biases (every 1-D tensor) get no weight decay unless
    `recipe.decay_norm_bias`."""
    from timm.optim import param_groups_layer_decay
    from timm.optim._param_groups import auto_group_layers
    model.pretrained_cfg = {"classifier": head_prefix}  # how timm's auto grouping finds the head
    try:
        layers = max(auto_group_layers(model).values()) + 1
        decay = recipe.layer_ratio ** (-1 / (layers - 1)) if layers > 1 else 1.0
        groups = param_groups_layer_decay(model, weight_decay=recipe.weight_decay, layer_decay=decay,
                                          weight_decay_exclude_1d=not recipe.decay_norm_bias)
    finally:
        del model.pretrained_cfg
    return groups
