"""Dataset settings shared by `extract` and `classify`: command-line flags over `featbench.toml`.

The config file is `featbench.toml` in the working directory (or `--config FILE`):

    [dataset]
    path = "../shared/data/dogs-vs-cats/train"   # required unless --data is given
    format = "auto"          # dogs-vs-cats | oxford-pets | imagefolder | csv
    target = "breed"         # oxford-pets only: breed (37-way) or species (cat/dog)
    name = ""                # store folder name; default from the path
    splits = [0.7, 0.15, 0.15]
    seed = 0                 # the split seed (--seed)
    out = "runs"             # the output folder (--out): OUT/DATASET/ holds stores, models and reports

Each key has the flag of the same name (`path`: --data); `resolve` merges them, flags first. A relative
`path` or `out` in the file is relative to the file's folder; the flags' are relative to the working directory.
"""
import argparse
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

from extract.datasets import split_fractions
from extract.files import read_given
from features.errors import FeatbenchError

CONFIG_NAME = "featbench.toml"
DEFAULTS = {"path": None, "format": "auto", "target": "breed", "name": "", "splits": [0.7, 0.15, 0.15],
            "seed": 0, "out": "runs"}


class Kind(NamedTuple):
    """What a config value must be: `words` for the one-line error, `test` to check it."""
    words: str
    test: Callable[[object], bool]


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


TEXT = Kind("text", lambda v: isinstance(v, str))
WHOLE = Kind("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool))
FLAG = Kind("true or false", lambda v: isinstance(v, bool))
TEXTS = Kind('a list of text, e.g. ["a", "b"]', lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v))
FRACTIONS = Kind('three fractions, e.g. [0.7, 0.15, 0.15] or "0.7,0.15,0.15"',
                 lambda v: isinstance(v, str) or isinstance(v, list) and all(map(_number, v)))
NUMBER = Kind("a number", _number)


def whole(least: int) -> Kind:
    """A whole number no smaller than `least`."""
    return Kind(f"a whole number, at least {least}", lambda v: WHOLE.test(v) and v >= least)


def one_of(options) -> Kind:
    """One of the texts `options`."""
    return Kind(f"one of {'|'.join(options)}", lambda v: isinstance(v, str) and v in options)


DATASET_KINDS = {"path": TEXT, "format": TEXT, "target": TEXT, "name": TEXT, "splits": FRACTIONS, "seed": WHOLE,
                 "out": TEXT}


def check_table(table, where, name: str, kinds: dict[str, Kind]) -> dict:
    """`table`, the `[name]` table of the config file `where`, when it is a table of keys of `kinds`, each
    holding a value of its kind; else one line naming the file and key."""
    if not isinstance(table, dict):
        raise FeatbenchError(f"{where}: {name} = {table!r:.40} is no table; write it as a [{name}] header above "
                             "its keys")
    unknown = set(table) - set(kinds)
    if unknown:
        raise FeatbenchError(f"{where}: unknown [{name}] keys {sorted(unknown)}; known: {', '.join(kinds)}")
    for key, value in table.items():
        if not kinds[key].test(value):
            raise FeatbenchError(f"{where}: [{name}] {key} = {value!r:.40}: {kinds[key].words}")
    return table


@dataclass
class DatasetSettings:
    path: Path | None
    format: str
    target: str
    name: str
    splits: tuple
    seed: int
    out: Path


DATASET_FLAGS = ("config", "data", "format", "target", "name", "splits", "seed", "out")


