"""The four command lines: one grammar (subcommands, a default where the README has one), one meaning per
flag, one-line errors, and every command line of README.md accepted as written."""
import os
import re
import shlex
import subprocess
import sys
from itertools import takewhile
from pathlib import Path

import h5py
import numpy as np
import pytest

from benchmarks.__main__ import CLI as BENCHMARKS
from classify.__main__ import CLI as CLASSIFY
from extract.__main__ import CLI as EXTRACT
from extract.config import resolve
from features import FeatbenchError, FeatureStore, write_store
from features.__main__ import CLI as FEATURES
from features.cli import run_cli
from features.records import Extraction

from conftest import write_image
from test_classify import make_store, synthetic, view

ROOT = Path(__file__).resolve().parents[1]
CLIS = {"extract": EXTRACT, "classify": CLASSIFY, "benchmarks": BENCHMARKS, "features": FEATURES}
COMMANDS = {"extract": ["embed", "list-backbones", "fetch-weights"], "classify": ["train", "predict", "audit", "submit"],
            "benchmarks": ["run", "finetune", "report", "curve", "speed", "precision", "audit", "scale",
                           "gpu-check"],
            "features": ["info", "verify", "merge", "export"]}
DEFAULTS = {"extract": "embed", "classify": "train"}


def help_text(cli, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("package", CLIS)
def test_help_lists_the_subcommands_the_same_way(package, capsys):
    text = help_text(CLIS[package], capsys)
    usage = "[COMMAND]" if package in DEFAULTS else "COMMAND"
    assert text.startswith(f"usage: python -m {package} {usage} [OPTIONS]\n")
    section = text.split("\ncommands:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    rows = [re.fullmatch(r"  (\S+)( +)(\S.*)", line) for line in section]
    assert all(rows) and [r[1] for r in rows] == COMMANDS[package]
    assert len({len(r[1]) + len(r[2]) for r in rows}) == 1  # one column for the descriptions
    marked = [r[1] for r in rows if r[3].endswith(" (the default)")]
    assert marked == ([DEFAULTS[package]] if package in DEFAULTS else [])
    assert f"`python -m {package} COMMAND --help` shows a command's options." in text


def test_benchmarks_imports_only_the_command_it_runs(monkeypatch):
    import benchmarks.__main__ as bench_main
    real, imported = bench_main.import_module, []
    monkeypatch.setattr(bench_main, "import_module", lambda name: imported.append(name) or real(name))
    BENCHMARKS.parser()  # what --help prints
    assert imported == []
    BENCHMARKS.parse(["report", "runs/x"])
    assert imported == ["benchmarks.report"]


def test_bare_options_run_the_default_command():
    args = EXTRACT.parse(["--backbone", "mobilenet_v2", "--data", "pics", "--out", "elsewhere"])
    assert (args.which, args.backbone, args.data, args.out) == ("embed", "mobilenet_v2", "pics", Path("elsewhere"))
    assert EXTRACT.parse([]).which == "embed"
    args = CLASSIFY.parse(["--head", "logreg"])
    assert (args.which, args.head) == ("train", ["logreg"])
    assert CLASSIFY.parse(["train", "--head", "svm"]).head == ["svm"]
    args = EXTRACT.parse(["--fetch-weights", "all"])
    assert (args.which, args.names) == ("fetch-weights", ["all"])
    assert EXTRACT.parse(["--fetch-weights=vgg16,alexnet"]).names == ["vgg16,alexnet"]
    assert EXTRACT.parse(["--list-backbones"]).which == "list-backbones"


def test_list_backbones_both_spellings(capsys):
    assert EXTRACT.main(["list-backbones"]) == 0
    listed = capsys.readouterr().out
    assert listed.startswith("backbone") and "mobilenet_v2" in listed
    assert EXTRACT.main(["--list-backbones"]) == 0 and capsys.readouterr().out == listed


def test_list_backbones_names_every_kind_and_the_recommended_backbones_as_readme_does(capsys):
    """The registry, how to name timm / hf-hub: / local-dir: / open_clip: models, and each recommended backbone with
    its metric, number and source: in the listing (under 40 lines) and in README.md."""
    from extract.recommended import RECOMMENDED, SOURCES
    assert EXTRACT.main(["list-backbones"]) == 0
    listed = capsys.readouterr().out
    readme = (ROOT / "README.md").read_text()
    assert len(listed.splitlines()) < 40
    assert all(kind in listed for kind in ("NAME.TAG", "hf-hub:ORG/NAME", "local-dir:FOLDER", "open_clip:ARCH/TAG"))
    for r in RECOMMENDED:
        row = next(line for line in listed.splitlines() if line.split()[:1] == [r.name])
        assert r.metric in row and f"{r.accuracy:.1f}%" in row and f"[{list(SOURCES).index(r.source) + 1}]" in row
        assert re.search(rf"`{re.escape(r.name)}` \\| {r.metric} \\| {r.accuracy:.1f}%", readme), r.name
    assert all(source in listed for source in SOURCES.values())


def test_a_reader_that_stops_early_ends_a_listing_quietly():
    """`python -m extract list-backbones | head -1`: no BrokenPipeError traceback, exit 141 as SIGPIPE would."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        r = subprocess.run([sys.executable, "-m", "extract", "list-backbones"], stdout=write, stderr=subprocess.PIPE,
                           cwd=ROOT)
    finally:
        os.close(write)
    assert r.returncode == 141 and r.stderr == b""


@pytest.mark.parametrize("package", CLIS)
def test_unknown_command_is_a_one_line_error(package):
    r = subprocess.run([sys.executable, "-m", package, "fly"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error: unknown command 'fly'") and r.stderr.count("\n") == 1
    assert ", ".join(COMMANDS[package]) in r.stderr


def test_no_command_where_there_is_no_default(capsys):
    for cli in (BENCHMARKS, FEATURES):
        assert run_cli(cli.main, []) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: no command") and err.count("\n") == 1


def test_features_verify_is_one_line_per_store_and_fails_on_damage(tmp_path, capsys):
    latent, y, splits = synthetic()
    good = make_store(tmp_path / "synth" / "alpha.h5", view(latent, 12, 1), y, splits, "alpha")
    bad = make_store(tmp_path / "synth" / "beta.h5", view(latent, 12, 2), y, splits, "beta")
    with h5py.File(bad, "r+") as f:
        f["embeddings"][3] = np.nan
    assert run_cli(FEATURES.main, ["verify", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: OK ({len(y)} rows)\n"
    assert run_cli(FEATURES.main, ["verify", str(good), str(bad)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].endswith("OK (%d rows)" % len(y)) and "damaged rows" in lines[1]


def test_classify_features_with_out_writes_the_models_under_out(tmp_path, capsys):
    latent, y, splits = synthetic()
    store = make_store(tmp_path / "stores" / "synth" / "alpha.h5", view(latent, 12, 1), y, splits, "alpha")
    out = tmp_path / "elsewhere"
    assert run_cli(CLASSIFY.main, ["--features", str(store), "--out", str(out), "--quiet"]) == 0
    stdout = capsys.readouterr().out
    models = out / "synth" / "models"  # OUT/DATASET/models, DATASET from the store
    assert sorted(p.name for p in models.iterdir()) == ["alpha-logreg.metrics.json", "alpha-logreg.skops"]
    assert f"models and metrics in {models}" in stdout
    assert not (store.parent / "models").exists()
    assert run_cli(CLASSIFY.main, ["--features", str(store), "--quiet"]) == 0  # without --out: beside the store
    assert (store.parent / "models" / "alpha-logreg.skops").is_file()


def test_classify_out_of_core_honours_out_too(tmp_path, capsys):
    latent, y, splits = synthetic()
    store = make_store(tmp_path / "synth" / "alpha.h5", view(latent, 12, 1), y, splits, "alpha")
    rc = run_cli(CLASSIFY.main, ["--features", str(store), "--out", str(tmp_path / "o"), "--max-memory", "1K",
                                 "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "o" / "synth" / "models" / "alpha-logreg.skops").is_file()
    assert not (tmp_path / "synth" / "models").exists()


def shard(path: Path, rank: int, world: int, names: list[str], dataset: str = "pics",
          record: dict | None = None) -> Path:
    n = len(names)
    meta = Extraction(backbone="b", weights_fingerprint="f", preprocess={}, amp=False,
                      split_fractions=[0.6, 0.2, 0.2], split_seed=0,
                      dataset=record or {"name": dataset, "root": "/pics"},
                      shard=[rank, world], images_embedded=n, extraction_seconds=1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_store(path, dim=4, chunks=[np.full((n, 4), rank, np.float32)], labels=np.arange(n) % 2, paths=names,
                splits=np.zeros(n, int), hashes=[""] * n, stamps=[""] * n, skipped=[], class_names=["a", "b"],
                meta=meta)
    return path


def test_merge_out_is_the_output_folder(tmp_path, capsys):
    files = [shard(tmp_path / "copied" / "b.shard-0-of-2.h5", 0, 2, ["a/0.jpg", "a/1.jpg"]),
             shard(tmp_path / "copied" / "b.shard-1-of-2.h5", 1, 2, ["b/0.jpg"])]
    rc = run_cli(FEATURES.main, ["merge", *map(str, files)])  # not in DATASET/shards/: no default place
    assert rc == 2 and "pass --out OUT for OUT/DATASET/NAME.h5" in capsys.readouterr().err
    assert run_cli(FEATURES.main, ["merge", *map(str, files), "--out", str(tmp_path / "runs")]) == 0
    merged = tmp_path / "runs" / "pics" / "b.h5"
    assert capsys.readouterr().out.startswith(f"{merged}\n")
    with FeatureStore(merged) as s:
        assert s.paths == ["a/0.jpg", "a/1.jpg", "b/0.jpg"] and s.meta.merged_from == 2
        assert s.meta.cost() == (3, 1.0) and s.meta.embedding_rate == 3.0  # side by side: the slowest shard's time


def test_a_merged_store_finds_its_dataset_after_the_project_moves(tmp_path, capsys):
    """A store records its dataset folder relative to itself too (`root_from_store`), so a project moved whole is
    still the same dataset; a merged store's was its shard's, relative to shards/, one level off."""
    from features.reader import check_root
    project = tmp_path / "project"
    (project / "data" / "pics").mkdir(parents=True)
    record = {"name": "pics", "root": str(project / "data" / "pics"), "root_from_store": "../../../data/pics"}
    files = [shard(project / "runs" / "pics" / "shards" / f"b.shard-{r}-of-2.h5", r, 2, [f"{'ab'[r]}/0.jpg"],
                   record=record) for r in range(2)]
    assert run_cli(FEATURES.main, ["merge", *map(str, files)]) == 0
    moved = tmp_path / "moved"
    project.rename(moved)
    with FeatureStore(moved / "runs" / "pics" / "b.h5") as s:
        check_root(s.path, s.meta.dataset, moved / "data" / "pics")  # the same dataset: no error


def test_merge_keeps_a_store_of_another_folder_and_rows_the_shards_lack(tmp_path, capsys):
    """Merging replaces no store made from another dataset folder of the same name (an earlier merge's too), nor
    one with rows the shards lack (stale shards merged again), unless --overwrite; the same shards merged again
    are fine."""
    files = [shard(tmp_path / "s" / "b.shard-0-of-2.h5", 0, 2, ["a/0.jpg", "a/1.jpg"]),
             shard(tmp_path / "s" / "b.shard-1-of-2.h5", 1, 2, ["b/0.jpg", "b/1.jpg"])]
    merge = ["merge", *map(str, files), "--out", str(tmp_path / "runs")]
    merged = tmp_path / "runs" / "pics" / "b.h5"
    merged.parent.mkdir(parents=True)
    write_store(merged, dim=4, chunks=[np.zeros((1, 4), np.float32)], labels=[0], paths=["a/0.jpg"], splits=[0],
                hashes=[""], stamps=[""], skipped=[], class_names=["a", "b"],
                meta=Extraction(dataset={"name": "pics", "root": "/A/pics"}, merged_from=2))  # a merge's, too
    assert run_cli(FEATURES.main, merge) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {merged}: made from /A/pics, not /pics") and err.count("\n") == 1, err
    assert err.rstrip().endswith("--overwrite")
    with FeatureStore(merged) as s:
        assert s.paths == ["a/0.jpg"]
    assert run_cli(FEATURES.main, [*merge, "--overwrite"]) == 0
    assert run_cli(FEATURES.main, merge) == 0  # the same shards again
    shard(files[1], 1, 2, ["b/0.jpg"])  # as an older run wrote it
    capsys.readouterr()
    assert run_cli(FEATURES.main, merge) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {merged}: 1 row the shards lack (b/1.jpg)") and err.count("\n") == 1, err
    assert err.rstrip().endswith("--overwrite")
    with FeatureStore(merged) as s:
        assert len(s.paths) == 4
    assert run_cli(FEATURES.main, [*merge, "--overwrite"]) == 0
    with FeatureStore(merged) as s:
        assert len(s.paths) == 3


def test_scale_out_keeps_its_store_and_models(tmp_path, capsys):
    assert BENCHMARKS.main(["scale", "--rows", "3000", "--dim", "8", "--max-memory", "50K",
                            "--out", str(tmp_path)]) == 0
    assert "out of core: True" in capsys.readouterr().out
    assert (tmp_path / "synthetic" / "features.h5").is_file()
    assert (tmp_path / "synthetic" / "models" / "features-logreg.metrics.json").is_file()


def test_renamed_and_removed_flags():
    assert BENCHMARKS.parse(["speed", "--images", "pics"]).images == Path("pics")
    assert BENCHMARKS.parse(["report", "runs/x", "--out", "o"]).out == Path("o")
    args = CLASSIFY.parse(["submit", "--model", "m.skops", "test1", "--out", "subs"])
    assert (args.folder, args.out) == (Path("test1"), Path("subs"))
    assert CLASSIFY.parse(["--splits", "0.6,0.2,0.2"]).splits == "0.6,0.2,0.2"  # checked by resolve, as TOML's
    args = BENCHMARKS.parse(["finetune", "--backbone", "x", "--seed", "1", "--train-seed", "2", "--seeds", "3"])
    assert (args.seed, args.train_seed, args.seeds) == (1, 2, 3)  # split seed, first training seed, how many
    gone = [["speed", "--data", "pics"], ["report", "runs/x", "--report", "o"], ["run", "c.toml", "--report", "o"],
            ["run", "c.toml", "--config", "featbench.toml"], ["scale", "--keep", "k"]]
    for argv in gone:
        with pytest.raises(SystemExit) as e:
            BENCHMARKS.parse(argv)
        assert e.value.code == 2, argv
    for argv in (["submit", "--model", "m", "--data", "t"], ["submit", "--model", "m", "t", "--output", "s.csv"]):
        with pytest.raises(SystemExit) as e:
            CLASSIFY.parse(argv)
        assert e.value.code == 2, argv


def test_usage_errors_are_one_line_naming_the_command_and_its_help(capsys):
    for cli, argv, words in [(BENCHMARKS, ["finetune", "--backbone", "x", "--mode", "sideways"], "invalid choice"),
                             (EXTRACT, ["--bogus"], "unrecognized arguments: --bogus")]:
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: python -m ") and words in err
        assert err.rstrip().endswith("--help)") and "usage:" not in err


def readme_commands() -> list[tuple[str, list[str]]]:
    """(package, argv) of every `python -m PACKAGE …` (or `torchrun … -m PACKAGE …`) command line in README.md, up
    to a pipe or redirection, in code blocks and inline code; a synopsis's [optional] parts are taken and the first
    of a|b|c."""
    code, prose, inside = [], [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
        else:
            (code if inside else prose).append(line)
    lines = "\n".join(code).replace("\\\n", " ").splitlines() + "\n".join(prose).split("`")[1::2]
    found = []
    for line in (ln for ln in lines if "──►" not in ln):  # not the pipeline diagram
        for part in (p for p in line.split("&&") if " -m " in p):
            tokens = shlex.split(part.replace("[", "").replace("]", ""), comments=True)
            tokens = list(takewhile(lambda t: t not in ("|", ";") and not t.startswith((">", "2>")), tokens))
            at = next((i for i, t in enumerate(tokens[:-1]) if t == "-m" and tokens[i + 1] in CLIS), None)
            if at is not None:
                found.append((tokens[at + 1], [t.split("|")[0] for t in tokens[at + 2:]]))
    return found


def test_every_readme_command_line_parses():
    commands = readme_commands()
    assert len(commands) > 25 and {p for p, _ in commands} == set(CLIS)
    assert ("extract", ["--fetch-weights", "all"]) in commands  # the setup line CI runs
    for package, argv in commands:
        try:
            CLIS[package].parse(argv)
        except SystemExit as e:
            pytest.fail(f"README: python -m {package} {' '.join(argv)} exits {e.code}")


@pytest.mark.parametrize("splits", ["nan,0.5,0.5", "inf,0,0", "1e308,0,0", "0.5,0.5,0.5", "a,b,c", "0.5,0.5",
                                    "-0.2,0.6,0.6"])
def test_bad_splits_are_one_line_and_write_nothing(tmp_path, capsys, splits):
    """Non-finite, non-summing, unparsable or negative fractions stop the run before anything is written
    (they used to write an invalid split code into every row, or be silently rescaled)."""
    data = tmp_path / "pics"
    for i in range(3):
        write_image(data / "a" / f"{i}.jpg", i)
        write_image(data / "b" / f"{i}.jpg", 10 + i)
    rc = run_cli(EXTRACT.main, ["--backbone", "resnet10t", "--random-init", "--data", str(data), f"--splits={splits}",
                                "--out", str(tmp_path / "runs"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "split fractions" in err and "0.7,0.15,0.15" in err
    assert not (tmp_path / "runs").exists()
    with pytest.raises(FeatbenchError, match="sum to 1"):
        resolve(data=str(data), splits=[0.5, 0.5, 0.5])
    assert resolve(data=str(data), splits="0.6,0.2,0.2").splits == (0.6, 0.2, 0.2)


def test_random_init_with_a_weights_file_is_one_line_and_writes_nothing(tmp_path, capsys):
    """--random-init and --weights FILE contradict each other: the run stops (it used to embed random weights and
    ignore the file)."""
    data = tmp_path / "pics"
    for i in range(3):
        write_image(data / "a" / f"{i}.jpg", i)
        write_image(data / "b" / f"{i}.jpg", 10 + i)
    (tmp_path / "w.pth").write_bytes(b"\x80")
    rc = run_cli(EXTRACT.main, ["--backbone", "resnet10t", "--random-init", "--weights", str(tmp_path / "w.pth"),
                                "--data", str(data), "--out", str(tmp_path / "runs"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--random-init" in err and "--weights" in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["../../escape", "a/b", "..", ".hidden", "a\\b"])
def test_a_name_that_is_not_one_folder_name_is_one_line_and_writes_nothing(tmp_path, capsys, name):
    """--name is the store's folder under --out: a separator, `..` or a leading dot would write elsewhere, nest
    folders or hide the folder, so the run stops before anything is written."""
    data = tmp_path / "pics"
    for i in range(3):
        write_image(data / "a" / f"{i}.jpg", i)
        write_image(data / "b" / f"{i}.jpg", 10 + i)
    out = tmp_path / "deep" / "er" / "runs"
    rc = run_cli(EXTRACT.main, ["--backbone", "resnet10t", "--random-init", "--data", str(data), "--name", name,
                                "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert f"dataset name {name!r} (--name, or [dataset] name): it names one folder in --out" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pics"]


@pytest.mark.parametrize("command", ["train", "train out of core", "audit", "merge", "report"])
def test_a_dataset_name_read_from_a_store_or_metrics_is_one_folder_name_too(tmp_path, capsys, command):
    """The dataset name that a store (or a model's metrics) records is its outputs' folder under --out, as --name
    is: one that is not one folder name is refused in one line (`../../escaped` wrote OUT/../../escaped/)."""
    name, out = "../../escaped", tmp_path / "a" / "b" / "out"
    latent, y, splits = synthetic()
    store = make_store(tmp_path / "synth" / "alpha.h5", view(latent, 12, 1), y, splits, "alpha",
                       dataset="synth" if command == "report" else name)
    cli, argv, where = CLASSIFY, ["--features", str(store), "--quiet"], f"recorded in {store}"
    if command == "merge":
        files = [shard(tmp_path / "s" / f"b.shard-{r}-of-2.h5", r, 2, [f"{r}.jpg"], name) for r in (0, 1)]
        cli, argv, where = FEATURES, ["merge", *map(str, files)], f"recorded in {files[0]}"
    elif command == "report":
        assert run_cli(CLASSIFY.main, argv) == 0
        metrics = store.parent / "models" / "alpha-logreg.metrics.json"
        metrics.write_text(metrics.read_text().replace('"dataset": "synth"', f'"dataset": "{name}"'))
        cli, argv, where = BENCHMARKS, ["report", str(metrics)], f"recorded for {metrics.parent / 'alpha-logreg.skops'}"
    elif command == "audit":
        argv = ["audit", "--no-map", *argv]
    elif command == "train out of core":
        argv = [*argv, "--max-memory", "1K"]
    capsys.readouterr()
    assert run_cli(cli.main, [*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: dataset name {name!r} ({where}): it names one folder in --out; use no '/' or '\\' and "
                   "do not start it with '.'\n"), err
    assert not (tmp_path / "a" / "escaped").exists() and not out.exists()


@pytest.mark.parametrize("command, text, words", [
    ("extract", "[dataset]\npath = 5", "[dataset] path = 5: text"),
    ("extract", '[dataset]\nseed = "abc"', "[dataset] seed = 'abc': a whole number"),
    ("extract", "[dataset]\nsplits = 0.5", "[dataset] splits = 0.5: three fractions"),
    ("extract", '[dataset]\nsplits = [0.5, "a", 0.5]', "[dataset] splits = [0.5, 'a', 0.5]: three fractions"),
    ("extract", "[dataset]\nname = 3", "[dataset] name = 3: text"),
    ("extract", "[dataset]\nout = true", "[dataset] out = True: text"),
    ("extract", 'dataset = "x"', "dataset = 'x' is no table; write it as a [dataset] header above its keys"),
    ("extract", '[dataset]\npaht = "x"', "unknown [dataset] keys ['paht']; known: path, format"),
    ("benchmarks", "[benchmark]\nbackbones = 5", "[benchmark] backbones = 5: a list of text"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\nrefit = "yes"', "[benchmark] refit = 'yes': true or false"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\nseeds = 1.5', "[benchmark] seeds = 1.5: a whole number"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\nweights = ["w.pt"]', "[benchmark] weights = ['w.pt']: a table"),
    ("benchmarks", 'benchmark = "x"', "benchmark = 'x' is no table"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[dataset]\nseed = "abc"', "[dataset] seed = 'abc'"),
    ("benchmarks", 'finetune = 3\n[benchmark]\nbackbones = ["a"]', "finetune = 3 is no list of tables"),
    ("benchmarks", 'curve = 3\n[benchmark]\nbackbones = ["a"]', "curve = 3 is no table; write it as a [curve] header"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[[finetune]]\nbackbone = "a"\nepochs = "ten"', "[[finetune]] epochs = 'ten': a whole number, at least 1"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[[finetune]]\nbackbone = "a"\nepochs = 0', "[[finetune]] epochs = 0: a whole number, at least 1"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[[finetune]]\nbackbone = "a"\nepoch_images = -5', "[[finetune]] epoch_images = -5: a whole number, at least 0"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[[finetune]]\nbackbone = "a"\nbatch_size = 1.5', "[[finetune]] batch_size = 1.5: a whole number, at least 2"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[[finetune]]\nbackbone = "a"\nseeds = "2"', "[[finetune]] seeds = '2': a whole number, at least 1"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[[finetune]]\nbackbone = "a"\ntrain_seed = true', "[[finetune]] train_seed = True: a whole number, at least 0"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[[finetune]]\nbackbone = "a"\nmode = ["full"]', "[[finetune]] mode = ['full']: one of full|bn-head|head"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[[finetune]]\nbackbone = "a"\nrecipe = ["seed"]', "[[finetune]] recipe = ['seed']: one of lp-ft|seed"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[[finetune]]\nbackbone = "a"\nlr = [0.1, "x"]', "[[finetune]] lr = [0.1, 'x']: a learning rate or a list of them"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[[finetune]]\nbackbone = "a"\nlr = "0.1"', "[[finetune]] lr = '0.1': a learning rate or a list of them"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[[finetune]]\nbackbone = "a"\nlrs = [0.1]', "unknown [[finetune]] keys ['lrs']; known: backbone, mode,"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[[finetune]]\nbackbone = "a"\nlayer_ratio = "x"', "[[finetune]] layer_ratio = 'x': a number"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[[finetune]]\nbackbone = "a"\nema = "no"', "[[finetune]] ema = 'no': true or false"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[[finetune]]\nbackbone = "a"\naugment = 3', "[[finetune]] augment = 3: one of rrc|flip"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[[finetune]]\nbackbone = 3', "[[finetune]] backbone = 3: text"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[[finetune]]\nmode = "full"', "[[finetune]] needs backbone = \"NAME\""),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[curve]\nfractions = "all"', "unknown [curve] keys ['fractions']; known: heads, shots,"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[curve]\nheads = 3', "[curve] heads = 3: a list of text"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[curve]\nheads = [["logreg"]]', "[curve] heads = [['logreg']]: a list of text"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[curve]\nshots = 5.5', "[curve] shots = 5.5: images per class"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[curve]\nfinetune_shots = [8.5]', "[curve] finetune_shots = [8.5]: images per class"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[curve]\nrepeats = true', "[curve] repeats = True: a whole number, at least 1"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[curve]\nsubset_seed = -1', "[curve] subset_seed = -1: a whole number, at least 0"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[curve]\nbackbones = "a"', "[curve] backbones = 'a': a list of text"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[curve]\nfinetune_backbones = [1]', "[curve] finetune_backbones = [1]: a list of text"),
    ("benchmarks", '[benchmark]\nbackbones = ["a"]\n[curve]\nfinetune_mode = ["full"]', "[curve] finetune_mode = ['full']: one of full|bn-head|head"),
])
def test_a_config_value_of_the_wrong_type_is_one_line_naming_the_file_and_key(tmp_path, capsys, command, text, words):
    """Each config key's value is checked for its type, and each table for being one, before it is used (a number
    for a path, text for the seed, a number for the splits or the name were tracebacks; `dataset = "x"` was
    taken for a table with an unknown key), [[finetune]] entries' and [curve]'s too (a list for a mode or a recipe,
    text in a list of rates or of heads were tracebacks; text for epochs or seeds, a bool for repeats, text for
    backbones were taken, and `lrs` was answered as a missing backbone or mode)."""
    config = tmp_path / "bench.toml"
    config.write_text(text + "\n")
    argv = (["run", str(config)] if command == "benchmarks" else
            ["--backbone", "resnet10t", "--random-init", "--config", str(config), "--quiet"])
    assert run_cli(CLIS[command].main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {config}: ") and words in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.toml"]


def test_a_config_files_relative_paths_are_relative_to_it_and_flags_to_the_working_directory(tmp_path, monkeypatch):
    """A config file's `path` and `out` are read from its folder (as `path` always was); the same values given
    as --data and --out are read from the working directory, and `out`'s default, `runs`, is too."""
    config = tmp_path / "project" / "conf" / "bench.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[dataset]\npath = "../pics"\nout = "../stores"\n')
    monkeypatch.chdir(tmp_path)
    settings = resolve(config=Path("project/conf/bench.toml"))
    assert settings.path == Path("project/conf/../pics") and settings.out == Path("project/conf/../stores")
    flags = resolve(config=Path("project/conf/bench.toml"), data="pics", out=Path("stores"))
    assert flags.path == Path("pics") and flags.out == Path("stores")
    config.write_text('[dataset]\npath = "/abs/pics"\n')
    settings = resolve(config=Path("project/conf/bench.toml"))
    assert settings.path == Path("/abs/pics") and settings.out == Path("runs")
