from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LIGHTREASONER_ESTIMATE", "0")  # the run's time estimate: on only where a test asks for it
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # pytest -n N: share the cores among the N workers
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import tiny  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def kill_env(after: int, stage: str | None = None, rank: int | None = None) -> dict[str, str]:
    """Environment for a subprocess that SIGKILLs itself right after its ``after``-th commit
    (of ``stage``, on rank ``rank``): see :mod:`lightreasoner.faults`."""
    env = {"LIGHTREASONER_KILL_AFTER": f"{stage}:{after}" if stage else str(after)}
    return env | ({"LIGHTREASONER_KILL_RANK": str(rank)} if rank is not None else {})


@pytest.fixture(scope="session")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """(expert_dir, amateur_dir): tiny random Qwen2 / Llama models sharing a tokenizer."""
    return tiny.make_pair(tmp_path_factory.mktemp("pair"))


def gsm8k_questions(n: int) -> list[str]:
    path = SHARED_DATA / "gsm8k" / "train.jsonl"
    if path.exists():
        with path.open() as f:
            return [json.loads(next(f))["question"] for _ in range(n)]
    return [tiny.CORPUS[i % len(tiny.CORPUS)] + f" ({i})" for i in range(n)]


@pytest.fixture(scope="session")
def problems_file(tmp_path_factory) -> Path:
    """Eight GSM8K-style problems in the GSM8K layout (question/answer)."""
    path = tmp_path_factory.mktemp("data") / "problems.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": "#### 1"}) + "\n" for q in gsm8k_questions(8)))
    return path


@pytest.fixture(scope="session")
def other_tokenizer_model(tmp_path_factory) -> Path:
    """A model whose tokenizer was trained on other text: ids mean other tokens."""
    d = tmp_path_factory.mktemp("other")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        ["zebra yak xylophone " * 50],
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<|im_end|>", "<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(d)
    tiny.make_model(d, 300, "llama", seed=3)
    return d


@pytest.fixture
def stand_in_vllm(monkeypatch) -> list:
    """vLLM is not installed here: a stand-in ``vllm`` module whose engine decodes greedily
    with transformers (one prompt at a time) and answers the way ``LLM.generate`` does (the
    stop id kept in ``token_ids``). Returns the list of what it was asked: ``("engine",
    dtype, engine kwargs + the CUDA_VISIBLE_DEVICES it saw + "env": the whole environment it
    was built in)``, ``("generate", n prompts)``, ``("shut down",)``."""
    import types

    import torch

    from lightreasoner.generation import vllm as generation
    from lightreasoner.generation.decoder import greedy_decode
    from lightreasoner.models import load_model, load_tokenizer

    events: list = []

    class LLM:
        def __init__(self, model, dtype="auto", trust_remote_code=False, **kw):
            seen = {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "env": dict(os.environ)}
            events.append(("engine", dtype, {**kw, **seen}))
            self.model = load_model(model, torch.float32 if dtype == "auto" else getattr(torch, dtype))
            self.tok = load_tokenizer(model)
            self.llm_engine = types.SimpleNamespace(engine_core=types.SimpleNamespace(shutdown=self.stop))

        def get_tokenizer(self):
            return self.tok

        def stop(self):
            events.append(("shut down",))

        def generate(self, prompts, params, lora_request=None, use_tqdm=True):
            events.append(("generate", len(prompts)))
            outs = []
            for p in prompts:
                ids = p["prompt_token_ids"] if isinstance(p, dict) else self.tok(p)["input_ids"]
                comp = greedy_decode(self.model, [ids], params["max_tokens"], params["stop_token_ids"], 0, 1)[0]
                reason = "stop" if comp.finished else "length"
                out = types.SimpleNamespace(token_ids=tuple(comp.ids), text="", finish_reason=reason, stop_reason=None)
                outs.append(types.SimpleNamespace(outputs=[out]))
            return outs

    fake = types.ModuleType("vllm")
    fake.LLM, fake.SamplingParams = LLM, lambda **kw: kw
    lora = types.ModuleType("vllm.lora.request")
    lora.LoRARequest = lambda *a: a
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.lora", types.ModuleType("vllm.lora"))
    monkeypatch.setitem(sys.modules, "vllm.lora.request", lora)
    monkeypatch.setattr(generation, "vllm_available", lambda: True)
    return events
