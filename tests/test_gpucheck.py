"""The GPU acceptance check, as far as a machine without a GPU can run it: each check's code on the CPU."""
import pytest
import torch

from benchmarks import gpucheck
from benchmarks.__main__ import main
from extract import pipeline
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
