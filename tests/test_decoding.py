"""Greedy decoding is the argmax of a plain forward pass, whatever the checkpoint says."""

import math

import pytest
import tiny
import torch
from conftest import gsm8k_questions

from lightreasoner.config import SampleConfig
from lightreasoner.data import Problem
from lightreasoner.generation.decoder import GrowingLayer, greedy_decode
from lightreasoner.models import end_token_ids, load_model, load_tokenizer
from lightreasoner.prompts import SAMPLING_SYSTEM_PROMPT, encode_prompt
from lightreasoner.records import read_records
from lightreasoner.sampling import generate_trajectories, label_steps, sample, teacher_forced_logits


@pytest.fixture(scope="module")
def hostile(pair, tmp_path_factory):
    """The expert of ``pair`` with sampling, penalties and bad words in its generation config."""
    return tiny.make_hostile_copy(pair[0], tmp_path_factory.mktemp("hostile") / "expert")


@torch.no_grad()
def argmax_decode(model, prompt: list[int], n: int, stops: set[int]) -> list[int]:
    """The definition: one full forward per step, no cache, argmax of the raw logits."""
    ids, out = list(prompt), []
    for _ in range(n):
        tok = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        out.append(tok)
        ids.append(tok)
        if tok in stops:
            break
    return out


def test_hostile_config_is_really_hostile(hostile):
    """The config would change the tokens if generate() used it: guards the tests below."""
    model = load_model(str(hostile))
    assert model.generation_config.do_sample and model.generation_config.repetition_penalty == 5.0


@pytest.mark.parametrize("batch_size", [1, 3, 8])
@pytest.mark.slow
def test_decoder_matches_plain_argmax_with_refill(hostile, batch_size):
    tok, model = load_tokenizer(str(hostile)), load_model(str(hostile))
    prompts = [encode_prompt(tok, q, SAMPLING_SYSTEM_PROMPT) for q in gsm8k_questions(6)]
    prompts[2] = prompts[2][:9]  # prompts of very different lengths share batches
    ref = [argmax_decode(model, p, 24, {0}) for p in prompts]
    seen = {}
    got = greedy_decode(
        model, prompts, 24, [0], tok.pad_token_id, batch_size, keep_logits=True, on_result=seen.__setitem__
    )
    assert [c.ids for c in got] == ref
    assert sorted(seen) == list(range(6))
    assert all(c.logits is None for c in got)  # the kept logits went to the callback only
    for i, c in seen.items():
        assert c.ids == ref[i]
        assert c.logits.shape == (len(c.ids), model.config.vocab_size)
        assert c.logits.argmax(-1).tolist() == c.ids
        assert c.finished == (c.ids[-1] == 0)
    kept = greedy_decode(model, prompts, 24, [0], tok.pad_token_id, batch_size, keep_logits=True)
    assert all(c.logits.argmax(-1).tolist() == c.ids for c in kept)


def test_decoder_stops_at_each_stop_id(pair):
    tok, model = load_tokenizer(str(pair[0])), load_model(str(pair[0]))
    prompt = encode_prompt(tok, gsm8k_questions(1)[0], SAMPLING_SYSTEM_PROMPT)
    full = argmax_decode(model, prompt, 20, set())
    stop = full[5]
    (got,) = greedy_decode(model, [prompt], 20, [stop], tok.pad_token_id, 4)
    assert got.ids == full[: full.index(stop) + 1] and got.finished
    (cut,) = greedy_decode(model, [prompt], 7, [], tok.pad_token_id, 4)
    assert cut.ids == full[:7] and not cut.finished


def test_sampled_steps_are_the_argmax_of_a_plain_forward(hostile, pair, problems_file, tmp_path):
    out = tmp_path / "s.jsonl"
    cfg = SampleConfig(
        expert=str(hostile),
        amateur=str(pair[1]),
        data=str(problems_file),
        out=str(out),
        max_problems=3,
        max_new_tokens=16,
        batch_size=2,
        beta=-math.inf,
        dtype="float32",  # exact comparisons: auto is bf16 on CPUs with native bf16
    )
    sample(cfg, show_progress=False)
    model = load_model(str(hostile))
    records = read_records(out)
    assert len(records) > 10
    for r in records:
        if r.step == 0:
            continue
        ids = torch.tensor([r.prompt_token_ids + r.prefix_token_ids[:-1]])
        with torch.no_grad():
            assert int(model(input_ids=ids).logits[0, -1].argmax()) == r.prefix_token_ids[-1]


@pytest.mark.slow
def test_expert_scoring_from_generation_equals_teacher_forced(pair, problems_file, tmp_path):
    runs = {}
    for mode in ("generation", "teacher-forced"):
        out = tmp_path / f"{mode}.jsonl"
        cfg = SampleConfig(
            expert=str(pair[0]),
            amateur=str(pair[1]),
            data=str(problems_file),
            out=str(out),
            max_problems=5,
            max_new_tokens=20,
            batch_size=2,
            expert_scoring=mode,
            dtype="float32",
        )
        summary = sample(cfg, show_progress=False)
        runs[mode] = (read_records(out), summary)
    (gen, s_gen), (tf, s_tf) = runs["generation"], runs["teacher-forced"]
    assert len(gen) > 0 and s_gen["scoring"] == "generation" and s_tf["scoring"] == "teacher-forced"
    assert [(r.problem_index, r.step, r.token_ids) for r in gen] == [(r.problem_index, r.step, r.token_ids) for r in tf]
    for a, b in zip(gen, tf):
        assert a.weights == pytest.approx(b.weights, abs=1e-4)
        assert a.kl_divergence == pytest.approx(b.kl_divergence, abs=1e-4)
    assert [r.problem_index for r in gen] == sorted(r.problem_index for r in gen)  # problem order


