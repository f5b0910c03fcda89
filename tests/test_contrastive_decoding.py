"""Contrastive decoding (O'Brien & Lewis 2023) in evaluation, and the sampler SFT uses."""

import json
import math

import pytest
import torch
from conftest import SHARED_DATA

from lightreasoner.cli import main
from lightreasoner.config import EvalConfig
from lightreasoner.errors import LightReasonerError
from lightreasoner.evaluation.runner import check_contrastive, evaluate
from lightreasoner.generation.decoder import TopPSampler, contrastive_scores, greedy_decode, nucleus_probs
from lightreasoner.models import end_token_ids, load_model, load_tokenizer
from lightreasoner.prompts import EVAL_SYSTEM_PROMPT, encode_prompt


def test_scores_follow_the_formula_on_hand_made_logits():
    e = torch.tensor([[2.0, 1.0, -3.0, 0.5]])
    a = torch.tensor([[1.0, 2.0, 0.0]])  # narrower vocabulary: the expert's extra column is cut
    got = contrastive_scores(e, a, alpha=0.1, beta=0.5)
    p = torch.softmax(e[0, :3], -1)
    assert p[2] < 0.1 * p.max() and p[1] >= 0.1 * p.max()
    assert got.shape == (1, 3)
    assert got[0, 0].item() == pytest.approx(1.5 * 2.0 - 0.5 * 1.0)
    assert got[0, 1].item() == pytest.approx(1.5 * 1.0 - 0.5 * 2.0)
    assert got[0, 2].item() == -math.inf
    # the contrast can overturn the expert's argmax; beta = 0 and alpha = 0 give the expert's logits
    flip = contrastive_scores(torch.tensor([[2.0, 1.9]]), torch.tensor([[3.0, 0.0]]), 0.1, 0.5)
    assert flip.argmax().item() == 1
    same = contrastive_scores(e[:, :3], a, alpha=0.0, beta=0.0)
    assert torch.equal(same, e[:, :3])


@torch.no_grad()
def reference_cd(expert, amateur, prompt, n, stops, alpha, beta):
    """The definition: full forwards of both models per step, argmax of the CD scores."""
    ids, out = list(prompt), []
    for _ in range(n):
        x = torch.tensor([ids])
        scores = contrastive_scores(expert(input_ids=x).logits[:, -1], amateur(input_ids=x).logits[:, -1], alpha, beta)
        tok = int(scores.argmax())
        out.append(tok)
        ids.append(tok)
        if tok in stops:
            break
    return out


@pytest.mark.slow
def test_batched_cd_equals_step_by_step_definition(pair):
    from lightreasoner.generation.decoder import contrastive_combine

    expert, amateur = (load_model(str(p)) for p in pair)
    tok = load_tokenizer(str(pair[0]))
    prompts = [encode_prompt(tok, q, EVAL_SYSTEM_PROMPT) for q in ("1+1?", "What is two plus three?", "7*6", "9")]
    stops = end_token_ids(expert.generation_config.eos_token_id, tok, chat_ends=True)
    want = [reference_cd(expert, amateur, p, 10, set(stops), 0.1, 1.0) for p in prompts]
    got = greedy_decode(
        [expert, amateur], prompts, 10, stops, tok.pad_token_id, 2, combine=contrastive_combine(0.1, 1.0)
    )
    assert [c.ids for c in got] == want
    plain = greedy_decode(expert, prompts, 10, stops, tok.pad_token_id, 2)
    assert [c.ids for c in plain] != want  # the amateur really takes part


def cd_cfg(pair, out, **kw):
    return EvalConfig(
        model=str(pair[0]),
        benchmarks="gsm8k,svamp",
        data_dir=str(SHARED_DATA),
        limit=3,
        max_new_tokens=10,
        out=str(out),
        **kw,
    )


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="benchmark files of ../shared/data not present")
@pytest.mark.slow
def test_cd_with_beta_zero_is_greedy_and_named_cd(pair, tmp_path):
    plain = evaluate(cd_cfg(pair, tmp_path / "plain"), show_progress=False)
    cd = evaluate(cd_cfg(pair, tmp_path / "cd", contrastive_amateur=str(pair[1]), cd_beta=0.0), show_progress=False)
    for name in ("gsm8k", "svamp"):
        a = [json.loads(x)["completion"] for x in (tmp_path / "plain" / f"{name}.jsonl").read_text().splitlines()]
        b = [json.loads(x)["completion"] for x in (tmp_path / "cd" / f"{name}.jsonl").read_text().splitlines()]
        assert a == b and len(a) == 3
    assert cd["name"].endswith("+ CD") and not plain["name"].endswith("+ CD")
    # a different beta is a different evaluation: resuming it is refused
    with pytest.raises(LightReasonerError, match="cd_beta"):
        evaluate(cd_cfg(pair, tmp_path / "cd", contrastive_amateur=str(pair[1]), cd_beta=0.5), show_progress=False)


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="benchmark files of ../shared/data not present")
def test_cd_refuses_a_mismatched_pair_and_vllm(pair, other_tokenizer_model, tmp_path, capsys):
    out = tmp_path / "cd"
    args = ["eval", "-q", "--model", str(pair[0]), "--benchmarks", "gsm8k", "--limit", "1", "--out", str(out)]
    code = main([*args, "--contrastive-amateur", str(other_tokenizer_model), "--data-dir", str(SHARED_DATA)])
    assert code == 2 and "tokenizers disagree" in capsys.readouterr().err
    assert not list(out.glob("*.jsonl"))
    from lightreasoner.generation import Request, vllm

    (why,) = vllm.BACKEND.obstacles(Request(str(pair[0]), None, 8, contrastive="a"))
    assert why.startswith("--contrastive-amateur")  # so --backend vllm is refused and auto takes hf
    with pytest.raises(LightReasonerError, match="--cd-beta"):
        check_contrastive(EvalConfig(model="m", out="o", contrastive_amateur="a", cd_beta=-1))


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.allclose(nucleus_probs(scores, 1.0, 0.7), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    assert torch.allclose(nucleus_probs(scores, 1.0, 0.85), torch.tensor([[0.5, 0.3, 0.15, 0.0]]) / 0.95)
    assert torch.allclose(nucleus_probs(scores, 1.0, 0.0), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    hot = nucleus_probs(scores, 2.0, 1.0)
    assert torch.allclose(hot, torch.softmax(scores / 2.0, -1))


@pytest.mark.slow
def test_sampled_sequences_do_not_depend_on_the_batch(pair):
    expert = load_model(str(pair[0]))
    tok = load_tokenizer(str(pair[0]))
    prompts = [encode_prompt(tok, q, EVAL_SYSTEM_PROMPT) for q in ("1+1?", "What is two plus three?", "7*6")] * 2
    stops = end_token_ids(expert.generation_config.eos_token_id, tok, chat_ends=True)
    sampler = TopPSampler(temperature=1.0, top_p=0.95, seeds=list(range(len(prompts))))
    one = greedy_decode(expert, prompts, 12, stops, tok.pad_token_id, 1, pick=sampler)
    many = greedy_decode(expert, prompts, 12, stops, tok.pad_token_id, 4, pick=sampler)
    assert [c.ids for c in one] == [c.ids for c in many]
    assert one[0].ids != one[3].ids  # same prompt, other seed: another sample
    greedy = greedy_decode(expert, prompts, 12, stops, tok.pad_token_id, 4)
    cold = greedy_decode(expert, prompts, 12, stops, tok.pad_token_id, 4, pick=TopPSampler(1.0, 0.0, [0] * 6))
    assert [c.ids for c in cold] == [c.ids for c in greedy]
