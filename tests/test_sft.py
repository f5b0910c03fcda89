"""The rejection-sampling SFT baseline: gold answers, rejection, the masked loss, resume."""

import json
import os
import random
import signal
import subprocess
import sys

import pytest
import torch
from conftest import SHARED_DATA, kill_env

from lightreasoner.config import SFTConfig
from lightreasoner.data import Problem, load_problems
from lightreasoner.errors import LightReasonerError
from lightreasoner.evaluation.benchmarks import grade_completion
from lightreasoner.models import load_model, load_tokenizer
from lightreasoner.sft import SFTCollator, gold_answer, keep_solutions, sft, sft_examples


def test_gold_answers_per_source(tmp_path):
    if (SHARED_DATA / "gsm8k" / "train.jsonl").exists():
        gsm = load_problems(str(SHARED_DATA / "gsm8k" / "train.jsonl"), max_problems=2)
        assert [gold_answer(p, "answer") for p in gsm] == ["72", "10"]
    gym = load_problems("reasoning-gym:gsm_symbolic", max_problems=3, seed=5)
    assert all(gold_answer(p, "answer") == p.answer.strip() for p in gym)
    custom = tmp_path / "c.jsonl"
    custom.write_text('{"q": "1+1", "final": 2}\n\n{"q": "2+2", "final": ""}\n')
    probs = load_problems(str(custom), "q", "final")
    assert gold_answer(probs[0], "final") == "2"
    with pytest.raises(LightReasonerError, match=rf"{custom.name}:3: no gold answer in field 'final'"):
        gold_answer(probs[1], "final")
    with pytest.raises(LightReasonerError, match="problem 7"):
        gold_answer(Problem(7, "q", None), "answer")


def test_rejection_keeps_exactly_what_the_grader_accepts():
    completions = [
        "48/2 = 24, so 48 + 24 = \\boxed{72}",
        "I think it is \\boxed{71}",
        "48/2 = 24,  so 48 + 24 = \\boxed{72}",  # the first again, up to whitespace
        "Half of 48 is 24; in total \\boxed{72}.",
        "The total is 72",  # no box: the grader reads the last number
        "Total: \\boxed{72.0}",
    ]
    rows = []
    for j, c in enumerate(completions):
        pred, ok = grade_completion("math", c, "72")
        rows.append({"sample_index": j, "completion": c, "extracted": pred, "correct": ok})
    assert [r["correct"] for r in rows] == [True, False, True, True, True, True]
    keep_solutions(rows, keep=3)
    assert [r["kept"] for r in rows] == [True, False, False, True, True, False]
    keep_solutions(rows, keep=1)
    assert [r["kept"] for r in rows] == [True, False, False, False, False, False]


def test_collator_masks_the_prompt_and_the_loss_is_the_hand_computed_one(pair):
    model = load_model(str(pair[0]))
    tok = load_tokenizer(str(pair[0]))
    rows = [
        {"question": "1+1?", "completion": "two is 2", "kept": True, "cut_off": False},
        {"question": "What is 3 times 4?", "completion": "12", "kept": True, "cut_off": True},
        {"question": "no", "completion": "x", "kept": False, "cut_off": False},
    ]
    examples = sft_examples(rows, tok, "sys", end_id=7)
    assert len(examples) == 2 and examples[0].input_ids[-1] == 7 and examples[1].input_ids[-1] != 7
    batch = SFTCollator(tok.pad_token_id)([(0, examples[0]), (1, examples[1])])
    for b, ex in enumerate(examples):
        labels = batch["labels"][b].tolist()
        assert labels[: ex.prompt_len] == [-100] * ex.prompt_len
        assert labels[ex.prompt_len : len(ex.input_ids)] == ex.input_ids[ex.prompt_len :]
        assert set(labels[len(ex.input_ids) :]) <= {-100}
    with torch.no_grad():
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        terms = []
        for ex in examples:
            logp = torch.log_softmax(model(input_ids=torch.tensor([ex.input_ids])).logits[0].float(), -1)
            terms += [-logp[t - 1, ex.input_ids[t]] for t in range(ex.prompt_len, len(ex.input_ids))]
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-4)