def test_generation_logits_equal_teacher_forced_logits(pair):
    tok, expert, amateur = load_tokenizer(str(pair[0])), load_model(str(pair[0])), load_model(str(pair[1]))
    problems = [Problem(i, q) for i, q in enumerate(gsm8k_questions(4))]
    trajs = generate_trajectories(expert, tok, problems, SAMPLING_SYSTEM_PROMPT, 12, batch_size=3, keep_logits=True)
    for t, tf, a in zip(
        trajs,
        teacher_forced_logits(expert, trajs, tok.pad_token_id),
        teacher_forced_logits(amateur, trajs, tok.pad_token_id),
    ):
        assert torch.allclose(t.expert_logits, tf, atol=1e-4)
        shared = min(t.expert_logits.shape[-1], a.shape[-1])
        assert label_steps(t.expert_logits, a, 0.1, 0.2)[1] == pytest.approx(label_steps(tf, a, 0.1, 0.2)[1], abs=1e-4)
        assert shared > 0


def test_trajectories_end_at_the_end_of_the_turn(pair, tmp_path):
    """A model that says <|im_end|> stops there: nothing after the turn is scored."""
    tok = load_tokenizer(str(pair[0]))
    model = load_model(str(pair[0]))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in end_token_ids(model.generation_config.eos_token_id, tok, chat_ends=True)
    prompt = encode_prompt(tok, gsm8k_questions(1)[0], SAMPLING_SYSTEM_PROMPT)
    free = argmax_decode(model, prompt, 20, set())
    with torch.no_grad():  # make <|im_end|> win wherever the 4th token would (a scaled copy of its row)
        w = model.get_output_embeddings().weight
        w[im_end] = w[free[3]] * 1.5
    (traj,) = generate_trajectories(model, tok, [Problem(0, gsm8k_questions(1)[0])], SAMPLING_SYSTEM_PROMPT, 20)
    assert traj.generated_ids[-1] == im_end and im_end not in traj.generated_ids[:-1]
    assert len(traj.generated_ids) <= 4


def test_out_of_memory_restarts_with_half_the_batch(pair, monkeypatch):
    from lightreasoner.generation import decoder as decoding

    tok, model = load_tokenizer(str(pair[0])), load_model(str(pair[0]))
    prompts = [encode_prompt(tok, q, SAMPLING_SYSTEM_PROMPT) for q in gsm8k_questions(6)]
    expected = [argmax_decode(model, p, 6, {0}) for p in prompts]
    real, sizes = decoding._Batch.step, []

    def limited(self, tokens):
        sizes.append(len(tokens))
        if len(tokens) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(self, tokens)

    monkeypatch.setattr(decoding._Batch, "step", limited)
    got = greedy_decode(model, prompts, 6, [0], tok.pad_token_id, 8)
    assert [c.ids for c in got] == expected
    assert sizes[:2] == [6, 4] and max(sizes[2:]) == 2


def test_growing_layer_holds_what_concatenation_holds():
    g = torch.Generator().manual_seed(0)
    keys, values = torch.randn(3, 2, 5, 4, generator=g), torch.randn(3, 2, 5, 4, generator=g)
    layer = GrowingLayer(keys, values, room=16)
    want_k, want_v = keys, values
    for n in (1, 7, 1, 12, 1):  # 22 new positions: the buffer has to grow once
        k, v = torch.randn(3, 2, n, 4, generator=g), torch.randn(3, 2, n, 4, generator=g)
        got_k, got_v = layer.update(k, v)
        want_k, want_v = torch.cat([want_k, k], 2), torch.cat([want_v, v], 2)
        assert torch.equal(got_k, want_k) and torch.equal(got_v, want_v)
    assert layer.get_seq_length() == 27
    rows = torch.tensor([2, 0])
    layer.batch_select_indices(rows)
    assert torch.equal(layer.keys, want_k[rows]) and torch.equal(layer.values, want_v[rows])
    k = torch.randn(2, 2, 1, 4, generator=g)
    assert torch.equal(layer.update(k, k)[0], torch.cat([want_k[rows], k], 2))
    layer.crop(-3)
    assert layer.get_seq_length() == 25


def test_output_layer_gets_contiguous_hidden_states(pair):
    """Prompts of different lengths, decoded and teacher-forced: the output layer's input is
    always contiguous (a strided slice there can turn oneDNN's bf16 matmul off, see
    decoding.last_positions)."""
    model, tok = load_model(str(pair[0])), load_tokenizer(str(pair[0]))
    seen = []
    hook = model.get_output_embeddings().register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        prompts = [encode_prompt(tok, q, SAMPLING_SYSTEM_PROMPT) for q in gsm8k_questions(3)]
        comps = greedy_decode(model, prompts, 6, [], tok.pad_token_id, 0)
        problems = [Problem(i, q) for i, q in enumerate(gsm8k_questions(3))]
        trajs = generate_trajectories(model, tok, problems, SAMPLING_SYSTEM_PROMPT, 6)
        seen.clear()
        teacher_forced_logits(model, trajs, tok.pad_token_id)
        forced = list(seen)
        seen.clear()
        greedy_decode(model, prompts, 6, [], tok.pad_token_id, 0)
    finally:
        hook.remove()
    assert len(comps) == 3 and forced and seen
    assert all(h.is_contiguous() for h in forced + seen)
    assert forced[0].shape[1] == 7  # the positions predicting the 6 generated tokens and the next
    assert all(h.shape[1] == 1 for h in seen)
