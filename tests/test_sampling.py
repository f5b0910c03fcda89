import json
import math

import pytest
import torch
from conftest import gsm8k_questions

from lightreasoner.config import SampleConfig
from lightreasoner.data import Problem
from lightreasoner.models import load_model, load_tokenizer
from lightreasoner.prompts import SAMPLING_SYSTEM_PROMPT
from lightreasoner.records import RELEASE_KEYS, read_records, summary_path
from lightreasoner.sampling import (
    Trajectory,
    generate_trajectories,
    label_steps,
    reference_logits,
    sample,
    teacher_forced_logits,
    truncate_to_vocab,
)


@pytest.fixture(scope="module")
def loaded(pair):
    e, a = pair
    return load_tokenizer(str(e)), load_model(str(e)), load_model(str(a))


@pytest.fixture(scope="module")
def trajs(loaded):
    tok, expert, amateur = loaded
    problems = [Problem(i, q) for i, q in enumerate(gsm8k_questions(4))]
    out = generate_trajectories(expert, tok, problems, SAMPLING_SYSTEM_PROMPT, 20)
    truncate_to_vocab(out, min(expert.config.vocab_size, amateur.config.vocab_size))
    return out


@pytest.mark.slow
def test_batched_generation_matches_single_problem_generation(loaded, trajs):
    tok, expert, _ = loaded
    for t in trajs[:2]:
        alone = generate_trajectories(expert, tok, [t.problem], SAMPLING_SYSTEM_PROMPT, 20)[0]
        n = len(t.generated_ids)
        assert alone.prompt_ids == t.prompt_ids
        assert alone.generated_ids[:n] == t.generated_ids


@pytest.mark.slow
def test_teacher_forced_argmax_reproduces_greedy_trajectory(loaded, trajs):
    tok, expert, _ = loaded
    for t, logits in zip(trajs, teacher_forced_logits(expert, trajs, tok.pad_token_id)):
        assert logits.shape[0] == len(t.generated_ids)
        assert logits.argmax(-1).tolist() == t.generated_ids


@pytest.mark.parametrize("beta", [0.4, -math.inf])
@pytest.mark.slow
def test_fast_and_reference_scoring_select_the_same_steps(loaded, trajs, beta):
    tok, expert, amateur = loaded
    fast_e = teacher_forced_logits(expert, trajs, tok.pad_token_id)
    fast_a = teacher_forced_logits(amateur, trajs, tok.pad_token_id)
    n_selected = 0
    for t, fe, fa in zip(trajs, fast_e, fast_a):
        ref_e, ref_a = reference_logits(expert, t, 1), reference_logits(amateur, t, 1)
        fast, kl_fast = label_steps(fe, fa, beta, 0.2)
        ref, kl_ref = label_steps(ref_e, ref_a, beta, 0.2)
        assert kl_fast == pytest.approx(kl_ref, abs=1e-4)
        assert [s.step for s in fast] == [s.step for s in ref]
        for a, b in zip(fast, ref):
            assert a.token_ids == b.token_ids
            assert a.weights == pytest.approx(b.weights, abs=1e-4)
        n_selected += len(fast)
    assert n_selected > 0


def test_label_steps_follow_the_definitions():
    torch.manual_seed(0)
    le, la = torch.randn(6, 12) * 3, torch.randn(6, 10) * 3  # amateur has fewer logits
    labels, kls = label_steps(le, la, beta=0.0, alpha=0.2, start=1)
    pe = torch.softmax(le, -1)[:, :10]
    pa = torch.softmax(la, -1)
    assert len(kls) == 5 and [lab.step for lab in labels] == [1, 2, 3, 4, 5]
    for lab in labels:
        p, q = pe[lab.step], pa[lab.step]
        keep = (p >= 0.2 * p.max()).nonzero().flatten().tolist()
        assert lab.token_ids == keep
        s = torch.log(p[keep] + 1e-12) - torch.log(q[keep] + 1e-12)
        assert lab.weights == pytest.approx(torch.softmax(s, -1).tolist(), abs=1e-6)
        assert lab.kl == pytest.approx(float((p * ((p + 1e-12).log() - (q + 1e-12).log())).sum()), abs=1e-5)
    high, _ = label_steps(le, la, beta=max(kls) + 1, alpha=0.2)
    assert high == []
    first, _ = label_steps(le, la, beta=0.0, alpha=0.2, start=0)
    assert first[0].step == 0


def test_truncate_to_vocab_cuts_before_unembeddable_ids():
    t = Trajectory(Problem(0, "q"), [1, 2], [5, 9, 300, 4])
    assert truncate_to_vocab([t], 100) == 1
    assert t.generated_ids == [5, 9]


