"""Hostile listings end to end: every listed entry is embedded or skipped with its reason, nothing but a regular
file is opened, reading is capped, and a re-run after `touch` writes the new stamps once."""
import io
import os
import re
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_extract_pipeline import QUIET, contents, run, tiny  # noqa: F401 (tiny: the fixture)
from test_images import BAD, RGB, hostile_files, png_header_only

from extract import pipeline
from extract.datasets import load_dataset
from extract.files import file_stamp, read_file
from extract.images import BadImage, load
from extract.pipeline import Options, extract
from features import FeatureStore
from features.__main__ import main as features_main
from features.__main__ import skipped_lines
from features.cli import run_cli

from conftest import write_image

ROOT = Path(__file__).resolve().parents[1]


def _image(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))


EMBEDDED = None


def corpus(folder: Path) -> dict[str, str | None]:
    """Write every kind of hostile entry into `folder`; name → pattern of its skip reason (None: embedded)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {**{n: (d, EMBEDDED) for n, d in hostile_files().items()},  # CMYK, GIF/PNG named .jpg, 16-bit, EXIF…
             **{f"{n}.jpg": (d, why) for n, (d, why) in BAD.items()},  # zero-byte, truncated, text
             "random-bytes.jpg": (np.random.default_rng(0).bytes(5000), "not an image"),
             "1x1.png": (_image(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG"), EMBEDDED),
             "bomb-50000x50000.png": (png_header_only(50000, 50000), "decompression bomb"),
             "with space.jpg": (_image(RGB, "JPEG"), EMBEDDED),
             "ünïcödé 猫.jpg": (_image(RGB.rotate(90), "JPEG"), EMBEDDED),
             "new\nline.jpg": (_image(RGB.rotate(180), "JPEG"), EMBEDDED),
             "new\nline, not an image.jpg": (b"\0" * 100, "not an image")}
    expected = {}
    for name, (data, why) in files.items():
        (folder / name).write_bytes(data)
        expected[name] = why
    (folder / "link-to-image.jpg").symlink_to(folder / "1x1.png")
    (folder / "broken-link.jpg").symlink_to(folder / "nowhere.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    (folder / "folder.jpg").mkdir()
    os.mkfifo(folder / "fifo.jpg")
    _socket(folder / "socket.jpg")
    expected.update({"link-to-image.jpg": EMBEDDED, "broken-link.jpg": "^broken symbolic link$",
                     "loop.jpg": "^symbolic link loop$", "folder.jpg": "^a folder, not an image file$",
                     "fifo.jpg": r"^not a regular file \(FIFO\)$", "socket.jpg": r"^not a regular file \(socket\)$"})
    return expected


def test_hostile_corpus_one_listing_one_store(tmp_path, tiny, monkeypatch):  # noqa: F811
    """Every entry of a class folder ends embedded or skipped with its reason; skipped ones carry no content
    hash or stamp; `skipped_lines` lists them; a re-run judges the skipped ones again without the model."""
    expected = corpus(tmp_path / "data" / "a")
    write_image(tmp_path / "data" / "b" / "0.jpg", 0)
    summary = run(tmp_path / "data", tmp_path / "out", tiny)
    with FeatureStore(summary.path) as s:
        stored, skipped = set(s.paths), {p: why for p, why, *_ in s.skipped}
        assert all(st == "" and h == "" for *_, st, h in s.skipped)
        assert all(s.stamps) and all(s.hashes) and np.isfinite(s.embeddings(np.arange(len(s.paths)))).all()
    assert stored | set(skipped) == {f"a/{n}" for n in expected} | {"b/0.jpg"} and not stored & set(skipped)
    for name, why in expected.items():
        if why is EMBEDDED:
            assert f"a/{name}" in stored, (name, skipped.get(f"a/{name}"))
        else:
            assert re.search(why, skipped.get(f"a/{name}", "")), (name, skipped.get(f"a/{name}"))
    report = skipped_lines(summary.path).splitlines()
    assert report[0] == f"{summary.path}: {len(skipped)} skipped" and len(report) == 1 + len(skipped)
    assert "  a/fifo.jpg: not a regular file (FIFO)" in report
    assert "  'a/new\\nline, not an image.jpg': not an image PIL can read" in report  # control characters quoted
    before = contents(summary.path)
    monkeypatch.setattr(pipeline, "embed_batches", lambda *a, **k: pytest.fail("the model was started"))
    again = run(tmp_path / "data", tmp_path / "out", tiny)
    assert again.embedded == 0 and sorted(again.skipped) == sorted(skipped.items())
    after = contents(summary.path)
    np.testing.assert_array_equal(before.pop("X"), after.pop("X"))
    assert before == after


def test_links_and_folders_named_like_images_are_listed_and_skipped(tmp_path, tiny, capsys):  # noqa: F811
    """Dogs vs. Cats folder and CSV: a broken link, a link loop and a folder named like an image are listed
    (not dropped), then skipped with their reasons; a CSV listing a link loop is no crash."""
    root = tmp_path / "dvc"
    for i in range(3):
        write_image(root / f"cat.{i}.jpg", i)
        write_image(root / f"dog.{i}.jpg", 10 + i)
    (root / "cat.7.jpg").symlink_to(root / "gone.jpg")
    (root / "dog.7.jpg").symlink_to(root / "dog.7.jpg")
    (root / "cat.8.jpg").mkdir()
    (root / "train").mkdir()  # a sub-folder not named like an image is no entry
    want = {"cat.7.jpg": "broken symbolic link", "dog.7.jpg": "symbolic link loop",
            "cat.8.jpg": "a folder, not an image file"}
    listed = load_dataset(root)
    assert {it.rel for it in listed.items} == {f"{c}.{i}.jpg" for c in ("cat", "dog") for i in range(3)} | set(want)
    assert dict(extract(listed, tiny, tmp_path / "out", options=QUIET).skipped) == want
    (tmp_path / "list.csv").write_text("path,label\n" + "".join(f"dvc/{n},x\n" for n in [*want, "cat.0.jpg"]))
    summary = run(tmp_path / "list.csv", tmp_path / "out", tiny)
    assert summary.rows == 1 and dict(summary.skipped) == {f"dvc/{n}": why for n, why in want.items()}
    assert skipped_lines(summary.path).splitlines() == [f"{summary.path}: 3 skipped", "  dvc/cat.7.jpg: broken symbolic link",
                                                        "  dvc/cat.8.jpg: a folder, not an image file",
                                                        "  dvc/dog.7.jpg: symbolic link loop"]
    assert run_cli(features_main, ["info", str(summary.path), "--skipped"]) == 0
    assert capsys.readouterr().out.endswith(skipped_lines(summary.path) + "\n")


def test_only_regular_files_are_opened(tmp_path, monkeypatch):
    """A FIFO, a device, a socket and a folder are refused by their stat, never opened (a FIFO would hang,
    /dev/zero never end)."""
    os.mkfifo(tmp_path / "fifo")
    _socket(tmp_path / "sock")
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    write_image(tmp_path / "ok.jpg", 0)
    opened = []
    real = os.open
    monkeypatch.setattr(os, "open", lambda path, *a: opened.append(Path(path).name) or real(path, *a))
    for name, why in [("fifo", "not a regular file (FIFO)"), ("sock", "not a regular file (socket)"),
                      ("zero.jpg", "not a regular file (character device)"), (".", "a folder, not an image file")]:
        with pytest.raises(BadImage, match=re.escape(why) + "$"):
            read_file(tmp_path / name, 2**20)
    assert opened == []
    data, stamp = read_file(tmp_path / "ok.jpg", 2**20)
    assert data == (tmp_path / "ok.jpg").read_bytes() and stamp == file_stamp(tmp_path / "ok.jpg") and opened == ["ok.jpg"]


def test_bytes_read_are_capped(tmp_path, tiny):  # noqa: F811
    """`Options.max_image_bytes`: a larger file is skipped unread; a file whose size says 0 (/proc) is read no
    further than the cap."""
    for i in range(3):
        write_image(tmp_path / "d" / f"cat.{i}.jpg", i)
    big = tmp_path / "d" / "dog.0.jpg"
    big.write_bytes(_image(RGB.resize((400, 300)), "PNG"))
    cap = big.stat().st_size - 1
    assert max((tmp_path / "d" / f"cat.{i}.jpg").stat().st_size for i in range(3)) <= cap
    summary = extract(load_dataset(tmp_path / "d"), tiny, tmp_path / "out",
                      options=Options(**{**QUIET.__dict__, "max_image_bytes": cap}))
    assert summary.rows == 3 and summary.skipped == [("dog.0.jpg", f"larger than the {cap} bytes cap (--max-image-bytes)")]
    assert Path("/proc/self/environ").stat().st_size == 0
    with pytest.raises(BadImage, match=r"^larger than the 16 bytes cap \(--max-image-bytes\)$"):
        read_file(Path("/proc/self/environ"), 16)
    assert Options().max_image_bytes == 256 * 2**20
    os.truncate(big, 2**21 + 1)  # sparse: refused by its size, unread
    with pytest.raises(BadImage, match=r"^larger than the 2 MiB cap \(--max-image-bytes\)$"):
        read_file(big, 2**21)


def test_touch_then_rerun_writes_the_stamps_back_once(dvc_folder, tmp_path, tiny, monkeypatch):  # noqa: F811
    """After `touch`, a re-run reads each file once, finds its hash and writes the new stamps without starting
    the model or workers; the run after that opens no file and leaves the store as it is."""
    first = run(dvc_folder, tmp_path / "out", tiny)
    before = contents(first.path)
    for f in dvc_folder.iterdir():
        later = f.stat().st_mtime_ns + 10**11
        os.utime(f, ns=(later, later))
    monkeypatch.setattr(pipeline, "embed_batches", lambda *a, **k: pytest.fail("the model was started"))
    second = run(dvc_folder, tmp_path / "out", tiny)
    assert (second.embedded, second.reused) == (0, 24)
    after = contents(first.path)
    np.testing.assert_array_equal(before.pop("X"), after.pop("X"))
    assert after.pop("stamps") == [file_stamp(dvc_folder / p) for p in after["paths"]] != before.pop("stamps")
    assert after == before
    written = first.path.stat().st_ino, first.path.stat().st_mtime_ns  # a rewrite renames a new file over it
    monkeypatch.setattr(pipeline, "read_file", lambda *a: pytest.fail("a file was read"))
    third = run(dvc_folder, tmp_path / "out", tiny)
    assert (third.embedded, third.reused) == (0, 24) and (first.path.stat().st_ino, first.path.stat().st_mtime_ns) == written


SECRET = "featbench-secret-7c1d"


def test_csv_of_system_paths_finishes_promptly_and_embeds_none_of_them(tmp_path):
    """A CSV listing /dev/zero, /proc/self/environ, /etc/shadow, a FIFO, a socket and a folder: a real
    `python -m extract` (time- and memory-limited, so a regression fails instead of hanging or eating the
    machine) embeds only the images and skips each of the others with its reason; no hash, stamp or byte of
    the environment reaches the store or the output."""
    for i in range(2):
        write_image(tmp_path / f"{i}.jpg", i)
    os.mkfifo(tmp_path / "fifo.jpg")
    _socket(tmp_path / "sock.jpg")
    (tmp_path / "dir.jpg").mkdir()
    want = {"/dev/zero": r"not a regular file \(character device\)", "/proc/self/environ": "not an image",
            "fifo.jpg": r"not a regular file \(FIFO\)", "sock.jpg": r"not a regular file \(socket\)",
            "dir.jpg": "a folder, not an image file"}
    if Path("/etc/shadow").exists():
        want["/etc/shadow"] = "not an image|unreadable file"
    (tmp_path / "list.csv").write_text("path,label\n0.jpg,a\n1.jpg,b\n" + "".join(f"{p},a\n" for p in want))
    limited = ("import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_DATA, (3 << 30,) * 2); "
               "sys.argv[0] = 'extract'; runpy.run_module('extract', run_name='__main__')")
    cmd = [sys.executable, "-c", limited,
           "--backbone", "resnet10t", "--random-init", "--workers", "0", "--quiet",
           "--data", str(tmp_path / "list.csv"), "--out", str(tmp_path / "out")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "FEATBENCH_SECRET": SECRET},
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    path = tmp_path / "out" / "list" / "resnet10t-random-init.h5"
    with FeatureStore(path) as s:
        assert s.paths == ["0.jpg", "1.jpg"]
        skipped = {p: (why, st, h) for p, why, st, h in s.skipped}
    assert skipped.keys() == want.keys()
    for p, why in want.items():
        assert re.fullmatch(f"({why}).*", skipped[p][0]) and skipped[p][1:] == ("", ""), (p, skipped[p])
    assert SECRET.encode() not in path.read_bytes() and SECRET not in done.stdout + done.stderr


@pytest.mark.parametrize("command", ["extract --config", "benchmarks run", "benchmarks report --curve"])
def test_a_fifo_given_as_a_config_or_curve_is_one_line_not_a_hang(tmp_path, command):
    """A config or curve file is read as a listed image is, a regular file only: a FIFO given as one is refused
    by its `stat`, promptly, in one line (open() waited for a writer for ever)."""
    from test_store import metrics_record
    fifo = tmp_path / ("fifo.json" if "curve" in command else "fifo.toml")
    os.mkfifo(fifo)
    metrics = tmp_path / "pics" / "models" / "toy-logreg.metrics.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text(metrics_record().dumps())
    argv, what = {"extract --config": (["extract", "--backbone", "resnet10t", "--config", str(fifo)], "config file"),
                  "benchmarks run": (["benchmarks", "run", str(fifo)], "config file"),
                  "benchmarks report --curve": (["benchmarks", "report", str(metrics), "--curve", str(fifo)],
                                                "curve file")}[command]
    done = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and done.stderr == f"error: {fifo}: a FIFO, not a {what}; pass the {what} itself\n", \
        done.stderr


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One random corruption: flipped bytes, a cut, a spliced run of noise, a zeroed or repeated span."""
    b = bytearray(data)
    op = rng.integers(5)
    at = int(rng.integers(len(b)))
    if op == 0:
        for k in rng.integers(len(b), size=int(rng.integers(1, 9))):
            b[k] ^= 1 << int(rng.integers(8))
    elif op == 1:
        del b[at:]
    elif op == 2:
        b[at:at] = rng.bytes(int(rng.integers(1, 64)))
    elif op == 3:
        b[at:at + int(rng.integers(1, 64))] = bytes(min(len(b) - at, 64))
    else:
        b[at:at] = b[at:at + int(rng.integers(1, 256))]
    return bytes(b)