def add_dataset_args(parser: argparse.ArgumentParser, config: bool = True) -> None:
    """The dataset flags; `config=False` leaves out --config (for a command that reads its own config)."""
    g = parser.add_argument_group("dataset (flags override the config's [dataset] table)")
    if config:
        g.add_argument("--config", type=Path, help=f"config file (default: ./{CONFIG_NAME} if present); a relative "
                                                   "path or out in it is relative to its folder")
    g.add_argument("--data", help="dataset folder or CSV file")
    g.add_argument("--format", help="dogs-vs-cats | oxford-pets | imagefolder | csv (default: auto-detect)")
    g.add_argument("--target", help="oxford-pets: breed (37 classes, default) or species (cat/dog)")
    g.add_argument("--name", help="dataset name used for the output folder (default: from the path)")
    g.add_argument("--splits", metavar="TRAIN,VAL,TEST",
                   help="train,val,test fractions when the dataset has none (default 0.7,0.15,0.15)")
    g.add_argument("--seed", type=int, help="split seed: which images go to train, val and test (default 0)")
    g.add_argument("--out", type=Path,
                   help="output folder: stores, models and reports go to OUT/DATASET/ (default: runs)")


def dataset_flags(args: argparse.Namespace) -> dict:
    """The dataset flags of parsed arguments, as `resolve`'s keyword arguments."""
    return {k: getattr(args, k) for k in DATASET_FLAGS if hasattr(args, k)}


def refuse_with_features(flags: dict) -> None:
    """One line where dataset flags that choose a dataset (all but --out) or its config come with --features, whose
    stores carry their own dataset and split: they would be ignored."""
    if given := [f"--{k}" for k in DATASET_FLAGS if k != "out" and flags.get(k) is not None]:
        raise FeatbenchError(f"--features names the stores, which carry their own dataset and split, so "
                             f"{', '.join(given)} would be ignored: drop them, or drop --features to use the "
                             "configured dataset's stores")


TABLES = ("dataset", "benchmark", "finetune", "curve")  # a config's tables: extract reads [dataset], `run` them all


def read_toml(path: Path, missing: str = "") -> dict:
    """A config file's tables; a file that is missing (`missing` says where to find one), no readable regular file
    (`read_given`), invalid, or holding a table or key of none of `TABLES` (a typo) is one line."""
    data = read_given(path, "config file", f"config file not found{missing}")
    try:
        cfg = tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise FeatbenchError(f"{path}: invalid TOML ({e})") from None
    if unknown := sorted(set(cfg) - set(TABLES)):
        raise FeatbenchError(f"{path}: unknown table or key {unknown[0]!r} at the top; a config holds "
                             f"[dataset], [benchmark], [[finetune]] and [curve]")
    return cfg


def read_config(path: Path | None) -> dict:
    """The `[dataset]` table of `path`, or of ./featbench.toml when there is one, checked (`check_table`)."""
    if path is None:
        path = Path(CONFIG_NAME)
        if not path.is_file():
            return {}
    return check_table(read_toml(path).get("dataset", {}), path, "dataset", DATASET_KINDS)


def resolve(config: Path | None = None, data=None, format: str | None = None, target: str | None = None,
            name: str | None = None, splits=None, seed: int | None = None, out=None,
            need_data: bool = True) -> DatasetSettings:
    """The dataset settings: these values where given (not None), else the config's [dataset] table
    (`config`, default ./featbench.toml if present), else the defaults."""
    cfg = read_config(config)
    merged = {**DEFAULTS, **cfg}
    given = {"path": data, "format": format, "target": target, "name": name, "seed": seed, "out": out,
             "splits": splits}
    merged.update({k: v for k, v in given.items() if v is not None})
    if need_data and not merged["path"]:
        raise FeatbenchError(f"no dataset configured: pass --data PATH or write a [dataset] path in "
                             f"{config or './' + CONFIG_NAME}")
    path = _located(merged["path"], config if data is None else None) if merged["path"] else None
    out = _located(merged["out"], config if out is None and "out" in cfg else None)
    return DatasetSettings(path, merged["format"], merged["target"], merged["name"],
                           split_fractions(merged["splits"]), int(merged["seed"]), out)


def _located(value, config: Path | None) -> Path:
    """A path setting: relative to the folder of `config` when it comes from that file, else to the working
    directory (a flag, a default, or ./featbench.toml, whose folder that is)."""
    path = Path(value)
    return config.parent / path if config and not path.is_absolute() else path
