"""The fine-tuned baseline's recipe: parameter groups, layer-wise rates, the probe head, temperature,
selection on val, seeds, and a tiny run that learns."""
import copy
import json
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import log_loss

import benchmarks.finetune as ft
from benchmarks.recipes import LP_FT, RECIPES, SEED, param_groups, recipe_for
from benchmarks.splits import SplitImages, same_split
from classify.calibration import fit_temperature, log_loss_at, softmax
from classify.heads import logreg
from extract.backbones import create_backbone
from extract.config import DatasetSettings
from features.errors import FeatbenchError

from conftest import promptly, write_image


def model(mode="full", classes=2):
    return ft.Finetuned(create_backbone("resnet10t", random_init=True), classes, mode)


def lr_by_param(m, recipe, peak=1.0) -> dict:
    groups = param_groups(m, recipe)
    names = {id(p): n for n, p in m.named_parameters()}
    return {names[id(p)]: (peak * g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}


def test_lp_ft_groups_exclude_norm_and_bias_from_decay():
    m = model()
    groups = lr_by_param(m, LP_FT)
    assert set(groups) == {n for n, _ in m.named_parameters()}  # every trainable tensor, once
    params = dict(m.named_parameters())
    for name, (_, decay) in groups.items():
        one_d = params[name].ndim <= 1  # BatchNorm weights and biases, every bias
        assert decay == (0.0 if one_d else LP_FT.weight_decay), name
    assert any(n.endswith("bn1.weight") for n in groups) and groups["head.bias"][1] == 0.0
    assert groups["head.weight"][1] == LP_FT.weight_decay
    seed = lr_by_param(m, SEED)  # the seeds' recipe decays everything, as it always did
    assert {d for _, d in seed.values()} == {SEED.weight_decay}


def test_layer_wise_rates_rise_from_stem_to_head():
    m = model()
    groups = lr_by_param(m, LP_FT, peak=1e-3)
    in_order = [groups[n][0] for n, _ in m.named_parameters()]  # parameters in depth order
    assert all(a <= b + 1e-15 for a, b in zip(in_order, in_order[1:]))
    assert in_order[0] == pytest.approx(1e-3 / LP_FT.layer_ratio) and groups["head.weight"][0] == pytest.approx(1e-3)
    assert len(set(np.round(in_order, 12))) >= 4  # steps by depth, not one rate for the trunk
    flat = lr_by_param(m, SEED, peak=1e-3)
    assert {lr for lr, _ in flat.values()} == {1e-3}


@pytest.mark.parametrize("mode", ["bn-head", "head"])
def test_groups_hold_only_what_the_mode_trains(mode):
    m = model(mode)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert set(lr_by_param(m, recipe_for(mode))) == trainable


@pytest.mark.parametrize("classes", [2, 4])
def test_probe_head_reproduces_the_logistic_regression(classes):
    rng = np.random.default_rng(classes)
    y = np.arange(120) % classes
    X = rng.normal(size=(classes, 16))[y] * 3 + rng.normal(size=(120, 16)) * [1 + i for i in range(16)] + 5
    pipe = logreg().set_params(logreg__C=0.3).fit(X, y)
    weight, bias = ft.linear_head(pipe, classes + 1)  # one more class than train has: it gets no chance
    p = softmax(X @ weight.T + bias)
    assert np.allclose(p[:, :classes], pipe.predict_proba(X), atol=1e-6)
    assert p[:, classes].max() < 1e-9


def test_temperature_recovers_the_one_that_made_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20000, 3)) * 4
    y = np.array([rng.choice(3, p=q) for q in softmax(logits, 2.0)])
    t = fit_temperature(logits, y)
    assert t == pytest.approx(2.0, rel=0.05)
    assert log_loss_at(logits, y, t) < log_loss_at(logits, y, 1.0)


def test_temperature_stays_finite_when_val_has_no_error():
    logits = np.array([[-2.0, 2.0], [3.0, -1.0], [0.5, -0.5]] * 10)
    y = logits.argmax(1)  # every val image right: plain log-loss would push T to 0
    t = fit_temperature(logits, y)
    p = softmax(logits, t)[np.arange(len(y)), y]
    assert 0.3 < t < 1 and p.mean() <= 1 - 1 / (len(y) + 2)  # no more confident than 30 right of 30 supports


