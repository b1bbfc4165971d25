"""The records featbench writes for later stages: a store's metadata and a model's test metrics.

Each is a frozen dataclass written as one flat JSON object with a `version`. A file without one
(written before the records existed) reads as version 0; a newer version than this featbench knows
is refused. Keys this featbench does not know are kept in `extra` and written back unchanged.
"""
import json
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import ClassVar, NamedTuple, get_args

from features.errors import FeatbenchError, StoreError

STORE_META_VERSION = 1
METRICS_VERSION = 1
PER_CLASS = ("precision", "recall")  # metrics written as one flat `KIND/<class>` key per class


class _Json:
    """A record as a flat JSON object: required fields always, optional ones only when set."""
    VERSION: ClassVar[int]
    WHAT: ClassVar[str]  # what the JSON is, for error messages
    ERROR: ClassVar[type] = FeatbenchError
    REDO: ClassVar[str] = "re-run the command that wrote it"  # what to do about a file that is not one

    def to_json(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "extra" and (f.name == "version" or f.default is MISSING or value != f.default):
                out[f.name] = value
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data, where):
        """The record of `data` as read from `where` (named in the one-line error when it is not one)."""
        if not isinstance(data, dict):
            raise cls.ERROR(f"{where}: not a featbench {cls.WHAT} (a JSON object expected)")
        version = data.get("version", 0)
        if not isinstance(version, int):
            raise cls.ERROR(f"{where}: not a featbench {cls.WHAT} (version {version!r})")
        if version > cls.VERSION:
            raise cls.ERROR(f"{where}: {cls.WHAT} version {version}, newer than this featbench reads "
                            f"({cls.VERSION}); upgrade featbench")
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
                   and f.name not in data]
        if missing:
            raise cls.ERROR(f"{where}: not a featbench {cls.WHAT} (no {', '.join(missing[:4])}"
                            f"{' …' if len(missing) > 4 else ''})")
        names = {f.name for f in fields(cls)} - {"extra", "version"}
        record = cls(**{k: v for k, v in data.items() if k in names}, version=version,
                     extra={k: v for k, v in data.items() if k not in names and k != "version"})
        record.check_types(where)
        return record

    def check_types(self, where) -> None:
        """Refuse, in one line, a field whose value is not of its declared type (an int passes as a float; a bool,
        which Python counts as an int, only as a bool)."""
        for f in fields(self):
            kinds, value = get_args(f.type) or (f.type,), getattr(self, f.name)
            fits = isinstance(value, kinds) or float in kinds and isinstance(value, int)
            if not fits or isinstance(value, bool) and bool not in kinds:
                raise self.ERROR(f"{where}: not a featbench {self.WHAT} ({f.name} {value!r:.40} is not "
                                 f"{' or '.join(k.__name__ for k in kinds)}); {self.REDO}")


class Cost(NamedTuple):
    """Images embedded into a store and the seconds of the runs that embedded them."""
    images: int
    seconds: float

    @property
    def rate(self) -> float | None:
        """Images per second; None without an image or a time."""
        return round(self.images / self.seconds, 2) if self.images and self.seconds else None


