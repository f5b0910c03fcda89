"""A generation backend is one module and one registry entry: a toy backend registered here
serves `eval` and `sample` by name, `auto` passes it over when it has an obstacle, and what
it decodes is what the hf backend decodes (it wraps the same decoder)."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA
from test_sampling import _cfg

from lightreasoner import generation
from lightreasoner.cli import main
from lightreasoner.errors import LightReasonerError
from lightreasoner.generation import Backend, Request, choose_backend
from lightreasoner.generation.hf import open_hf
from lightreasoner.sampling import sample


@pytest.fixture
def toy(monkeypatch):
    """A backend named ``toy``: the hf generator behind an interface that batches on its own
    (every unit in one call) and keeps no logits, registered first so ``auto`` tries it first.
    Returns the calls it saw."""
    calls: list = []

    class ToyGenerator:
        def __init__(self, req: Request):
            calls.append(("open", req.role, req.max_new_tokens))
            self.inner = open_hf(req)

        def generate(self, prompts, on_result=None):
            calls.append(("generate", len(prompts)))
            return self.inner.generate(prompts, on_result)

        def generate_ids(self, prompt_ids, progress=False, on_result=None):
            calls.append(("generate_ids", len(prompt_ids)))
            return self.inner.generate_ids(prompt_ids, progress, on_result)

        def close(self):
            calls.append(("close",))

    toy = Backend(
        name="toy",
        open=ToyGenerator,
        obstacles=lambda req: ["--contrastive-amateur"] if req.contrastive else [],
        fingerprint=lambda req: {"toy": 1},
        together=True,
        step_logits=False,
    )
    monkeypatch.setattr(generation, "BACKENDS", {"toy": toy, **generation.BACKENDS})
    return calls


@pytest.mark.slow
def test_a_registered_backend_evaluates_as_hf_does(pair, tmp_path, toy):
    args = ["eval", "-q", "--model", str(pair[0]), "--benchmarks", "gsm8k", "--limit", "5"]
    args += ["--max-new-tokens", "12", "--data-dir", str(SHARED_DATA)]
    assert main([*args, "--backend", "hf", "--group-size", "5", "--out", str(tmp_path / "hf")]) == 0
    assert main([*args, "--backend", "toy", "--group-size", "2", "--out", str(tmp_path / "toy")]) == 0
    # together: the units of 2, 2 and 1 problems go in one call (the one batch hf decodes with a
    # unit of 5, so the same rounding), then the generator closes
    assert toy == [("open", "model", 12), ("generate", 5), ("close",)]
    rows = [[json.loads(x) for x in (tmp_path / b / "gsm8k.jsonl").read_text().splitlines()] for b in ("hf", "toy")]
    assert [(r["id"], r["completion"], r["tokens"]) for r in rows[0]] == [
        (r["id"], r["completion"], r["tokens"]) for r in rows[1]
    ]
    fp = json.loads((tmp_path / "toy" / "fingerprint.json").read_text())
    assert fp["backend"] == "toy" and fp["toy"] == 1


@pytest.mark.slow
def test_a_backend_without_step_logits_samples_teacher_forced(pair, problems_file, tmp_path, toy):
    kw = dict(max_problems=3, score_batch_size=1)
    hf = sample(_cfg(pair, problems_file, tmp_path / "hf.jsonl", expert_scoring="teacher-forced", **kw), False)
    got = sample(_cfg(pair, problems_file, tmp_path / "toy.jsonl", backend="toy", **kw), False)
    assert toy[0] == ("open", "expert", got["config"]["max_new_tokens"]) and ("generate_ids", 3) in toy
    assert got["scoring"] == "teacher-forced" and got["fingerprint"]["backend"] == "toy"
    assert got["selected_steps"] == hf["selected_steps"]
    assert (tmp_path / "toy.jsonl").read_text() == (tmp_path / "hf.jsonl").read_text()


def test_auto_takes_the_first_backend_without_an_obstacle(pair, toy):
    plain = Request(str(pair[0]), None, 8)
    assert choose_backend("auto", plain) == "toy"
    assert choose_backend("auto", Request(str(pair[0]), None, 8, contrastive="a")) in ("vllm", "hf")
    with pytest.raises(LightReasonerError, match="--backend toy: --contrastive-amateur"):
        choose_backend("toy", Request(str(pair[0]), None, 8, contrastive="a"))
    with pytest.raises(LightReasonerError, match="choose auto, toy, vllm, hf"):
        choose_backend("nope", plain)
