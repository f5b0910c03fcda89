"""benchmarks/gpu_check.py on a machine without CUDA: it refuses plainly, and its CPU subset
runs, labelled as such, with the GPU-only checks skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def run_check(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even where there is one
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_without_cuda_it_says_so_and_exits_non_zero():
    done = run_check()
    assert done.returncode == 2
    assert "no CUDA device is visible" in done.stderr and "--cpu-subset" in done.stderr
    assert "PASS" not in done.stdout


@pytest.mark.slow
def test_the_cpu_subset_runs_and_says_it_is_no_gpu_check(tmp_path):
    done = run_check("--cpu-subset", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CPU SUBSET (no CUDA device: this is not a GPU check)" in done.stdout
    results = {r["name"]: r for r in json.loads((tmp_path / "gpu_check.json").read_text())}
    assert {n: r["status"] for n, r in results.items()} == {
        "sdpa": "PASS",
        "sdpa-backward": "SKIP",
        "decoder": "PASS",
        "vllm-sample": "SKIP",
        "train": "PASS",
        "vllm-eval": "SKIP",
        "two-gpus": "SKIP",
    }
    assert "vLLM needs CUDA" in results["vllm-sample"]["figures"]
    assert any("12/12 batched = alone" in f for f in results["decoder"]["figures"])
    assert any("4 steps with activation checkpointing" in f for f in results["train"]["figures"])
    assert done.stdout.rstrip().endswith("3 pass, 0 warn, 0 fail, 4 skip (CPU subset)")


@pytest.mark.slow
def test_the_gpu_checks_code_runs_against_the_vllm_stand_in(tmp_path, stand_in_vllm, monkeypatch):
    """The checks that need a GPU and vLLM, run here on the CPU with the stand-in vLLM (which
    decodes with transformers and ignores adapters): their code runs to a verdict."""
    import torch

    sys.path.insert(0, str(SCRIPT.parent))
    import gpu_check

    monkeypatch.setattr(gpu_check, "free_gpu_bytes", lambda device, wait_for=None, patience_s=0.0: 8 * 2**30)
    s = gpu_check.Setup(torch.device("cpu"), tmp_path, vllm=True, prompts=4, tokens=8, eval_limit=2)
    s.expert, s.amateur = gpu_check.build_models(tmp_path / "models")
    s.problems = gpu_check.write_problems(tmp_path / "problems.jsonl", 4)
    for name in ("vllm-sample", "train", "vllm-eval", "sdpa-backward"):
        result = gpu_check.RUNNERS[name](s)
        assert result.status in ("PASS", "WARN"), (name, result.figures)
    assert ("engine", "bfloat16") in [e[:2] for e in stand_in_vllm]


@pytest.mark.slow
def test_the_two_process_checks_give_both_processes_work_and_run_on_cpu(tmp_path, monkeypatch):
    """``two-gpus`` on the CPU (gloo; as if 2 GPUs were visible, vLLM left out): its work units
    give each process some of the problems, and 2 processes give what 1 gives."""
    import torch

    sys.path.insert(0, str(SCRIPT.parent))
    import gpu_check

    s = gpu_check.Setup(torch.device("cpu"), tmp_path, vllm=False, tokens=8)
    s.expert, s.amateur = gpu_check.build_models(tmp_path / "models")
    s.problems = gpu_check.write_problems(tmp_path / "problems.jsonl")
    assert gpu_check.units(16, s.sample_group) >= 2 and gpu_check.units(s.eval_limit, s.eval_group) >= 2
    assert gpu_check.check_train(s).status == "PASS"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    result = gpu_check.check_two_gpus(s)
    assert result.status == "PASS", (result.figures, (tmp_path / "cli.log").read_text()[-3000:])
    assert any("global batch 4 and 4" in f for f in result.figures)