def test_temperature_never_makes_val_log_loss_worse_than_the_models_own():
    """All 16 val images right and confident: the Laplace-smoothed fit alone would soften them (T > 1) and put
    a floor of about 1/(n + 2) under the log-loss; the temperature stays 1 instead. With errors in val it
    never scores worse than T = 1 either."""
    rng = np.random.default_rng(1)
    sure = np.array([[-4.0, 4.0], [3.5, -3.5]] * 8) + rng.normal(size=(16, 2)) * 0.3
    y = sure.argmax(1)
    assert fit_temperature(sure, y) == 1.0 and log_loss_at(sure, y, 1.0) < 1 / (len(y) + 2)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        logits = rng.normal(size=(30, 3)) * rng.uniform(0.5, 8)
        y = np.where(rng.random(30) < 0.8, logits.argmax(1), rng.integers(0, 3, 30))
        assert log_loss_at(logits, y, fit_temperature(logits, y)) <= log_loss_at(logits, y, 1.0) + 1e-9


def test_temperature_is_the_minimum_a_dense_search_finds():
    """The fitted temperature matches a brute-force search over 4,001 temperatures of the float64 losses: the plain
    log-loss's minimum, held at or above the Laplace-smoothed labels' minimum (capped at 1), at any logit scale."""
    from scipy.special import log_softmax
    grid = np.exp(np.linspace(-5, 5, 4001))
    for seed in range(12):
        rng = np.random.default_rng(seed)
        n, k = int(rng.integers(20, 300)), int(rng.integers(2, 40))
        logits = rng.normal(size=(n, k)) * rng.uniform(0.2, 12)
        y = np.where(rng.random(n) < rng.uniform(0.5, 1.0), logits.argmax(1), rng.integers(0, k, n))
        alpha = 1 / (n + 2)
        target = np.full((n, k), alpha / (k - 1))
        target[np.arange(n), y] = 1 - alpha
        plain = grid[np.argmin([log_loss_at(logits, y, t) for t in grid])]
        smoothed = grid[np.argmin([-(target * log_softmax(logits / t, axis=1)).sum(1).mean() for t in grid])]
        expected = max(plain, min(smoothed, 1.0))
        assert fit_temperature(logits, y) == pytest.approx(expected, rel=3e-3), seed  # the grid's step: 0.25%
    for bad in (np.nan, np.inf, -np.inf):  # a diverged epoch's logits: no temperature, no error
        logits[0, 0] = bad
        assert fit_temperature(logits, y) == 1.0


def test_recipe_overrides_and_refusals():
    assert recipe_for("full") == LP_FT and recipe_for("bn-head").lrs == (2e-3,) and recipe_for("full", "seed").lrs == (5e-4,)
    r = recipe_for("full", lrs=1e-3, label_smoothing=0.0, augment="flip")
    assert (r.lrs, r.label_smoothing, r.augment, r.name) == ((1e-3,), 0.0, "flip", "lp-ft")
    assert recipe_for("full", lrs=[1e-4, 1e-3]).lrs == (1e-4, 1e-3)
    for bad in ({"lrs": -1.0}, {"augment": "mixup"}, {"layer_ratio": 0.5}, {"label_smoothing": 1.0}, {"colour": 1}):
        with pytest.raises(FeatbenchError):
            recipe_for("full", **bad)
    with pytest.raises(FeatbenchError, match="unknown recipe"):
        recipe_for("full", "fancy")
    assert set(RECIPES) == {"lp-ft", "seed"}


# ---- runs on images -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tinted(tmp_path_factory):
    """Dogs vs. Cats of 40 synthetic images a colour tint apart: something a tiny model can learn."""
    root = tmp_path_factory.mktemp("tinted") / "dvc"
    for i in range(20):
        for kind, tint in (("cat", (60, 0, 0)), ("dog", (0, 0, 60))):
            path = write_image(root / f"{kind}.{i}.jpg", i + (0 if kind == "cat" else 100), size=(40, 32))
            px = np.asarray(Image.open(path)).astype(int) // 2 + tint
            Image.fromarray(np.clip(px, 0, 255).astype(np.uint8)).save(path, quality=90)
    settings = DatasetSettings(root, "auto", "breed", "", (0.6, 0.2, 0.2), 0, root.parent / "runs")
    return same_split(settings, "resnet10t"), root.parent / "runs"


def small(data, out, **kw):
    kw = {"epochs": 2, "epoch_images": len(data.paths["train"]), "batch_size": 8, "workers": 0, "random_init": True,
          **kw}
    return ft.finetune(data, "resnet10t", kw.pop("mode", "full"), out, **kw)


