"""--precision bf16/int8: models stay close to fp32, precisions never share rows, refusals are one line."""
import json
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch

from classify.train import check_matching, load_store
from extract.backbones import create_backbone
from extract.datasets import load_dataset
from extract.inference import inference_model
from extract.pipeline import Options, _known_rows, _provenance, extract, store_path
from extract.quantize import calibration_set, check_precision, explicit_same_padding, quantized_model
from features import FeatureStore, Journal
from features.errors import FeatbenchError, StoreError

from conftest import write_image


@pytest.fixture(scope="module")
def tiny():
    """A timm EfficientNet (BatchNorm + activation fused in one module, as in the real ones), random weights."""
    return create_backbone("test_efficientnet", random_init=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calib")
    for i in range(24):
        write_image(folder / f"cat.{i}.jpg", i, (96, 80))
        write_image(folder / f"dog.{i}.jpg", 50 + i, (96, 80))
    return load_dataset(folder)


def cosines(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.cosine_similarity(a, b).numpy()


def test_quantized_tiny_model_embeds_within_tolerance_of_fp32(tiny, images):
    calibration = calibration_set(images.items, tiny.preprocess, 32)
    assert len(calibration.images) == 32 and calibration.record["images"] == 32
    held_out = calibration_set(images.items[::-1], tiny.preprocess, 48).images[32:]  # the other 16
    int8 = quantized_model(tiny.model, calibration.images)
    with torch.inference_mode():
        fp32, q = tiny.model(held_out), int8(held_out)
    assert q.shape == fp32.shape and q.dtype == torch.float32
    assert cosines(q, fp32).min() > 0.95 and not torch.equal(q, fp32)
    # fp32: the input's normalisation and the first three convolutions; BatchNorm folded, the rest int8
    assert int8.fp32_ops() == ["Cast", "Sub", "Div", "Conv x3"]
    assert b"BatchNormalization" not in int8.onnx


def test_quantized_model_is_shared_across_fork(tiny, images):
    """Prepared before the fork, as the CPU embedding workers share it: each process runs its own session."""
    import multiprocessing

    calibration = calibration_set(images.items, tiny.preprocess, 8)
    int8 = quantized_model(tiny.model, calibration.images)
    with torch.inference_mode():
        here = int8(calibration.images).numpy()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        there = pool.apply(_embed_numpy, (int8, calibration.images))
    np.testing.assert_allclose(there, here, rtol=1e-5, atol=1e-5)


def _embed_numpy(model, x):
    with torch.inference_mode():
        return model(x).numpy()


def test_explicit_same_padding_is_exact_and_exports_asymmetric_convolutions():
    """timm's "same" convolutions become a fixed zero padding + a plain convolution (eager: same embeddings);
    in the int8 model, ONNX Runtime's convolutions with asymmetric padding, without Pad nodes or the 4x4
    kernels of `static_same_padding`."""
    import onnx
    from timm.layers import Conv2dSame

    bb = create_backbone("efficientnet_lite0", random_init=True)
    x = torch.randint(0, 255, (4, 3, 224, 224), dtype=torch.uint8)
    padded = explicit_same_padding(bb.model, x[:1])
    with torch.inference_mode():
        assert torch.equal(padded(x), bb.model(x))
    assert not any(isinstance(m, Conv2dSame) for m in padded.modules())
    assert sum(isinstance(m, Conv2dSame) for m in bb.model.modules()) == 5  # the caller's model untouched
    int8 = quantized_model(bb.model, x)
    graph = onnx.load_from_string(int8.onnx).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert "Pad" not in {n.op_type for n in graph.node}
    stem = {a.name: list(a.ints) for a in convs[0].attribute}
    assert stem["kernel_shape"] == [3, 3] and stem["pads"] == [0, 0, 1, 1]


def test_int8_without_onnxruntime_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(FeatbenchError, match=r"pip install 'featbench\[onnx\]'"):
        check_precision("int8", torch.device("cpu"))


def test_int8_with_an_onnxruntime_below_the_floor_is_a_one_line_error(monkeypatch):
    import importlib.metadata
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.17.3" if name == "onnxruntime" else real(name))
    with pytest.raises(FeatbenchError, match=r"onnxruntime 1.28 or newer, not 1.17.3: pip install -U 'featbench\[onnx\]'"):
        check_precision("int8", torch.device("cpu"))
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.28.0" if name == "onnxruntime" else real(name))
    check_precision("int8", torch.device("cpu"))


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="no native bf16 on this CPU")
def test_bf16_graph_embeds_within_tolerance_of_fp32(tiny, images):
    x = calibration_set(images.items, tiny.preprocess, 16).images
    bf16 = inference_model(tiny.model, torch.device("cpu"), x[:2], bf16=True)
    with torch.inference_mode():
        fp32, y = tiny.model(x), bf16(x)
    assert y.dtype == torch.bfloat16 and cosines(y.float(), fp32).min() > 0.99
    assert not torch.equal(y.float(), fp32)  # it did compute in bf16
    assert any(p.dtype == torch.float32 for p in tiny.model.parameters())  # the backbone itself is untouched


def test_each_precision_has_its_own_store(tiny):
    names = {p: store_path("runs", "dvc", tiny, None, "float32", p).name for p in ("fp32", "bf16", "int8")}
    assert names == {"fp32": "test_efficientnet-random-init.h5", "bf16": "test_efficientnet-random-init-bf16.h5",
                     "int8": "test_efficientnet-random-init-int8.h5"}
    assert len({str(_provenance(tiny, None, precision=p)) for p in ("fp32", "bf16", "int8")}) == 3


def test_calibration_reads_files_as_the_pipeline_does(dvc_folder, tiny):
    """A FIFO (which a plain read would wait on forever), a link to /dev/zero and a file over the byte cap are
    passed over, not read."""
    import os
    os.mkfifo(dvc_folder / "cat.100.jpg")
    (dvc_folder / "cat.101.jpg").symlink_to("/dev/zero")
    (dvc_folder / "cat.102.jpg").write_bytes(b"\xff" * 2**21)
    calibration = calibration_set(load_dataset(dvc_folder).items, tiny.preprocess, 32, max_bytes=2**20)
    assert calibration.record["images"] == 24


def test_calibration_set_depends_on_the_images_not_their_order(tiny, images):
    first = calibration_set(images.items, tiny.preprocess, 8)
    assert calibration_set(images.items[::-1], tiny.preprocess, 8).record == first.record
    assert calibration_set(images.items, tiny.preprocess, 9).record != first.record


def test_reuse_key_separates_precisions_and_ensembles_refuse_mixing(dvc_folder, tmp_path, tiny):
    ds, opts = load_dataset(dvc_folder), dict(progress=False, batch_size=8, workers=0)
    fp32 = extract(ds, tiny, tmp_path / "runs", options=Options(**opts))
    int8 = extract(ds, tiny, tmp_path / "runs", options=Options(precision="int8", **opts))
    assert fp32.path.name == "test_efficientnet-random-init.h5" and int8.path.name.endswith("-random-init-int8.h5")
    assert int8.embedded == 24
    with FeatureStore(int8.path) as s, FeatureStore(fp32.path) as f:
        assert s.meta.precision == "int8" and s.meta.calibration["images"] == 24 and f.meta.precision == "fp32"
        assert f.meta.calibration is None and "precision" not in f.meta.to_json()  # fp32 stores read as before
        x, y = s.embeddings(np.arange(24)), f.embeddings(np.arange(24))
    assert 0.9 < cosines(torch.from_numpy(x), torch.from_numpy(y)).min() < 1 - 1e-6
    assert extract(ds, tiny, tmp_path / "runs", options=Options(precision="int8", **opts)).embedded == 0  # reused
    calibrated = _provenance(tiny, None, precision="int8", calibration=s.meta.calibration)
    known, store = _known_rows(fp32.path, Journal(fp32.path), calibrated, overwrite=False)
    assert store is None and not known  # fp32 rows are never reused as int8
    other = _provenance(tiny, None, precision="int8", calibration={**s.meta.calibration, "sha256": "0" * 64})
    known, store = _known_rows(int8.path, Journal(int8.path), other, overwrite=False)
    assert store is None and not known  # nor int8 rows of another calibration
    with pytest.raises(StoreError, match="different precisions"):
        check_matching([load_store(fp32.path), load_store(int8.path)])


def test_quantised_model_is_kept_beside_the_store_and_used_again(dvc_folder, tmp_path, tiny, monkeypatch):
    """The first int8 run keeps its quantised model as NAME-int8.onnx; a later run (here --overwrite, so every
    image is embedded again) uses it instead of quantising, and gives the same rows; a damaged or other one
    is quantised again and replaced."""
    import onnx

    from extract import quantize
    ds, opts = load_dataset(dvc_folder), dict(progress=False, batch_size=8, workers=0, precision="int8")
    first = extract(ds, tiny, tmp_path / "runs", options=Options(**opts))
    kept = first.path.with_suffix(".onnx")
    assert kept.name == "test_efficientnet-random-init-int8.onnx"
    key = {p.key: p.value for p in onnx.load(kept).metadata_props}[quantize.KEY]
    with FeatureStore(first.path) as fs:
        before = fs.embeddings(np.arange(24))

    def no_quantising(*args, **kwargs):
        raise AssertionError("quantised again")
    monkeypatch.setattr(quantize, "quantized_model", no_quantising)
    again = extract(ds, tiny, tmp_path / "runs", options=Options(overwrite=True, **opts))
    assert again.embedded == 24
    with FeatureStore(again.path) as fs:
        np.testing.assert_array_equal(fs.embeddings(np.arange(24)), before)
    shards = [extract(ds, tiny, tmp_path / "runs", options=Options(**opts), shard=(r, 2)).path for r in (0, 1)]
    assert [s.parent.name for s in shards] == ["shards"] * 2  # torchrun's ranks use the store's kept model
    assert not list(shards[0].parent.glob("*.onnx"))
    monkeypatch.undo()
    kept.write_bytes(b"not an onnx model")
    assert extract(ds, tiny, tmp_path / "runs", options=Options(overwrite=True, **opts)).embedded == 24
    assert {p.key: p.value for p in onnx.load(kept).metadata_props}[quantize.KEY] == key  # quantised again, kept


def test_unsupported_precision_is_a_one_line_error(dvc_folder):
    for precision in ("bf16", "int8"):
        with pytest.raises(FeatbenchError, match=f"--precision {precision} runs on CPU only, not cuda"):
            check_precision(precision, torch.device("cuda"))
    with pytest.raises(FeatbenchError, match="drop --compile and --no-optimize"):
        check_precision("bf16", torch.device("cpu"), optimize=False)
    with pytest.raises(FeatbenchError, match="unknown --precision 'fp16'"):
        check_precision("fp16", torch.device("cpu"))
    check_precision("int8", torch.device("cpu"))
    check_precision("fp32", torch.device("cuda"))
    r = subprocess.run([sys.executable, "-m", "extract", "--backbone", "test_resnet", "--random-init", "--data",
                        str(dvc_folder), "--precision", "int8", "--compile"], capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and "drop --compile" in r.stderr


def test_precision_benchmark_compares_stores_on_the_same_images_and_folds(dvc_folder, images, tmp_path, tiny,
                                                                          capsys, monkeypatch):
    """`python -m benchmarks precision`: int8 against fp32 on every labelled image, the same folds for both; a
    store against itself changes nothing."""
    from benchmarks import precision
    from benchmarks.__main__ import CLI

    monkeypatch.setattr(precision, "create_backbone", lambda name: tiny)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    args = CLI.parse(["precision", "--backbone", "tiny", "--data", str(dvc_folder), "--precision", "int8", "--folds",
                      "3", "--out", str(tmp_path / "runs"), "--json", str(tmp_path / "p.json")])
    assert precision.main(args) == 0
    out = capsys.readouterr().out
    assert "tiny on dvc (24 labelled images), int8 vs fp32:" in out and "exact McNemar p" in out
    [r] = json.loads((tmp_path / "p.json").read_text())
    assert r["images"] == 24 and r["folds"] == 3 and 0.9 < r["min_cosine"] <= r["median_cosine"] < 1
    assert r["changed_predictions"] >= r["right_to_wrong"] + r["wrong_to_right"]
    assert r["accuracy_points"] == pytest.approx((r["oof_accuracy"] - r["fp32_oof_accuracy"]) * 100)
    assert f"bars (accuracy within 0.3 points, log-loss within +10%, out of fold): " \
           f"{'PASS' if r['within_bars'] else 'FAIL'}" in out
    fp32 = tmp_path / "runs" / "dvc" / "test_efficientnet-random-init.h5"
    int8 = fp32.with_name("test_efficientnet-random-init-int8.h5")
    y, own, none, _ = precision.out_of_fold(int8, folds=3)
    y_fp32, own_again, on_fp32, _ = precision.out_of_fold(int8, folds=3, fp32=fp32)  # also fp32's rows
    assert none is None and np.array_equal(y, y_fp32) and np.array_equal(own, own_again)
    assert own.shape == on_fp32.shape and not np.allclose(own, on_fp32)  # int8's fold models, fp32's rows
    same = precision.compare(fp32, fp32, folds=3)
    assert (same["on_fp32_accuracy"], same["on_fp32_log_loss"]) == (same["oof_accuracy"], same["oof_log_loss"])
    assert same["changed_predictions"] == 0 and same["mcnemar_p"] == 1 and same["within_bars"]
    assert same["accuracy_points"] == 0 and same["log_loss_change"] == 0 and same["min_cosine"] > 0.99999
    other = extract(images, tiny, tmp_path, options=Options(progress=False, batch_size=8, workers=0)).path
    with pytest.raises(FeatbenchError, match="not the same labelled images"):
        precision.compare(other, fp32, folds=3)
    assert not list(scratch.iterdir())  # the logreg models of every comparison went to deleted folders


def _grow(folder, tiny, into: int = 1, outside: int = 1) -> tuple[list[str], list[str]]:
    """Write new images into `folder`: `into` that `calibration_set` puts among the calibration images of the
    grown listing, `outside` that it does not; returns their names."""
    from extract.datasets import Item

    items = load_dataset(folder).items
    base = calibration_set(items, tiny.preprocess).record["sha256"]
    names = {True: [], False: []}
    for i in range(1000, 1400):
        if len(names[True]) == into and len(names[False]) == outside:
            break
        path = write_image(folder / f"cat.{i}.jpg", i)
        moved = calibration_set([*items, Item(path, path.name)], tiny.preprocess).record["sha256"] != base
        if len(names[moved]) < (into if moved else outside):
            names[moved].append(path.name)
        else:
            path.unlink()
    assert (len(names[True]), len(names[False])) == (into, outside)
    return names[True], names[False]


@pytest.fixture
def forty(tmp_path):
    """40 synthetic images: more than the 32 calibration images, so only some new images hash among them."""
    root = tmp_path / "forty"
    for i in range(20):
        write_image(root / f"cat.{i}.jpg", i)
        write_image(root / f"dog.{i}.jpg", 100 + i)
    return root


INT8 = dict(progress=False, batch_size=8, workers=0, precision="int8")


def _rows(path) -> dict:
    with FeatureStore(path) as fs:
        return dict(zip(fs.paths, fs.embeddings(np.arange(len(fs.paths)))))


def test_new_images_hashing_into_the_calibration_set_keep_the_stores_rows_and_model(forty, tmp_path, tiny,
                                                                                      monkeypatch):
    """Once a store has an int8 model, the calibration set is the store's: new images (here one that hashes
    among the lowest 32, one that does not) are embedded with the kept model; the existing rows, the calibration
    record and the kept model stay as they are, and nothing is quantised again (torchrun's ranks alike)."""
    from extract import quantize
    from extract.images import load
    from extract.quantize import OrtModel

    first = extract(load_dataset(forty), tiny, tmp_path / "out", options=Options(**INT8))
    assert first.embedded == 40
    kept = first.path.with_suffix(".onnx")
    model = kept.read_bytes()
    before = _rows(first.path)
    with FeatureStore(first.path) as fs:
        record = fs.meta.calibration
    assert len(record["paths"]) == record["images"] == 32  # which images, in the store's provenance
    into, outside = _grow(forty, tiny)

    def no_quantising(*args, **kwargs):
        raise AssertionError("quantised again")
    monkeypatch.setattr(quantize, "quantized_model", no_quantising)
    again = extract(load_dataset(forty), tiny, tmp_path / "out", options=Options(**INT8))
    assert (again.embedded, again.reused, again.rows) == (2, 40, 42)
    assert kept.read_bytes() == model
    rows = _rows(again.path)
    with FeatureStore(again.path) as fs:
        assert fs.meta.calibration == record and fs.meta.images_embedded == 2
    assert set(rows) == set(before) | {*into, *outside}
    for p, row in before.items():
        assert rows[p].tobytes() == row.tobytes(), p
    new = sorted(into + outside)
    x = torch.stack([load((forty / p).read_bytes(), tiny.preprocess) for p in new])
    with torch.inference_mode():
        np.testing.assert_allclose(np.stack([rows[p] for p in new]), OrtModel(model)(x).numpy(), rtol=1e-5,
                                   atol=1e-5)
    for r in (0, 1):  # torchrun's ranks take the merged store's calibration and share its kept model
        shard = extract(load_dataset(forty), tiny, tmp_path / "out", options=Options(**INT8), shard=(r, 2)).path
        with FeatureStore(shard) as fs:
            assert fs.meta.calibration == record


@pytest.mark.parametrize("listed", [True, False], ids=["paths-listed", "before-paths-were-listed"])
def test_a_stores_gone_model_is_quantised_again_on_the_stores_calibration_images(forty, tmp_path, tiny, monkeypatch,
                                                                                 listed):
    """Without its kept model, a grown store's model is quantised again on the images its record names (or, for
    a record of before their paths were listed, those of its rows that give its hash), not on the grown
    listing's lowest-hashing ones: its rows stay."""
    from extract import pipeline, quantize

    if not listed:
        real = pipeline.calibration_set

        def unlisted(*args, **kwargs):
            c = real(*args, **kwargs)
            return c._replace(record={k: v for k, v in c.record.items() if k != "paths"})
        monkeypatch.setattr(pipeline, "calibration_set", unlisted)
    first = extract(load_dataset(forty), tiny, tmp_path / "out", options=Options(**INT8))
    before = _rows(first.path)
    with FeatureStore(first.path) as fs:
        record = fs.meta.calibration
    assert ("paths" in record) == listed
    calibration = calibration_set(load_dataset(forty).items, tiny.preprocess).images
    _grow(forty, tiny, into=2, outside=0)
    first.path.with_suffix(".onnx").unlink()
    real_quantised, used = quantize.quantized_model, []

    def quantised(model, images, *args):
        used.append(images)
        return real_quantised(model, images, *args)
    monkeypatch.setattr(quantize, "quantized_model", quantised)
    again = extract(load_dataset(forty), tiny, tmp_path / "out", options=Options(**INT8))
    assert (again.embedded, again.reused) == (2, 40) and len(used) == 1 and torch.equal(used[0], calibration)
    with FeatureStore(again.path) as fs:
        assert fs.meta.calibration == record
    rows = _rows(again.path)
    assert all(rows[p].tobytes() == row.tobytes() for p, row in before.items())
    assert first.path.with_suffix(".onnx").is_file()  # kept again


def test_a_store_whose_calibration_images_and_model_are_both_gone_is_calibrated_afresh(forty, tmp_path, tiny,
                                                                                       capsys):
    """A calibration image changed: while the kept model is there, the store keeps its calibration (that
    image is embedded again with it, alone); once the model is gone too, nothing can embed new images as the
    rows were, so the store is calibrated afresh on the listing and recomputed, with a note."""
    first = extract(load_dataset(forty), tiny, tmp_path / "out", options=Options(**INT8))
    with FeatureStore(first.path) as fs:
        record = fs.meta.calibration
    changed = record["paths"][0]
    write_image(forty / changed, 999)
    again = extract(load_dataset(forty), tiny, tmp_path / "out", options=Options(**INT8))
    assert (again.embedded, again.reused) == (1, 39)
    with FeatureStore(again.path) as fs:
        assert fs.meta.calibration == record
    first.path.with_suffix(".onnx").unlink()
    assert extract(load_dataset(forty), tiny, tmp_path / "out", options=Options(**INT8)).embedded == 0  # no need
    capsys.readouterr()
    _grow(forty, tiny, into=0, outside=1)
    fresh = extract(load_dataset(forty), tiny, tmp_path / "out", options=Options(**INT8))
    assert (fresh.embedded, fresh.reused) == (41, 0)
    assert "calibrating afresh" in capsys.readouterr().err
    with FeatureStore(fresh.path) as fs:
        assert fs.meta.calibration == calibration_set(load_dataset(forty).items, tiny.preprocess).record != record
    assert first.path.with_suffix(".onnx").is_file()


def test_an_interrupted_int8_run_resumes_with_its_calibration_when_images_are_added(forty, tmp_path, tiny,
                                                                                    monkeypatch):
    """The journal of an interrupted first run keeps its calibration too: images added before the re-run do not
    throw its finished batches away."""
    from extract import quantize

    calls = []
    real_append = Journal.append

    def crash_after_two_batches(self, *args):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real_append(self, *args)
    monkeypatch.setattr(Journal, "append", crash_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        extract(load_dataset(forty), tiny, tmp_path / "out", options=Options(**INT8))
    monkeypatch.undo()
    record = calibration_set(load_dataset(forty).items, tiny.preprocess).record
    _grow(forty, tiny, into=1, outside=0)

    def no_quantising(*args, **kwargs):
        raise AssertionError("quantised again")
    monkeypatch.setattr(quantize, "quantized_model", no_quantising)
    resumed = extract(load_dataset(forty), tiny, tmp_path / "out", options=Options(**INT8))
    assert (resumed.embedded, resumed.reused) == (41 - 16, 16)
    with FeatureStore(resumed.path) as fs:
        assert fs.meta.calibration == record