def test_fuzzed_files_are_embedded_or_skipped(tmp_path, tiny):  # noqa: F811
    """Seeded mutations of small valid JPEG, PNG, GIF, BMP, WEBP and TIFF files: no exception escapes one
    extraction, and each file is stored or skipped with a one-line reason."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(np.add.outer(np.arange(40), np.arange(48))[..., None].repeat(3, 2).astype(np.uint8) * 3)
    seeds = {fmt: _image(img, fmt) for fmt in ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")}
    for fmt, data in seeds.items():
        (tmp_path / "d" / fmt).mkdir(parents=True)
        for k in range(50):
            (tmp_path / "d" / fmt / f"{k}.{fmt.lower()}").write_bytes(_mutate(data, rng))
    (tmp_path / "d" / "JPEG" / "valid.jpeg").write_bytes(seeds["JPEG"])
    summary = run(tmp_path / "d", tmp_path / "out", tiny, batch_size=32)
    assert summary.rows + len(summary.skipped) == 6 * 50 + 1 and summary.rows >= 1
    assert all(why and "\n" not in why for _, why in summary.skipped)
    with FeatureStore(summary.path) as s:
        assert np.isfinite(s.embeddings(np.arange(len(s.paths)))).all()


def test_imagefolder_store_keeps_linked_images_and_skips_the_rest_with_reasons(tmp_path, tiny):  # noqa: F811
    """The store of a class-folder dataset with a linked sub-folder, a second link to it, a stray file at the root
    and an empty folder: every image of the linked folder is a row, the rest skipped, the classes those with rows."""
    for i in range(3):
        write_image(tmp_path / "data" / "cats" / f"{i}.jpg", i)
        write_image(tmp_path / "linked" / f"{i}.jpg", 10 + i)
    root = tmp_path / "data"
    (root / "dogs").mkdir()
    (root / "dogs" / "sub").symlink_to(tmp_path / "linked")
    (root / "wolves").symlink_to(tmp_path / "linked")
    (root / "empty").mkdir()
    write_image(root / "stray.jpg", 20)
    summary = run(root, tmp_path / "out", tiny)
    with FeatureStore(summary.path) as s:
        assert s.class_names == ["cats", "dogs"] and sorted(set(s.labels.tolist())) == [0, 1]
        assert s.paths == [f"cats/{i}.jpg" for i in range(3)] + [f"dogs/sub/{i}.jpg" for i in range(3)]
        assert {p: why for p, why, *_ in s.skipped} == {
            "stray.jpg": "not in a class folder (an imagefolder dataset has one folder per class)",
            "wolves": "a symbolic link to a folder listed already (dogs/sub)",
            "empty": "a folder with no images, so no class"}


def tiff_with_bytes_for_offsets() -> bytes:
    """An 8 × 8 TIFF whose StripOffsets tag (273) says UNDEFINED (7) instead of LONG (4): PIL raises TypeError."""
    b = bytearray(_image(Image.new("RGB", (8, 8), (1, 2, 3)), "TIFF"))
    ifd = struct.unpack_from("<I", b, 4)[0]
    entries = [ifd + 2 + 12 * k for k in range(struct.unpack_from("<H", b, ifd)[0])]
    at = next(e for e in entries if struct.unpack_from("<H", b, e)[0] == 273)
    struct.pack_into("<H", b, at + 2, 7)
    return bytes(b)


def test_any_decoding_error_is_a_skip_reason(tmp_path, tiny):  # noqa: F811
    """An exception PIL raises beyond the usual ones (a TIFF tag of the wrong type: TypeError) is a skip reason
    naming it, not a crash of the run."""
    data = tiff_with_bytes_for_offsets()
    with pytest.raises(BadImage, match=r"^unreadable image \(TypeError: .+\)$"):
        load(data, tiny.preprocess)
    write_image(tmp_path / "data" / "a" / "0.jpg", 0)
    write_image(tmp_path / "data" / "b" / "1.jpg", 1)
    (tmp_path / "data" / "b" / "odd.tif").write_bytes(data)
    summary = run(tmp_path / "data", tmp_path / "out", tiny)
    assert summary.rows == 2 and [p for p, _ in summary.skipped] == ["b/odd.tif"]
    assert summary.skipped[0][1].startswith("unreadable image (TypeError: ")


def test_a_name_not_valid_utf8_is_skipped_not_a_stop(tmp_path, tiny, capsys):  # noqa: F811
    """One file named in Latin-1 (café.jpg from an old archive) is skipped with the reason, and listed by
    `features info --skipped`, instead of stopping the dataset's extraction."""
    for i in range(2):
        write_image(tmp_path / "data" / "a" / f"{i}.jpg", i)
        write_image(tmp_path / "data" / "b" / f"{i}.jpg", 10 + i)
    write_image(Path(os.fsdecode(os.fsencode(tmp_path / "data" / "b") + b"/caf\xe9.jpg")), 20)
    summary = run(tmp_path / "data", tmp_path / "out", tiny)
    assert summary.rows == 4 and summary.skipped == [("b/caf\\xe9.jpg", "path is not valid UTF-8 (rename it)")]
    assert run_cli(features_main, ["info", str(summary.path), "--skipped"]) == 0
    assert capsys.readouterr().out.endswith("  b/caf\\xe9.jpg: path is not valid UTF-8 (rename it)\n")
