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

import tiny  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


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