def _cfg(pair, data, out, **kw):
    e, a = pair
    base = dict(expert=str(e), amateur=str(a), data=str(data), out=str(out), max_new_tokens=16, batch_size=3)
    base["dtype"] = "float32"  # exact comparisons: auto is bf16 on CPUs with native bf16
    return SampleConfig(**{**base, **kw})


def test_sample_writes_release_compatible_records(pair, problems_file, tmp_path):
    out = tmp_path / "s.jsonl"
    summary = sample(_cfg(pair, problems_file, out), show_progress=False)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines and summary["selected_steps"] == len(lines) and summary["problems"] == 8
    tok = load_tokenizer(str(pair[0]))
    for r in lines:
        assert all(k in r for k in RELEASE_KEYS)
        assert r["step"] >= 1 and r["kl_divergence"] >= 0.4
        assert r["prompt_id"] == r["question"]
        assert len(r["prefix_token_ids"]) == r["step"]
        assert r["prefix"] == tok.decode(r["prefix_token_ids"])
        assert sum(r["weights"]) == pytest.approx(1.0, abs=1e-5)
        assert r["tokens"] == [tok.decode([i]) for i in r["token_ids"]]
    saved = json.loads(summary_path(out).read_text())
    assert saved["selected_steps"] == len(lines)
    assert saved["generation_seconds"] > 0 and saved["scoring_seconds"] > 0
    assert not out.with_name("s.jsonl.partial").exists() and not out.with_name("s.jsonl.progress").exists()


@pytest.mark.slow
def test_sample_reference_path_writes_the_same_records(pair, problems_file, tmp_path):
    sample(_cfg(pair, problems_file, tmp_path / "f.jsonl", max_problems=3), show_progress=False)
    sample(_cfg(pair, problems_file, tmp_path / "r.jsonl", max_problems=3, reference_scoring=True), show_progress=False)
    f, r = read_records(tmp_path / "f.jsonl"), read_records(tmp_path / "r.jsonl")
    assert [(x.problem_index, x.step, x.token_ids) for x in f] == [(x.problem_index, x.step, x.token_ids) for x in r]
    for x, y in zip(f, r):
        assert x.weights == pytest.approx(y.weights, abs=1e-4)


@pytest.mark.slow
def test_include_first_step_and_keep_all(pair, problems_file, tmp_path):
    out = tmp_path / "all.jsonl"
    summary = sample(
        _cfg(pair, problems_file, out, max_problems=2, beta=-math.inf, skip_first_step=False), show_progress=False
    )
    recs = read_records(out)
    assert summary["selected_steps"] == summary["scored_steps"] == summary["trajectory_tokens"]
    assert min(r.step for r in recs) == 0


@pytest.mark.slow
def test_no_contrast_ablation_uses_expert_distribution(pair, problems_file, tmp_path):
    a, b = tmp_path / "c.jsonl", tmp_path / "e.jsonl"
    sample(_cfg(pair, problems_file, a, max_problems=2), show_progress=False)
    sample(_cfg(pair, problems_file, b, max_problems=2, contrast=False), show_progress=False)
    ra, rb = read_records(a), read_records(b)
    assert [r.token_ids for r in ra] == [r.token_ids for r in rb]
    assert any(x.weights != pytest.approx(y.weights, abs=1e-3) for x, y in zip(ra, rb))


@pytest.mark.slow
def test_finished_output_is_not_silently_reused_with_other_settings(pair, problems_file, tmp_path):
    from lightreasoner.errors import LightReasonerError

    out = tmp_path / "s.jsonl"
    first = sample(_cfg(pair, problems_file, out, max_problems=2), show_progress=False)
    assert sample(_cfg(pair, problems_file, out, max_problems=2), show_progress=False) == first
    for change in ({"beta": 0.3}, {"max_problems": 3}):
        with pytest.raises(LightReasonerError, match="other inputs or settings"):
            sample(_cfg(pair, problems_file, out, **{"max_problems": 2, **change}), show_progress=False)
    redone = sample(_cfg(pair, problems_file, out, max_problems=2, beta=0.3, overwrite=True), show_progress=False)
    assert redone["config"]["beta"] == 0.3