# a tiny random model rarely answers right: in the end-to-end tests a solution counts as
# correct when its text has an even length (the grader itself is tested above and in test_grading)
FAKE_GRADER = (
    "import lightreasoner.sft as s; s.grade_completion = lambda kind, text, gold: (text[-4:], len(text) % 2 == 0)"
)


def sft_cli_args(pair, data, out):
    return [
        "sft", "-q", "--model", str(pair[0]), "--data", str(data), "--output-dir", str(out),
        "--samples-per-problem", "3", "--max-new-tokens", "16", "--sample-batch-size", "4", "--group-size", "1",
        "--max-steps", "4", "--batch-size", "2", "--grad-accum", "1", "--save-steps", "1", "--lora-dropout", "0",
    ]  # fmt: skip


def run_sft(args, env: dict | None = None) -> subprocess.Popen:
    code = f"{FAKE_GRADER}; import sys; from lightreasoner.cli import main; sys.exit(main({args!r}))"
    env = {**os.environ, **(env or {})}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def adapter_weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def sft_full(pair, problems_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "full"
    proc = run_sft(sft_cli_args(pair, problems_file, out))
    log = proc.communicate()[0].decode()
    assert proc.returncode == 0, log
    return out


@pytest.mark.slow
def test_sft_end_to_end(sft_full):
    rows = [json.loads(x) for x in (sft_full / "solutions.jsonl").read_text().splitlines()]
    assert [(r["problem_index"], r["sample_index"]) for r in rows] == [(p, j) for p in range(8) for j in range(3)]
    for r in rows:
        assert {"question", "completion", "extracted", "gold", "correct", "kept"} <= r.keys()
        assert r["correct"] == (len(r["completion"]) % 2 == 0)
        assert r["gold"] == "1"
    summary = json.loads((sft_full / "sft_summary.json").read_text())
    assert summary["samples"] == 24 and summary["problems_attempted"] == 8
    assert summary["correct"] == sum(r["correct"] for r in rows)
    assert summary["kept_solutions"] == sum(r["kept"] for r in rows) > 0
    assert summary["sampled_problems"] == len({r["problem_index"] for r in rows if r["kept"]})
    assert summary["optimizer_steps"] == 4 and summary["tuned_tokens"] > 0
    assert summary["total_seconds"] == pytest.approx(summary["sampling_seconds"] + summary["fine_tuning_seconds"])
    assert (sft_full / "adapter_model.safetensors").exists() and (sft_full / "adapter_config.json").exists()


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.slow
def test_sft_killed_at_a_random_moment_resumes_to_the_same_result(pair, problems_file, sft_full, tmp_path, seed):
    out = tmp_path / "out"
    stage, after = random.Random(seed).choice([("sft", 1), ("sft", 5), ("train", 2), ("train", 3)])
    killed = run_sft(sft_cli_args(pair, problems_file, out), env=kill_env(after, stage))
    assert killed.communicate() and killed.returncode == -signal.SIGKILL
    resumed = run_sft(sft_cli_args(pair, problems_file, out))
    log = resumed.communicate()[0].decode()
    assert resumed.returncode == 0, log
    assert (out / "solutions.jsonl").read_text() == (sft_full / "solutions.jsonl").read_text()
    a, b = adapter_weights(sft_full), adapter_weights(out)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    sa, sb = (json.loads((d / "sft_summary.json").read_text()) for d in (sft_full, out))
    for key in ("samples", "correct", "kept_solutions", "sampled_problems", "tuned_tokens", "optimizer_steps"):
        assert sa[key] == sb[key]


def test_sft_refuses_problems_without_gold_and_writes_nothing(pair, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "1+1", "answer": "#### 2"}\n{"question": "2+2"}\n')
    out = tmp_path / "out"
    with pytest.raises(LightReasonerError, match=rf"{data.name}:2: no gold answer"):
        sft(SFTConfig(model=str(pair[0]), data=str(data), output_dir=str(out)), show_progress=False)
    assert not (out / "solutions.jsonl").exists() and not (out / "solutions.jsonl.partial").exists()
    with pytest.raises(LightReasonerError, match="--temperature"):
        sft(SFTConfig(model=str(pair[0]), data=str(data), output_dir=str(out), temperature=0), show_progress=False)