def saved_val_log_loss(m, data) -> float:
    """The plain val log-loss of the probabilities a saved fine-tune is scored with: its weights, its temperature."""
    saved = torch.load(m.path, weights_only=True)
    net = model(saved["mode"], len(data.class_names))
    net.load_state_dict(saved["state_dict"])
    dev = ft.Device(torch.device("cpu"), False, 0, 8)
    images = ft._Images(data, "val", create_backbone("resnet10t", random_init=True).preprocess)
    logits, seen = ft.outputs(net, ft._loader(images, dev), dev, len(data.paths["val"]))
    return log_loss(data.labels["val"][seen], softmax(logits[seen], saved["temperature"]), labels=[0, 1])


def test_a_tiny_random_init_run_learns(tinted):
    data, out = tinted
    m = small(data, out, recipe=recipe_for("full", "seed", lrs=3e-3), epochs=3)
    curve = m.sweep
    assert [r["epoch"] for r in curve] == [0, 1, 2, 3] and curve[0]["train_loss"] is None
    best = min(curve[1:], key=lambda r: r["val_log_loss"])
    assert best["val_log_loss"] < curve[0]["val_log_loss"]  # training improved on the untrained model
    assert curve[-1]["train_loss"] < curve[1]["train_loss"]
    assert m.params["best_epoch"] == best["epoch"] and m.val_log_loss == best["val_log_loss"]
    c = m.compute
    assert (c["runs"], c["epochs"], c["epochs_run"], c["configurations"]) == (1, 3, 3, 4)  # + the random start
    assert c["images_seen"] == 3 * 3 * 8  # 24 train images, three full batches of 8 an epoch
    assert m.model == "resnet10t-random-init-finetune-full-seed.pt"
    assert m.val_log_loss == pytest.approx(saved_val_log_loss(m, data), abs=1e-5)  # uncalibrated: T = 1


def test_the_sweep_picks_the_run_with_the_lowest_val_log_loss(tinted, monkeypatch):
    """Three fake runs: the one with the lowest val log-loss has the worst val accuracy and train loss;
    it must still be chosen, and the test split scored with its weights and temperature."""
    data, out = tinted
    fake = {1e-4: (0.50, 1.00, 0.1), 1e-3: (0.20, 0.50, 0.9), 1e-2: (0.40, 0.75, 0.2)}  # loss, acc, train
    used = []

    def train_run(model, start, data, pre, recipe, lr, seed, epochs, per_epoch, dev, log):
        loss, acc, train = fake[lr]
        state = copy.deepcopy(start)
        state["head.bias"] = torch.tensor([lr, -lr])  # marks the run
        row = ft.Epoch(lr, seed, 1, train, loss, loss, acc, 1.5, 0.1)
        return ft.Run(lr, seed, [replace(row, epoch=0, train_loss=None), row], row, state, 24, 0.1)

    def scores(model, run, test, dev, data):
        used.append(float(run.state["head.bias"][0]))
        n = len(data.paths["test"])
        return np.tile([0.6, 0.4], (n, 1)), np.ones(n, bool)

    monkeypatch.setattr(ft, "train_run", train_run)
    monkeypatch.setattr(ft, "_test_logits", scores)
    m = small(data, out, recipe=recipe_for("full", head_init="random", lrs=list(fake)), seeds=3)
    assert m.params["lr"] == 1e-3 and m.val_log_loss == 0.20 and m.params["temperature"] == 1.5
    assert used[0] == pytest.approx(1e-3)  # test scored with the chosen run's weights
    assert [r["seed"] for r in m.seeds["runs"]] == [0, 1, 2] and m.seeds["n"] == 3
    assert m.compute["configurations"] == 3 + 1 and m.compute["runs"] == 3  # the runs share one start


def test_the_test_log_loss_is_at_the_val_temperature_and_the_raw_one_is_kept(tinted, monkeypatch):
    """The run's val temperature (T = 1.5 here) scores the test split; the metrics keep the raw log-loss (T = 1)."""
    data, out = tinted
    logits = np.tile([2.0, 0.0], (len(data.paths["test"]), 1))  # every test image: a sure cat

    def train_run(model, start, data, pre, recipe, lr, seed, epochs, per_epoch, dev, log):
        row = ft.Epoch(lr, seed, 1, 0.1, 0.2, 0.3, 0.9, 1.5, 0.1)
        return ft.Run(lr, seed, [replace(row, epoch=0, train_loss=None), row], row, copy.deepcopy(start), 24, 0.1)
    monkeypatch.setattr(ft, "train_run", train_run)
    monkeypatch.setattr(ft, "_test_logits", lambda model, run, test, dev, data: (logits, np.ones(len(logits), bool)))
    m = small(data, out, recipe=recipe_for("full", head_init="random", lrs=[1e-3]), save_weights=False)
    y = data.labels["test"]
    assert m.params["temperature"] == 1.5
    assert m.log_loss == pytest.approx(log_loss(y, softmax(logits, 1.5), labels=[0, 1]))
    assert m.log_loss_raw == pytest.approx(log_loss(y, softmax(logits), labels=[0, 1])) != m.log_loss


