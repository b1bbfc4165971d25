"""The fast exact model form: static "same" padding and the frozen CPU graph give the eager embeddings;
malloc keeps freed activation memory instead of faulting it back in."""
import platform
import subprocess
import sys

import pytest
import torch
from timm.layers import Conv2dSame

from extract.backbones import create_backbone
from extract.inference import _Flat, inference_model, static_same_padding


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_static_same_padding_is_exact_at_any_input_size(name):
    bb = create_backbone(name, random_init=True)
    for size in (224, 225, 97):
        x = torch.randint(0, 255, (2, 3, size, size), dtype=torch.uint8)
        with torch.inference_mode():
            ref = bb.model(x)
            static = static_same_padding(bb.model, x[:1])
            assert torch.equal(static(x), ref)
        assert not any(isinstance(m, Conv2dSame) for m in static.modules())
    left = [m for m in bb.model.modules() if isinstance(m, Conv2dSame)]
    assert len(left) == 5 and not any(m._forward_pre_hooks for m in left)  # the caller's model untouched


def test_models_without_same_padding_are_returned_as_they_are():
    bb = create_backbone("mobilenet_v2", random_init=True)
    assert static_same_padding(bb.model, torch.zeros(1, 3, 64, 64, dtype=torch.uint8)) is bb.model


def test_frozen_cpu_graph_has_no_padding_copies_and_same_embeddings():
    bb = create_backbone("efficientnet_lite0", random_init=True)
    x = torch.randint(0, 255, (4, 3, 224, 224), dtype=torch.uint8)
    fast = inference_model(bb.model, torch.device("cpu"), x[:2])
    graph = str(fast.graph)
    assert "aten::conv" in graph or "prepacked" in graph or "mkldnn" in graph
    assert "pad" not in graph.replace("padding", "")
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), bb.model(x), atol=1e-4, rtol=1e-4)


def test_tracing_builds_one_module_and_records_the_same_ops():
    """The CPU graph is traced through `_Flat`: one ScriptModule instead of one per submodule (the set-up
    cost), and after freezing the same ops, with the same embeddings, as tracing the module tree."""
    bb = create_backbone("mobilenet_v2", random_init=True)
    x = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        flat = torch.jit.trace(_Flat(bb.model), x, check_trace=False)
        nested = torch.jit.trace(bb.model, x, check_trace=False)
        assert len(list(flat.modules())) == 1 < len(list(nested.modules()))
        flat, nested = torch.jit.freeze(flat), torch.jit.freeze(nested)
        assert [n.kind() for n in flat.graph.nodes()] == [n.kind() for n in nested.graph.nodes()]
        torch.testing.assert_close(flat(x), bb.model(x), atol=1e-5, rtol=1e-5)


def test_models_holding_torchscript_are_frozen_too(capsys):
    """TorchScript parts (inception_v3_fid's network) must stay registered submodules to be traced."""
    model = torch.nn.Sequential(torch.jit.script(torch.nn.Conv2d(3, 4, 3)), torch.nn.Flatten()).eval()
    x = torch.rand(2, 3, 8, 8)
    fast = inference_model(model, torch.device("cpu"), x)
    assert isinstance(fast, torch.jit.ScriptModule) and "running eager" not in capsys.readouterr().err
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x))


FAULTS = """import resource, sys, torch
from extract.inference import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
conv = torch.nn.Conv2d(3, 32, 3, padding=1)
x = torch.randn(8, 3, 224, 224)
with torch.inference_mode():
    torch.relu(conv(x))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.relu(conv(x))  # 51 MiB of activations, freed every pass
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a setting of glibc's malloc")
def test_freed_activation_memory_is_reused_not_faulted_back():
    def faults(mode):
        return int(subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True,
                                  check=True).stdout.split()[-1])
    default, kept = faults("default"), faults("keep")
    assert kept * 5 < default, (kept, default)  # measured: 12,544 against 376,350 minor page faults
