"""`benchmarks speed`'s code paths that first run on a GPU, as far as the CPU can check them."""
import contextlib
import io

import torch

from benchmarks import speed
from benchmarks.__main__ import main
from extract.backbones import create_backbone
from features.cli import run_cli


def test_model_only_compiles_once(monkeypatch):
    """The timed batches are inference tensors, as the warm-up's: dynamo's recompile would be an error, which
    the compiled model's fallback reports as "not compiled"."""
    import torch._dynamo
    compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compile(model, backend="eager", dynamic=False))
    torch._dynamo.reset()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), torch._dynamo.config.patch(error_on_recompile=True):
        rate = speed.model_only(create_backbone("test_resnet", random_init=True), torch.device("cpu"), 2, 4,
                                compile=True)
    assert rate > 0 and "not compiled" not in err.getvalue(), err.getvalue()


def test_reduced_precisions_are_skipped_off_cpu_and_memory_runs_on_cpu(monkeypatch, capsys, tmp_path):
    benched, measured = [], []
    monkeypatch.setattr(speed.tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(speed, "pick_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(speed, "matmul_peak", lambda device: 1.0)
    monkeypatch.setattr(speed, "bench", lambda *a: benched.append(a[-1]) or {})
    monkeypatch.setattr(speed, "print_row", lambda r: None)
    monkeypatch.setattr(speed, "run_measured", lambda module, args: measured.append(args) or (0, 1.0, 1.0))
    monkeypatch.setattr(speed, "synthetic_folder", lambda n, root: root)
    assert run_cli(main, ["speed", "--sections", "throughput,memory", "--backbone", "test_resnet"]) == 0
    out = capsys.readouterr().out
    assert benched == [[]] and "--precision bf16 int8: skipped on cuda (reduced precisions run on CPU only" in out
    assert len(measured) == 2 * 3 and all(args[-2:] == ["--device", "cpu"] for args in measured)
    assert not list(tmp_path.iterdir())  # the memory section's images and stores: deleted