def test_a_small_train_split_still_gets_a_schedule_of_steps(tinted, monkeypatch):
    """24 train images at batch 32 would be one optimizer step an epoch, a one-cycle schedule that starts at its
    peak: an epoch is MIN_EPOCH_IMAGES images unless --epoch-images says otherwise, and the budget records it."""
    data, out = tinted
    asked = []

    def train_run(model, start, data, pre, recipe, lr, seed, epochs, per_epoch, dev, log):
        asked.append(per_epoch)
        row = ft.Epoch(lr, seed, 0, None, 0.5, 0.5, 0.5, 1.0, 0.1)
        return ft.Run(lr, seed, [row], row, copy.deepcopy(start), 0, 0.1)
    monkeypatch.setattr(ft, "train_run", train_run)
    monkeypatch.setattr(ft, "_test_logits", lambda model, run, test, dev, data: (
        np.full((len(data.paths["test"]), 2), 0.5), np.ones(len(data.paths["test"]), bool)))
    recipe = recipe_for("full", "seed")
    m = ft.finetune(data, "resnet10t", "full", out, recipe=recipe, epochs=2, random_init=True, save_weights=False)
    assert asked == [ft.MIN_EPOCH_IMAGES] == [m.params["epoch_images"]] and ft.MIN_EPOCH_IMAGES > 24
    small(data, out, recipe=recipe, epoch_images=24, save_weights=False)
    assert asked[-1] == 24


def test_lp_ft_starts_from_the_probe_and_records_its_budget(tinted):
    data, out = tinted
    m = small(data, out, recipe=recipe_for("full", lrs=[1e-4, 1e-3]), epochs=1, seeds=2)
    c, p = m.compute, m.params
    probe_rows = [r for r in m.sweep if r["epoch"] == 0]
    assert len(probe_rows) == 3  # two learning rates, then one more seed: each starts from the same probe
    assert len({r["val_log_loss"] for r in probe_rows if r["seed"] == 0}) == 1
    assert probe_rows[0]["val_accuracy"] >= 0.75  # the probe alone already separates the tints
    assert c["probe_images"] == 24 + 8 and c["configurations"] == 2 + 13 and c["images_seen"] == 2 * 24
    assert p["recipe"]["name"] == "lp-ft" and p["lr"] in (1e-4, 1e-3) and "probe_C" in p
    assert m.seeds["n"] == 2 and c["seeds_images_seen"] == 24 and m.seeds_seconds > 0
    from benchmarks.report import collect, finetune_budget
    report = collect([m])
    assert (f"; 1 more seed (each trains the chosen peak lr {p['lr']:g} again, its epoch and temperature chosen on "
            "val; unlike a frozen head's seeds, which sweep its grid again, the lr is not swept again): "
            ) in finetune_budget(report, report.rows[0], report.rows)
    assert "RandomResizedCrop" in c["augment"] and "label smoothing 0.1" in c["augment"]
    saved = torch.load(out / "dvc" / "models" / m.model, weights_only=True)
    assert m.val_log_loss == pytest.approx(saved_val_log_loss(m, data), abs=1e-5)  # at its fitted temperature
    assert saved["temperature"] == p["temperature"] and json.loads(
        (out / "dvc" / "models" / "resnet10t-random-init-finetune-full.metrics.json").read_text())["params"] == p


def test_a_fine_tune_that_only_does_harm_reports_its_start(tinted):
    """A peak rate far too high wrecks the probe in one epoch: val chooses epoch 0, the probe itself, and the
    report says the chosen fine-tune is its starting point."""
    from benchmarks.report import collect, finetune_budget, verdict
    data, out = tinted
    m = small(data, out, recipe=recipe_for("full", lrs=[0.3]), epochs=1, save_weights=False)
    start, trained = m.sweep
    assert start["val_accuracy"] == 1.0 and trained["val_log_loss"] > start["val_log_loss"]
    assert m.params["best_epoch"] == 0 and (m.val_log_loss, m.val_accuracy) == (start["val_log_loss"], 1.0)
    assert m.compute["configurations"] == 1 + 13  # one trained epoch, the probe's C values (its start among them)
    c = collect([m])
    assert ("finetune-full (an untuned ablation: one peak lr, 0.3, not swept on val; its starting point: 0 epochs of "
            "training chosen on val) — test accuracy") in verdict(c)
    assert ("chosen: its starting point, epoch 0, before any training step (the pretrained trunk with the linear "
            "probe; no trained epoch scored lower on val)") in finetune_budget(c, c.rows[0], c.rows)


