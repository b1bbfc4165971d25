"""Shared fixtures: where the real photos are, and small synthetic image folders."""
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# FEATBENCH_DATA: the photos' folder, for a copy of the checkout that has no ../shared beside it (mutmut's mutants/)
SHARED_DATA = Path(os.environ.get("FEATBENCH_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
DOGS_VS_CATS = SHARED_DATA / "dogs-vs-cats" / "train"
PETS = SHARED_DATA / "oxford-pets-subset" / "images"


def needs(path: Path):
    """Skip where the real photos are absent (a user's checkout); fail under FEATBENCH_REQUIRE_DATA=1 (CI, where
    a missing folder is a broken set-up, not a reason to pass)."""
    if not path.is_dir() and os.environ.get("FEATBENCH_REQUIRE_DATA") == "1":
        pytest.fail(f"{path} not present (FEATBENCH_REQUIRE_DATA=1)", pytrace=False)
    return pytest.mark.skipif(not path.is_dir(), reason=f"{path} not present")


def skip_without_weights(reason: str):
    """Skip a test whose real weights are absent; fail it instead under FEATBENCH_REQUIRE_WEIGHTS=1
    (CI fetches the weights first, so there a missing one is a bug, not a reason to pass)."""
    if os.environ.get("FEATBENCH_REQUIRE_WEIGHTS") == "1":
        pytest.fail(f"{reason} (FEATBENCH_REQUIRE_WEIGHTS=1)", pytrace=False)
    pytest.skip(reason)


def promptly(call, timeout: float = 20.0):
    """`call()`'s result, failing the test if it has not returned within `timeout` seconds (a FIFO read hangs)."""
    out = []
    worker = threading.Thread(target=lambda: out.append(call()), daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), "still running"
    return out[0]


def write_image(path: Path, seed: int, size=(64, 48)) -> Path:
    """A small random RGB JPEG (content depends on the seed)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)
    return path


@pytest.fixture
def dvc_folder(tmp_path) -> Path:
    """A Kaggle-style Dogs vs. Cats folder of 24 synthetic images."""
    root = tmp_path / "dvc"
    for i in range(12):
        write_image(root / f"cat.{i}.jpg", i)
        write_image(root / f"dog.{i}.jpg", 100 + i)
    return root
