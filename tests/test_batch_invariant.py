"""vLLM's batch-invariant mode (``--batch-invariant``) reaches the engine, or says why not."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

from lightreasoner.config import EvalConfig, SampleConfig
from lightreasoner.errors import LightReasonerError
from lightreasoner.evaluation.runner import evaluate
from lightreasoner.sampling import sample


def _cfg(pair, data: Path, out: Path, **kw) -> SampleConfig:
    base = dict(expert=str(pair[0]), amateur=str(pair[1]), data=str(data), out=str(out), max_new_tokens=8)
    return SampleConfig(**{**base, "dtype": "float32", "max_problems": 2, "beta": -float("inf"), **kw})


def test_batch_invariant_reaches_vllm_or_says_why_not(pair, problems_file, tmp_path, stand_in_vllm, monkeypatch):
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "0")  # restored after the test
    with pytest.raises(LightReasonerError, match="has no batch-invariant mode"):  # the stand-in has no vllm.envs
        sample(_cfg(pair, problems_file, tmp_path / "a.jsonl", backend="vllm", batch_invariant=True), False)
    with pytest.raises(LightReasonerError, match="option of the vLLM backend"):
        sample(_cfg(pair, problems_file, tmp_path / "b.jsonl", backend="hf", batch_invariant=True), False)
    ev = EvalConfig(model=str(pair[0]), out=str(tmp_path / "ev"), backend="hf", batch_invariant=True)
    with pytest.raises(LightReasonerError, match="option of the vLLM backend"):
        evaluate(ev, show_progress=False)
    envs = types.ModuleType("vllm.envs")
    envs.environment_variables = {"VLLM_BATCH_INVARIANT": None}
    envs.__getattr__ = lambda name: os.environ.get(name) == "1"  # as vllm.envs reads its settings
    monkeypatch.setitem(sys.modules, "vllm.envs", envs)
    summary = sample(_cfg(pair, problems_file, tmp_path / "c.jsonl", backend="vllm", batch_invariant=True), False)
    assert os.environ["VLLM_BATCH_INVARIANT"] == "1" and summary["fingerprint"]["batch_invariant"] is True
    assert [e[0] for e in stand_in_vllm][:2] == ["engine", "generate"]