@dataclass(frozen=True, kw_only=True)
class Extraction:
    """How a store's embeddings were made, as `extract` records it; None where a store does not say
    (minimal or older stores)."""
    backbone: str | None = None
    weights_fingerprint: str | None = None
    preprocess: dict | None = None  # `Preprocess.as_dict()`
    readout: dict | None = None  # `Readout.as_dict()`: pool, blocks, image_size, tta where not the defaults
    amp: bool | None = None  # CUDA autocast was in effect
    amp_dtype: str | None = None  # its type (float16 or bfloat16) where `amp`; None in stores before it was kept
    gpu_decode: bool | None = None  # JPEGs decoded on the GPU (`--gpu-decode`); None: on the CPU
    precision: str = "fp32"  # the model's arithmetic on CPU: fp32, bf16 or int8 (stores before it: fp32)
    calibration: dict | None = None  # int8: {images, sha256, paths (older stores: none)} of its calibration images
    weights: dict | None = None  # {fingerprint, file_sha256, source, random_init}
    max_image_bytes: int | None = None  # --max-image-bytes: larger files skipped unread (None: stores before it)
    dataset: dict | None = None  # `Dataset.describe()` (name, root, format, classes, files, listing…), root_from_store
    split_fractions: list | None = None
    split_seed: int | None = None
    versions: dict | None = None  # `library_versions()`
    created: str | None = None  # ISO time, UTC
    device: str | None = None
    optimized: bool | None = None
    compiled: bool | None = None
    batch_size: int | None = None
    extraction_seconds: float | None = None  # this run's
    images_embedded: int | None = None  # computed in this run (not reused)
    images_per_second: float | None = None  # this run's
    images_embedded_total: int | None = None  # `cost()`: over every run that embedded rows (None: stores before it)
    extraction_seconds_total: float | None = None  # those runs' seconds (a merge: its slowest shard's)
    shard: list | None = None  # [rank, world] of a shard store
    merged_from: int | None = None  # number of shards merged into this store
    extra: dict = field(default_factory=dict)  # keys this featbench does not know, as read

    def cost(self) -> Cost:
        """What the runs that embedded this store's rows took, all of them (a reused row is not paid again; a killed
        run's rows that a resume took from its journal, with the seconds the journal records); a store from before
        the totals: its last run."""
        if self.images_embedded_total is None:
            return Cost(self.images_embedded or 0, self.extraction_seconds or 0.0)
        return Cost(self.images_embedded_total, self.extraction_seconds_total or 0.0)

    @property
    def embedding_rate(self) -> float | None:
        """Images per second over every run that embedded rows: rows / this is what embedding them took (a store
        from before the totals: its last run's rate, as recorded)."""
        return self.images_per_second if self.images_embedded_total is None else self.cost().rate


@dataclass(frozen=True, kw_only=True)
class StoreMeta(_Json, Extraction):
    """A store's metadata: its `Extraction` and what `write_store` records (HDF5 attribute `meta`)."""
    VERSION: ClassVar[int] = STORE_META_VERSION
    WHAT: ClassVar[str] = "feature store"
    ERROR: ClassVar[type] = StoreError
    REDO: ClassVar[str] = "delete it and re-run `python -m extract`"
    version: int = STORE_META_VERSION
    class_names: list
    split_names: list
    dim: int
    rows: int
    dtype: str
    skipped: int  # images not embedded
    fingerprint: str  # of the embeddings' bytes
    split_fingerprint: str  # of which image is in which split with which label


