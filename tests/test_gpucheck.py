"""The GPU acceptance check, as far as a machine without a GPU can run it: each check's code on the CPU."""
import subprocess

import numpy as np
import pytest
import torch

from benchmarks import gpucheck
from benchmarks.__main__ import main
from extract import gpudecode, pipeline
from features.cli import run_cli


def test_without_a_gpu_it_says_so_in_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    assert run_cli(main, ["gpu-check"]) == 2
    out, err = capsys.readouterr()
    assert not out and err.count("\n") == 1 and "gpu-check: no CUDA GPU visible to torch" in err


def test_rank_lines_give_each_ranks_device():
    stdout = ("rank 1/2: runs/x/shards/a.shard-1-of-2.h5: 8 images stored (8 embedded, 0 reused), 0 skipped; "
              "1.0s, 8.0 img/s on cuda:1\nrank 0/2: runs/x/shards/a.shard-0-of-2.h5: 8 images stored "
              "(8 embedded, 0 reused), 0 skipped; 1.0s, 8.0 img/s on cuda:0\nruns/x/a.h5: 16 images stored\n")
    assert gpucheck.rank_devices(stdout) == {0: "cuda:0", 1: "cuda:1"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return sorted(gpucheck.write_images(tmp_path_factory.mktemp("gpucheck") / "small", 6, (120, 90)).iterdir())


def test_the_cosine_and_amp_checks_pass_cpu_against_cpu(photos):
    checks = gpucheck.check_matches_cpu(photos, device="cpu")
    assert [c.name for c in checks] == [f"{kind} {name}" for name in (gpucheck.CONVNET, gpucheck.VIT)
                                        for kind in ("cuda-vs-cpu", "amp float16", "amp bfloat16")]
    assert all(c.ok for c in checks), [c.line() for c in checks]


def test_the_gpu_decode_check_runs_its_code_on_cpu(photos):
    check = gpucheck.check_gpu_decode(photos, device="cpu")
    assert check.name == "gpu-decode" and check.ok, check.line()


def test_the_compile_check_catches_a_warm_up_unlike_the_batches(photos, monkeypatch):
    """Passes as featbench warms up; fails when the warm-up's input has another size (a recompile follows)."""
    compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compile(model, backend="eager", dynamic=False))
    assert gpucheck.check_compile(photos[:5], device="cpu", batch_size=2).ok
    real = pipeline.inference_model

    def warm_up_smaller(model, device, example, optimize, compile, warm_up, **kw):
        return real(model, device, example, optimize, compile, lambda net, x: warm_up(net, x[..., 32:, 32:]), **kw)
    monkeypatch.setattr(pipeline, "inference_model", warm_up_smaller)
    check = gpucheck.check_compile(photos[:5], device="cpu", batch_size=2)
    assert not check.ok and "not compiled (RecompileError" in check.detail


def test_the_finetune_check_runs_one_epoch(tmp_path):
    check = gpucheck.check_finetune(gpucheck.write_images(tmp_path / "tinted", 120, (64, 48)), device="cpu", batch_size=8)
    assert check.name == "finetune" and "after 1 epoch (amp False)" in check.detail and check.ok, check.line()


def test_the_gpu_decode_check_counts_the_images_the_device_decoded(photos):
    check = gpucheck.check_gpu_decode(photos, device="cpu", batch_size=4)  # 2 batches
    assert check.detail.startswith(f"nvJPEG decoded {len(photos)} of {len(photos)} images"), check.line()


def test_the_gpu_decode_check_fails_when_nvjpeg_fails_or_the_cpu_fallback_is_taken(photos, monkeypatch):
    """A device that cannot decode: the direct call's error is the line; one that decodes a single file but
    not a batch: the run falls back to the CPU (same embeddings), and the count makes it a FAIL."""
    real = gpudecode.decode_jpeg

    def fails(jpegs, **kw):
        raise RuntimeError("nvjpeg: no decoder")
    monkeypatch.setattr(gpudecode, "decode_jpeg", fails)
    check = gpucheck.check_gpu_decode(photos, device="cpu")
    assert not check.ok and check.detail == f"nvJPEG on {photos[0].name}: RuntimeError: nvjpeg: no decoder"

    def fails_on_batches(jpegs, **kw):
        return fails(jpegs) if len(jpegs) > 1 else real(jpegs, **kw)
    monkeypatch.setattr(gpudecode, "decode_jpeg", fails_on_batches)
    check = gpucheck.check_gpu_decode(photos, device="cpu")
    assert not check.ok and check.detail.startswith(f"nvJPEG decoded 0 of {len(photos)} images"), check.line()
    assert "min cosine 1.00000" in check.detail  # what passed before the count


def test_a_crash_fails_only_its_own_line(photos, monkeypatch):
    def embed(name, files, device, **options):
        if options.get("amp_dtype") == "float16" and name == gpucheck.CONVNET:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return np.ones((len(files), 4), np.float32)
    monkeypatch.setattr(gpucheck, "embed", embed)
    checks = gpucheck.check_matches_cpu(photos, device="cpu")
    assert [c.ok for c in checks] == [True, False, True, True, True, True]
    assert checks[1].line() == (f"FAIL  amp float16 {gpucheck.CONVNET}: RuntimeError: CUDA error: an illegal memory "
                                "access was encountered")


