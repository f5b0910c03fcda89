"""The environment a vLLM engine is built in (a stand-in engine records it): without the
launcher's variables (torch's rendezvous would otherwise wait 10 minutes for a store nobody
serves), on the GPU ``--device`` names, on each rank's own GPU under a launcher."""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta

import pytest
import torch

from lightreasoner.config import EvalConfig
from lightreasoner.errors import LightReasonerError
from lightreasoner.generation import vllm as generation
from lightreasoner.generation.vllm import VLLMGenerator, engine_environment, engine_gpus
from lightreasoner.models import load_tokenizer, resolve_device

TORCHRUN_RANK_1 = {
    "RANK": "1",
    "WORLD_SIZE": "2",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "GROUP_RANK": "0",
    "GROUP_WORLD_SIZE": "1",
    "ROLE_RANK": "1",
    "ROLE_NAME": "default",
    "ROLE_WORLD_SIZE": "2",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
    "TORCHELASTIC_RESTART_COUNT": "0",
    "TORCHELASTIC_MAX_RESTARTS": "0",
    "TORCHELASTIC_RUN_ID": "none",
    "TORCHELASTIC_USE_AGENT_STORE": "True",
}
"""What torch 2.13's elastic agent sets in worker 1 of ``torchrun --nproc_per_node 2``
(``LocalElasticAgent._start_workers``); accelerate launch runs the same agent."""


@pytest.fixture
def rank_1(monkeypatch):
    for k, v in TORCHRUN_RANK_1.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_process_group(port: int) -> None:
    """What vLLM's one-process executor does when it starts: a group of one at tcp://ip:port."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            timeout=timedelta(seconds=2))  # fmt: skip
    dist.destroy_process_group()


def test_under_a_launcher_a_group_of_one_waits_for_a_store_nobody_serves_without_the_engine_env(rank_1, monkeypatch):
    """The defect itself, with torch's own rendezvous: the agent's variable makes every rank a
    store client, so the engine's group of one times out; in the engine's environment it starts.
    (MASTER_PORT is the port asked for, so torch versions that honour the variable only at the
    agent's own address fail the same way.)"""
    port = free_port()
    monkeypatch.setenv("MASTER_PORT", str(port))
    with pytest.raises((RuntimeError, ValueError)):  # DistNetworkError / DistStoreError: timed out
        one_process_group(port)
    with engine_environment():
        one_process_group(port)


def test_the_engine_is_built_without_the_launchers_variables_on_this_ranks_gpu(pair, rank_1, stand_in_vllm):
    tok = load_tokenizer(str(pair[0]))
    before = dict(os.environ)
    gen = VLLMGenerator(str(pair[0]), tok, 8, "auto")
    (_, _, made) = stand_in_vllm[0]
    seen = made["env"]
    assert not [k for k in TORCHRUN_RANK_1 if k in seen]
    assert not [k for k in seen if k.startswith(("TORCHELASTIC_", "ROLE_"))]
    assert seen["CUDA_VISIBLE_DEVICES"] == "5"  # LOCAL_RANK 1 of the job's GPUs 4,5
    assert dict(os.environ) == before  # all put back once the engine has started
    gen.close()


def test_the_environment_is_put_back_when_the_engine_fails(rank_1, monkeypatch):
    before = dict(os.environ)
    with pytest.raises(OSError, match="no GPU"), engine_environment():
        assert "WORLD_SIZE" not in os.environ
        raise OSError("no GPU")
    assert dict(os.environ) == before


def test_one_process_launched_by_torchrun_also_drops_them(pair, monkeypatch, stand_in_vllm):
    """``torchrun --nproc_per_node 1``: WORLD_SIZE 1, not a launch here, but the agent's store
    variable is set all the same."""
    for k, v in TORCHRUN_RANK_1.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    VLLMGenerator(str(pair[0]), load_tokenizer(str(pair[0])), 8, "auto").close()
    seen = stand_in_vllm[0][2]["env"]
    assert "TORCHELASTIC_USE_AGENT_STORE" not in seen and "MASTER_PORT" not in seen
    assert "CUDA_VISIBLE_DEVICES" not in seen


def test_device_cuda_n_reaches_the_engine_as_gpu_n(pair, tmp_path, monkeypatch, stand_in_vllm):
    """One process: ``--device cuda:N`` is GPU N of this process for the engine too."""
    from lightreasoner.evaluation.runner import make_generator

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cfg = EvalConfig(model=str(pair[0]), out=str(tmp_path / "e"), backend="vllm", device="cuda:1")
    make_generator(cfg, "vllm")[1].close()
    assert stand_in_vllm[0][2]["cuda"] == "1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    assert engine_gpus("cuda:2", 1) == "6"
    assert engine_gpus("cuda:0", 1) is engine_gpus("cuda", 1) is engine_gpus("auto", 1) is None
    with pytest.raises(LightReasonerError, match="names 3 GPUs"):
        engine_gpus("cuda:3", 1)
    with pytest.raises(LightReasonerError, match="tensor-parallel-size"):
        engine_gpus("cuda:1", 2)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    with pytest.raises(LightReasonerError, match="CUDA_VISIBLE_DEVICES=5"):
        engine_gpus("cuda:1", 1)


def test_an_explicit_gpu_under_a_launcher_is_refused(rank_1, monkeypatch):
    """It would put every rank on that GPU, for the engine and for the transformers backend."""
    assert engine_gpus("cuda", 1) == engine_gpus("auto", 1) == "5"
    with pytest.raises(LightReasonerError, match="under a launcher"):
        engine_gpus("cuda:0", 1)
    with pytest.raises(LightReasonerError, match="under a launcher"):
        generation.check_launch(1, "cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(LightReasonerError, match="under a launcher"):
        resolve_device("cuda:0")
    assert resolve_device("cuda") == torch.device("cuda:1")


def test_an_in_process_engine_warns_that_its_memory_stays(pair, monkeypatch, stand_in_vllm, caplog):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    gen = VLLMGenerator(str(pair[0]), load_tokenizer(str(pair[0])), 8, "auto")
    with caplog.at_level(logging.WARNING):
        gen.close()
    assert "21073" in caplog.text
    gen.close()  # a second close does nothing
    assert stand_in_vllm.count(("shut down",)) == 1


@pytest.mark.parametrize("value, in_process", [("0", True), ("00", True), (" 0 ", True), ("1", False), ("yes", False)])
def test_the_in_process_switch_is_read_as_vllm_reads_it(monkeypatch, value, in_process):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", value)
    assert generation.in_process_engine() is in_process


def test_an_unpacked_compile_cache_is_one_per_rank(rank_1, monkeypatch, tmp_path):
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path))
    with engine_environment():
        assert "VLLM_CACHE_ROOT" not in os.environ or os.environ["VLLM_CACHE_ROOT"] == str(tmp_path)
    monkeypatch.setenv("VLLM_COMPILE_CACHE_SAVE_FORMAT", "unpacked")
    with engine_environment():
        assert os.environ["VLLM_CACHE_ROOT"] == str(tmp_path / "rank1")
    assert os.environ["VLLM_CACHE_ROOT"] == str(tmp_path)
