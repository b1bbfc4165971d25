"""The fast exact model form: static "same" padding and the frozen CPU graph give the eager embeddings."""
import pytest
import torch
from timm.layers import Conv2dSame

from extract.backbones import create_backbone
from extract.inference import inference_model, static_same_padding


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