def test_torchrun_expects_rank_r_on_gpu_r_modulo_the_gpus(tmp_path, monkeypatch):
    """One GPU: 2 ranks, both on cuda:0; two: one each. Without torch.distributed, a NOTE line."""
    runs = []

    def torchrun(folder, out, ranks, devices=("cuda:0", "cuda:0")):
        runs.append(ranks)
        lines = "".join(f"rank {r}/{ranks}: x.h5: 8 images stored; 1.0s, 8.0 img/s on {d}\n" for r, d in enumerate(devices))
        return subprocess.CompletedProcess([], 0, lines, "")
    monkeypatch.setattr(gpucheck, "torchrun", torchrun)
    checks = gpucheck.check_torchrun(tmp_path, gpus=1)
    assert runs == [2, 2] and all(c.ok for c in checks), [c.line() for c in checks]
    assert checks[0].line() == "PASS  torchrun ranks' GPUs: 2 ranks on cuda:0, cuda:0 (expected cuda:0, cuda:0)"
    assert not gpucheck.check_torchrun(tmp_path, gpus=2)[0].ok  # 2 GPUs, both ranks on cuda:0
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    assert [c.ok for c in gpucheck.check_torchrun(tmp_path, gpus=1)] == [None]


def test_throughput_sets_end_to_end_against_the_slower_of_model_and_loader(tmp_path):
    checks = gpucheck.check_throughput(tmp_path, device="cpu", name="test_resnet", batch_size=4, batches=3, distinct=4)
    assert [c.name for c in checks] == ["throughput", "throughput --gpu-decode"], [c.line() for c in checks]
    steady = "from 12 and 24 images" in checks[0].detail and " binds); end to end / " in checks[0].detail
    assert checks[0].ok is not None and (steady or "too noisy to judge" in checks[0].detail), checks[0].detail
    assert checks[1].ok is None and checks[1].detail.endswith("; not judged)")
    linked = sorted((tmp_path / "linked-12").iterdir()) + sorted((tmp_path / "linked-24").iterdir())
    assert len(linked) == 36 and {f.stat().st_nlink for f in linked} == {10}  # 9 names and the written one


@pytest.mark.parametrize("fixed_seconds, per_image, verdict", [
    (2.0, 1 / 100, "PASS  throughput: resnet10t batch 4, steady rate from 12 and 24 images: end to end 100 img/s, "
                   "model-only 1000, loader-only 50 (loader-only binds); end to end / loader-only 2.00 (>= 0.8). "
                   "Whole runs of 24: end to end 11 img/s, loader-only 16; end to end's fixed cost 2.0 s a run"),
    (2.0, 0.0, "FAIL  throughput: twice the images took no longer (end to end 2.00 s then 2.00 s, loader-only 1.24 s "
               "then 1.48 s): too noisy to judge, re-run")])
def test_throughput_judges_the_steady_rate_not_the_fixed_cost(tmp_path, monkeypatch, fixed_seconds, per_image,
                                                               verdict):
    """Runs of N and 2N images: fixed costs cancel; twice the images in no more time is no verdict."""
    from benchmarks import speed

    def featbench(backbone, folder, device, batch_size, workers, gpu_decode=False, *, scratch):
        store = tmp_path / "runs" / "run" / "store.h5"
        store.parent.mkdir(parents=True, exist_ok=True)
        images = len(list(folder.iterdir()))
        return images / (fixed_seconds + images * per_image), store, str(folder)
    monkeypatch.setattr(speed, "featbench", featbench)
    monkeypatch.setattr(speed, "loader_only", lambda b, folder, *a: (n := len(list(folder.iterdir()))) / (1 + n / 50))
    monkeypatch.setattr(speed, "model_only", lambda *a: 1000.0)
    checks = gpucheck.check_throughput(tmp_path, device="cpu", name="resnet10t", batch_size=4, batches=3, distinct=4)
    assert checks[0].line() == verdict


def test_only_picks_checks_in_their_order_and_names_the_known_ones(capsys):
    assert gpucheck.chosen("throughput, compile") == ["compile", "throughput"]
    assert gpucheck.chosen(None) == list(gpucheck.STEPS)
    assert run_cli(main, ["gpu-check", "--only", "compile,nvjpeg"]) == 2
    assert "unknown check 'nvjpeg'; use cuda-vs-cpu, gpu-decode, compile" in capsys.readouterr().err


def test_main_prints_the_machine_then_a_line_per_check_of_only(monkeypatch, capsys):
    """The whole run, its GPU faked: the environment line, a crashed check's FAIL line, a NOTE not counted."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "Fake GPU")

    def crashes(files):
        raise RuntimeError("CUDA error: no kernel image is available")
    monkeypatch.setattr(gpucheck, "check_compile", crashes)
    monkeypatch.setattr(gpucheck, "check_throughput", lambda root: [gpucheck.Check("throughput", True, "fast"),
                                                                     gpucheck.Check("throughput x", None, "info")])
    assert run_cli(main, ["gpu-check", "--only", "throughput,compile"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("gpu-check on Fake GPU (1 visible), torch ") and "torchvision " in out[0]
    assert "timm " in out[0] and " CPU cores usable of " in out[0] and "/dev/shm" in out[0]
    assert [line.rsplit(" (", 1)[0] for line in out[1:4]] == [
        "FAIL  compile: RuntimeError: CUDA error: no kernel image is available", "PASS  throughput: fast",
        "NOTE  throughput x: info"]
    assert out[4].startswith("1 FAILED in ")