def test_augmented_images_vary_and_evaluation_reads_as_extraction(tinted):
    data, _ = tinted
    pre = create_backbone("resnet10t", random_init=True).preprocess
    plain = ft._Images(data, "train", pre)
    augmented = ft._Images(data, "train", pre, LP_FT)
    torch.manual_seed(0)
    a, b = augmented[0][0], augmented[0][0]
    assert a.shape == b.shape == (3, pre.size, pre.size) and a.dtype == torch.uint8 and not torch.equal(a, b)
    from extract.images import load
    assert torch.equal(plain[0][0], load((data.root / data.paths["train"][0]).read_bytes(), pre))


def test_the_loader_reads_only_capped_regular_files(tmp_path):
    """The fine-tune reads a listed file as extraction does (`read_file`): a FIFO, a link to /dev/zero or a
    file whose decoder fails oddly is an unreadable row, promptly, not a hang, an endless read or a crash."""
    from test_hostile import tiff_with_bytes_for_offsets
    write_image(tmp_path / "ok.jpg", 0)
    os.mkfifo(tmp_path / "fifo.jpg")
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    (tmp_path / "odd.tif").write_bytes(tiff_with_bytes_for_offsets())
    names = ["fifo.jpg", "zero.jpg", "odd.tif", "ok.jpg"]
    data = SplitImages(tmp_path, {}, ["a"], {"train": names}, {"train": np.zeros(4, int)}, "", "test")
    pre = create_backbone("resnet10t", random_init=True).preprocess
    for recipe in (None, LP_FT):
        images = ft._Images(data, "train", pre, recipe)
        got = [promptly(lambda: images[i]) for i in range(4)]
        assert [x is None for x, *_ in got] == [True, True, True, False]
        assert [(y, i) for _, y, i in got] == [(0, i) for i in range(4)]


def test_cli_flags_reach_the_recipe(tinted, tmp_path, capsys):
    data, out = tinted
    shutil.copytree(data.root, tmp_path / "dvc")
    from benchmarks.__main__ import main
    rc = main(["finetune", "--backbone", "resnet10t", "--random-init", "--data", str(tmp_path / "dvc"),
               "--splits", "0.6,0.2,0.2", "--out", str(tmp_path / "runs"), "--epochs", "1", "--epoch-images", "24",
               "--batch-size", "8",
               "--workers", "0", "--lr", "2e-3", "--no-calibrate", "--augment", "flip", "--label-smoothing", "0",
               "--head-init", "random", "--quiet"])
    assert rc == 0
    out_line = capsys.readouterr().out
    assert "resnet10t-random-init-finetune-full: test accuracy" in out_line and "1 runs" in out_line
    m = json.loads((tmp_path / "runs" / "dvc" / "models" / "resnet10t-random-init-finetune-full.metrics.json").read_text())
    r = m["params"]["recipe"]
    assert (r["lrs"], r["calibrate"], r["augment"], r["label_smoothing"], r["head_init"]) == ([2e-3], False, "flip", 0.0,
                                                                                              "random")
    assert m["params"]["temperature"] == 1.0


def test_scores_leave_the_device_as_float32_and_become_float64_on_the_cpu(monkeypatch):
    """MPS has no float64: `outputs` (predict's logits) never asks the device for it; softmax is float64 numpy."""
    m = model().eval()
    x = torch.randint(0, 255, (5, 3, 64, 64), dtype=torch.uint8)
    loader = [(x[:3], torch.zeros(3), torch.arange(3)), None, (x[3:], torch.zeros(2), torch.arange(3, 5))]
    dev = ft.Device(torch.device("cpu"), False, 0, 3)
    with torch.inference_mode():
        expected = m(x.contiguous(memory_format=torch.channels_last)).numpy()

    def no_float64(*args, **kw):
        raise AssertionError("float64 asked of the device")
    monkeypatch.setattr(torch.Tensor, "double", no_float64)
    logits, seen = ft.outputs(m, loader, dev, 5)
    assert logits.dtype == np.float32 and seen.all()
    probs = softmax(logits)
    assert probs.dtype == np.float64 and np.allclose(probs, softmax(expected), atol=1e-6)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 8, 9])
def test_one_cycle_runs_however_few_steps(steps):
    """OneCycleLR divides by zero when its warm-up is exactly one step (4 steps at pct_start 0.25)."""
    for pct in (0.25, 0.3, 0.5):
        opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps,
                                                    pct_start=ft.warm_up_share(pct, steps))
        for _ in range(steps):
            opt.step()
            sched.step()
