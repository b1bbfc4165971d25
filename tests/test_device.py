"""Device choice without a GPU: a torchrun rank's GPU, the default batch size, workers and the autocast type."""
import pytest
import torch

from extract import device
from extract.device import amp_dtype, autocast, claim, default_batch_size, rank_device
from features.errors import FeatbenchError


@pytest.mark.parametrize("name, env, gpus, expected", [
    ("cuda", {"LOCAL_RANK": "3"}, 4, "cuda:3"),
    ("auto", {"LOCAL_RANK": "3"}, 4, "cuda:3"),
    ("cuda", {"LOCAL_RANK": "5"}, 4, "cuda:1"),  # more ranks than GPUs: they share, round robin
    ("cuda", {"LOCAL_RANK": "0"}, 1, "cuda:0"),
    ("cuda:2", {"LOCAL_RANK": "3"}, 4, "cuda:2"),  # an explicit GPU is the user's choice
    ("cpu", {"LOCAL_RANK": "3"}, 4, "cpu"),
    ("mps", {"LOCAL_RANK": "1"}, 0, "mps"),
    ("auto", {"LOCAL_RANK": "3"}, 0, "auto"),  # no CUDA: auto picks MPS or CPU as in one process
    ("cuda", {}, 4, "cuda"),  # not under torchrun
    ("auto", {"WORLD_SIZE": "1"}, 4, "auto"),
])
def test_each_torchrun_rank_gets_its_own_gpu(name, env, gpus, expected):
    assert rank_device(name, env, gpus) == expected


def test_claiming_a_cpu_touches_no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: pytest.fail("set_device on a CPU run"))
    claim(torch.device("cpu"))


def test_default_batch_size_is_larger_on_a_gpu():
    assert default_batch_size(torch.device("cpu")) == 32 and default_batch_size(torch.device("cuda", 0)) == 256


def test_amp_type_defaults_to_bf16_where_the_gpu_has_it(monkeypatch):
    assert amp_dtype("float16") == "float16" and amp_dtype("bfloat16") == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert amp_dtype() == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert amp_dtype() == "float16"
    with pytest.raises(FeatbenchError, match="unknown --amp-dtype 'int8'; use float16 or bfloat16"):
        amp_dtype("int8")


def test_autocast_is_off_on_cpu_whatever_the_type():
    with autocast(torch.device("cpu"), True, "bfloat16"):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("cpus, gpu, cpu", [(1, 1, 1), (2, 1, 1), (16, 15, 8), (96, 32, 48)])
def test_default_workers_leave_the_gpu_feeder_a_core(monkeypatch, cpus, gpu, cpu):
    monkeypatch.setattr(device, "cores", lambda: cpus)
    assert device.default_workers(torch.device("cuda")) == gpu
    assert device.default_workers(torch.device("cpu")) == cpu