@pytest.mark.slow
def test_vllm_trajectories_give_the_records_of_teacher_forced_scoring(pair, problems_file, tmp_path, stand_in_vllm):
    """--backend vllm: the engine's trajectories, scored by both models in teacher-forced passes,
    give the records of the hf backend with --expert-scoring teacher-forced; the engine is shut
    down before the models load."""
    import lightreasoner.sampling as sampling_mod

    events = stand_in_vllm
    real_load = sampling_mod.load_model
    sampling_mod.load_model = lambda *a, **k: events.append(("load",)) or real_load(*a, **k)
    try:
        kw = dict(max_problems=5, score_batch_size=1)  # each scored alone: no dependence on batch-mates
        hf = sample(_cfg(pair, problems_file, tmp_path / "hf.jsonl", expert_scoring="teacher-forced", **kw), False)
        events.clear()
        out = tmp_path / "v.jsonl"
        v = sample(_cfg(pair, problems_file, out, backend="vllm", gpu_memory_utilization=0.5, **kw), False)
    finally:
        sampling_mod.load_model = real_load
    assert [e[0] for e in events] == ["engine", "generate", "shut down", "load", "load"]
    assert events[0][1] == "float32" and events[0][2]["gpu_memory_utilization"] == 0.5 and events[1][1] == 5
    assert out.read_text() == (tmp_path / "hf.jsonl").read_text()
    assert v["scoring"] == "teacher-forced" and v["selected_steps"] == hf["selected_steps"]
    assert v["fingerprint"]["backend"] == "vllm" and "backend" not in hf["fingerprint"]


@pytest.mark.slow
def test_vllm_backend_resumes_with_the_problems_not_committed(pair, problems_file, tmp_path, stand_in_vllm):
    from lightreasoner.records import ResumableWriter

    kw = dict(backend="vllm", max_problems=5, score_batch_size=1, group_size=2)
    cfg = _cfg(pair, problems_file, tmp_path / "v.jsonl", **kw)
    sample(_cfg(pair, problems_file, tmp_path / "full.jsonl", **kw), False)
    real_commit = ResumableWriter.commit_group

    def commit_one(self, *a, **k):
        if len(self.done) == 2:
            raise KeyboardInterrupt
        real_commit(self, *a, **k)

    ResumableWriter.commit_group = commit_one
    try:
        with pytest.raises(KeyboardInterrupt):
            sample(cfg, False)
    finally:
        ResumableWriter.commit_group = real_commit
    stand_in_vllm.clear()
    sample(cfg, False)
    assert ("generate", 3) in stand_in_vllm  # only the 3 problems of the groups not committed are generated again
    assert (tmp_path / "v.jsonl").read_text() == (tmp_path / "full.jsonl").read_text()


def test_vllm_completion_ids_end_with_the_stop_id():
    """generate_ids keeps greedy_decode's layout: ``finished`` when the last id is a stop id."""
    import types

    from lightreasoner.errors import LightReasonerError
    from lightreasoner.generation.vllm import VLLMGenerator

    def out(ids, reason, stop=None):
        return types.SimpleNamespace(
            outputs=[types.SimpleNamespace(token_ids=ids, finish_reason=reason, stop_reason=stop)]
        )

    gen = VLLMGenerator.__new__(VLLMGenerator)
    gen.stops, gen.params, gen.lora = [9, 7], {}, None
    answers = [out((1, 2, 9), "stop"), out((1, 2, 7), "stop", 7), out((1, 2, 3), "length"), out((1, 9), "length")]
    seen = []
    gen.llm = types.SimpleNamespace(generate=lambda prompts, *a, **k: seen.extend(prompts) or answers)
    comps = gen.generate_ids([[5], [6], [7], [8]])
    assert seen == [{"prompt_token_ids": [p]} for p in (5, 6, 7, 8)]
    assert [(c.ids, c.finished) for c in comps] == [
        ([1, 2, 9], True),
        ([1, 2, 7], True),
        ([1, 2, 3], False),
        ([1, 9], True),  # a stop id as the last allowed token: finished, as greedy_decode says
    ]
    for bad in (out((1, 2), "stop"), out((1, 2), "abort")):
        gen.llm = types.SimpleNamespace(generate=lambda prompts, *a, bad=bad, **k: [bad])
        with pytest.raises(LightReasonerError, match="not supported for sampling"):
            gen.generate_ids([[5]])


def test_vllm_backend_checks(pair, problems_file, tmp_path):
    from lightreasoner.errors import LightReasonerError
    from lightreasoner.generation.vllm import vllm_available

    for kw, match in (
        ({"backend": "tgi"}, "--backend 'tgi'"),
        ({"backend": "vllm", "reference_scoring": True}, "--reference-scoring"),
        ({"backend": "vllm", "gpu_memory_utilization": 1.5}, "--gpu-memory-utilization"),
        ({"backend": "vllm", "tensor_parallel_size": 0}, "--tensor-parallel-size"),
    ):
        with pytest.raises(LightReasonerError, match=match):
            sample(_cfg(pair, problems_file, tmp_path / "a.jsonl", **kw), False)
    if not vllm_available():
        with pytest.raises(LightReasonerError, match="vLLM is not installed"):
            sample(_cfg(pair, problems_file, tmp_path / "c.jsonl", backend="vllm"), False)
    assert not list(tmp_path.iterdir())