@dataclass(frozen=True, kw_only=True)
class ModelMetrics(_Json):
    """One model's metrics, `{model}.metrics.json` beside it (`classify` and fine-tunes).

    The test split is scored once; `val_*` are the chosen configuration's scores on val (fitted on
    train). `precision`/`recall` (class → value) are written as flat `precision/<class>` keys.
    """
    VERSION: ClassVar[int] = METRICS_VERSION
    WHAT: ClassVar[str] = "metrics file"
    version: int = METRICS_VERSION
    dataset: str
    backbone: str  # the store name (`a+b` for ensembles)
    backbones: list  # the backbone of each store
    head: str  # a head, an ensemble or `finetune-MODE`
    model: str  # file name
    refit: bool  # fitted on train+val after selection
    classes: list
    n_train: int  # labelled images used to fit (train, or train+val when refit)
    n_val: int
    n_test: int
    accuracy: float
    balanced_accuracy: float
    log_loss: float
    log_loss_raw: float | None = None  # at a val temperature (params' `temperature`): test log-loss at T = 1
    ece: float  # expected calibration error of the top-label confidence, 15 equal-width bins
    precision: dict
    recall: dict
    confusion: list  # confusion[true][predicted], in `classes` order
    most_confused: list  # [true, predicted, count], most frequent first
    top_losses: list  # {path, true, predicted, probability (of the prediction), p_true, loss}, worst first
    val_log_loss: float
    val_accuracy: float
    val_log_loss_raw: float | None = None  # at a val temperature: the val log-loss at T = 1 (a tie's tie-break)
    params: dict  # chosen hyper-parameters (`avg`/`stack`: {store: {head, ...}}); `temperature`: fitted on val;
    # `early_stop`: "tempered" when its epoch was chosen at each epoch's val temperature too
    sweep: list  # the validation curve: a row per grid point (fine-tunes: per run and epoch)
    members: dict  # {store: head} of `avg`/`stack`, else {}
    member_sweeps: dict | None = None  # `avg`/`stack`: {"STORE-HEAD": {seconds, configurations}} of every single
    # head's sweep that `fit_seconds` and `configurations` include (a report's pool counts each once); else None
    configurations: int | None = None  # checkpoints scored on val to choose it (early-stopped heads: each epoch;
    # `avg`/`stack`: their members' sweeps and their own val score; fine-tunes: `compute`)
    fit_seconds: float  # features to final model, selection (ensembles: members' too) included
    predict_seconds: float
    seeds_seconds: float | None = None  # the extra seeds' time
    features: dict  # {store name: store fingerprint}
    split_fingerprint: str
    split_source: str | None = None  # fine-tunes: where the split came from
    dataset_root: str | None = None  # fine-tunes
    weights: dict | None = None  # fine-tunes: the backbone's weights
    compute: dict | None = None  # fine-tunes: device, runs, epochs, images seen, parameters
    featbench_version: str
    seeds: dict | None = None  # with --seeds N > 1: `over_seeds` of a run per seed, the saved model's first
    out_of_core: bool = False  # trained on features streamed from disk
    exclude: dict | None = None  # with --exclude AUDIT.csv: `classify.train.Exclusion.scores` of this model
    test_correct: str | None = None  # `classify.metrics.correct_mask` of the test split (fine-tunes: an unread
    # image is wrong); None in metrics written before classify recorded it
    created: str | None = None  # when saved
    path: str | None = None  # the model file
    extra: dict = field(default_factory=dict)  # keys this featbench does not know, as read

    def dataset_folder(self) -> Path:
        """OUT/DATASET, where this model's stores, audit and curve are: its model lies in OUT/DATASET/models/ or,
        kept there by a later run, in OUT/DATASET/models/previous/N/."""
        folder = Path(self.path).parent
        if self.kept():
            folder = folder.parent.parent
        return folder.parent

    def kept(self) -> bool:
        """Whether this model was moved to models/previous/N/ by a later run (`features.atomic.keep_earlier`)."""
        folder = Path(self.path).parent
        return folder.parent.name == "previous" and folder.parent.parent.name == "models"

    def per_class(self) -> dict:
        """`precision/<class>` and `recall/<class>`, as written."""
        return {f"{kind}/{c}": v for kind in PER_CLASS for c, v in getattr(self, kind).items()}

    def to_json(self) -> dict:
        out = {}
        for k, v in super().to_json().items():
            if k == PER_CLASS[0]:  # the per-class fields are adjacent: written where they stand
                out.update(self.per_class())
            elif k not in PER_CLASS:
                out[k] = v
        return out

    @classmethod
    def from_json(cls, data, where):
        if isinstance(data, dict):
            flat = {k: v for k, v in data.items() if k.split("/", 1)[0] not in PER_CLASS}
            for kind in PER_CLASS:
                flat[kind] = {k.split("/", 1)[1]: v for k, v in data.items() if k.startswith(f"{kind}/")}
            data = flat
        return super().from_json(data, where)

    @classmethod
    def read(cls, path) -> "ModelMetrics":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise FeatbenchError(f"{path}: not a readable metrics JSON ({e})") from None
        return cls.from_json(data, path)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1) + "\n"
