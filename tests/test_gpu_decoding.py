"""What a GPU changes in decoding, checked on the CPU: no attention query that sees nothing
(cuDNN gives NaN there), a clear stop on non-finite logits, top-p draws on the device, memory
accounting and out-of-memory clean-up, which backend ``auto`` picks, the prompts vLLM is given."""

from __future__ import annotations

import json
import math
import weakref

import pytest
import tiny
import torch
from conftest import gsm8k_questions
from transformers.masking_utils import causal_mask_function, sdpa_mask, sliding_window_causal_mask_function
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from lightreasoner.config import EvalConfig, SampleConfig
from lightreasoner.data import Problem
from lightreasoner.errors import LightReasonerError
from lightreasoner.generation import decoder as decoding
from lightreasoner.generation import vllm as generation
from lightreasoner.generation.decoder import (
    NonFiniteLogits,
    TopPSampler,
    attention_mask_for,
    greedy_decode,
    inverse_cdf,
    nucleus_probs,
    self_seeing_mask,
)
from lightreasoner.generation.sizing import free_memory
from lightreasoner.models import ModelSource, load_model, load_tokenizer
from lightreasoner.prompts import SAMPLING_SYSTEM_PROMPT, encode_prompt
from lightreasoner.sampling import Trajectory, generate_trajectories, resolve_backend, teacher_forced_logits


@torch.no_grad()
def argmax_decode(model, prompt: list[int], n: int) -> list[int]:
    """The definition: one full forward per step, no padding, no cache, argmax of the raw logits."""
    ids, out = list(prompt), []
    for _ in range(n):
        tok = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        out.append(tok)
        ids.append(tok)
    return out


def seeing_rows(mask, q_len: int) -> torch.Tensor:
    """``[B or 1, q_len]``: whether each query sees at least one key under the mask SDPA gets."""
    if mask is None:  # causal through is_causal, no padding: every query sees itself
        return torch.ones(1, q_len, dtype=torch.bool)
    visible = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    return visible.any(-1).any(1)


@pytest.fixture
def attention_log(monkeypatch):
    """Every SDPA call of the models records which queries see something; with
    ``log.emulate_cudnn = True`` a query that sees nothing gets NaN, as cuDNN's kernel gives."""
    real = ALL_ATTENTION_FUNCTIONS["sdpa"]

    class Log(list):
        emulate_cudnn = False

    log = Log()

    def recording(module, query, key, value, attention_mask, **kw):
        rows = seeing_rows(attention_mask, query.shape[2])
        log.append(rows)
        out, weights = real(module, query, key, value, attention_mask, **kw)  # out [B, q, heads, dim]
        if log.emulate_cudnn and not rows.all():
            out = out.masked_fill(~rows.expand(out.shape[0], -1)[..., None, None], math.nan)
        return out, weights

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", recording)
    return log


def prompts_of_many_lengths(tok, n: int = 6) -> list[list[int]]:
    prompts = [encode_prompt(tok, q, SAMPLING_SYSTEM_PROMPT) for q in gsm8k_questions(n)]
    prompts[2] = prompts[2][:9]
    return prompts


def left_padded(prompts: list[list[int]]) -> dict[str, torch.Tensor]:
    """``input_ids`` and the plain 2D ``attention_mask`` ``[B, L]`` of left-padded prompts."""
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    return {"input_ids": ids, "attention_mask": torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])}


def trajectories(model, tok, n: int = 4) -> list[Trajectory]:
    problems = [Problem(i, q if i != 1 else q[:20]) for i, q in enumerate(gsm8k_questions(n))]
    return generate_trajectories(model, tok, problems, SAMPLING_SYSTEM_PROMPT, 8, batch_size=n)


def test_no_attention_query_sees_nothing(pair, attention_log):
    """Prefill (first admits and joins), decode steps with the cache, teacher-forced scoring and
    both training collators: every query row SDPA gets sees at least one key."""
    from lightreasoner.sft import SFTCollator, SFTExample
    from lightreasoner.training import SoftLabelCollator, TrainExample, soft_label_loss

    model, tok = load_model(str(pair[0])), load_tokenizer(str(pair[0]))
    assert model.config._attn_implementation == "sdpa"
    prompts = prompts_of_many_lengths(tok)
    with torch.no_grad():  # the check is not vacuous: the plain left-padded 2D mask has blind queries
        model(**left_padded(prompts))
    assert not all(rows.all() for rows in attention_log)
    attention_log.clear()

    greedy_decode(model, prompts, 6, [], tok.pad_token_id, 3)  # 3 at a time: rows leave and join
    teacher_forced_logits(model, trajectories(model, tok), tok.pad_token_id)
    examples = [TrainExample(p[: 5 + 3 * i], [1, 2], [0.5, 0.5], i) for i, p in enumerate(prompts[:4])]
    soft_label_loss(model, SoftLabelCollator(tok.pad_token_id)(list(enumerate(examples))))
    sft = [(i, SFTExample(p[: 6 + 4 * i], 3)) for i, p in enumerate(prompts[:4])]
    batch = SFTCollator(tok.pad_token_id)(sft)
    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    assert len(attention_log) > 20 and all(rows.all() for rows in attention_log)


@pytest.mark.slow
def test_nan_for_blind_queries_reaches_no_token(pair, attention_log):
    """With attention that returns NaN where a query sees nothing (cuDNN's behaviour), batched
    decoding and teacher-forced scoring still equal the one-at-a-time definition."""
    model, tok = load_model(str(pair[0]), torch.float32), load_tokenizer(str(pair[0]))
    prompts = prompts_of_many_lengths(tok)
    ref = [argmax_decode(model, p, 8) for p in prompts]
    attention_log.emulate_cudnn = True
    with torch.no_grad():  # the emulation bites: a left-padded batch with the plain 2D mask
        assert not torch.isfinite(model(**left_padded(prompts)).logits).all()
    assert [c.ids for c in greedy_decode(model, prompts, 8, [], tok.pad_token_id, 4)] == ref
    trajs = [Trajectory(Problem(i, ""), p, r) for i, (p, r) in enumerate(zip(prompts, ref))]
    together = teacher_forced_logits(model, trajs, tok.pad_token_id)
    for t, got in zip(trajs, together):
        alone = teacher_forced_logits(model, [t], tok.pad_token_id)[0]
        assert torch.allclose(got, alone, atol=1e-4) and got.argmax(-1).tolist() == t.generated_ids


@pytest.mark.slow
def test_eager_attention_takes_the_additive_mask(pair):
    model, tok = load_model(str(pair[0]), torch.float32), load_tokenizer(str(pair[0]))
    model.set_attn_implementation("eager")
    prompts = prompts_of_many_lengths(tok)
    given = attention_mask_for(model, torch.tensor([[0, 0, 1], [1, 1, 1]]), 3)
    low = torch.finfo(torch.float32).min
    assert given.dtype == torch.float32 and given.shape == (2, 1, 3, 3)
    assert given[0, 0].tolist() == [[0.0, low, low], [low, 0.0, low], [low, low, 0.0]]  # padding sees itself
    got = greedy_decode(model, prompts, 8, [], tok.pad_token_id, 4)
    assert [c.ids for c in got] == [argmax_decode(model, p, 8) for p in prompts]


def test_sliding_window_layers_get_their_own_mask(tmp_path):
    """A Qwen2 whose second layer attends to a window of 6 columns: a mask per layer type, and
    batched decoding equals one prompt at a time."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = tiny.make_tokenizer(tmp_path)
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=420,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=6,
        max_window_layers=1,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    assert model.config.layer_types == ["full_attention", "sliding_attention"]
    masks = attention_mask_for(model, torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]), 4)
    assert set(masks) == {"full_attention", "sliding_attention"}
    prompts = prompts_of_many_lengths(tok, 4)
    got = greedy_decode(model, prompts, 6, [], tok.pad_token_id, 4)
    assert [c.ids for c in got] == [argmax_decode(model, p, 6) for p in prompts]


@pytest.mark.parametrize("window", [None, 3])
def test_self_seeing_mask_is_transformers_mask_plus_each_query_itself(window):
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0]])
    fn = causal_mask_function if window is None else sliding_window_causal_mask_function(window)
    for q_len in (6, 2):
        theirs = sdpa_mask(3, q_len, 6, q_offset=6 - q_len, mask_function=fn, attention_mask=mask.bool(),
                           allow_is_causal_skip=False)  # fmt: skip
        ours = self_seeing_mask(mask, q_len, window)
        diagonal = torch.arange(6)[None, :] == torch.arange(6 - q_len, 6)[:, None]  # each query's own column
        assert torch.equal(ours, theirs | diagonal)
        assert torch.equal(ours & mask.bool()[:, None, None, :], theirs)  # the same tokens seen


def test_non_finite_logits_stop_with_a_clear_error(pair):
    model, tok = load_model(str(pair[0])), load_tokenizer(str(pair[0]))
    prompts = prompts_of_many_lengths(tok, 3)
    trajs = trajectories(model, tok, 3)

    def poison(module, args, out):
        out[1] = math.nan  # the second row of the batch
        return out

    hook = model.get_output_embeddings().register_forward_hook(poison)
    try:
        with pytest.raises(NonFiniteLogits, match="NaN or infinite.*dtype bfloat16"):
            greedy_decode(model, prompts, 4, [], tok.pad_token_id, 3)
        with pytest.raises(NonFiniteLogits, match="teacher-forced scoring"):
            teacher_forced_logits(model, trajs, tok.pad_token_id)
    finally:
        hook.remove()
    assert isinstance(NonFiniteLogits("x"), LightReasonerError)  # the CLI prints it and exits 2


def test_inverse_cdf_on_hand_made_rows():
    probs = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.0, 0.0, 1.0, 0.0]])
    for u, want in ((0.0, [0, 2]), (0.49, [0, 2]), (0.5, [1, 2]), (0.79, [1, 2]), (0.81, [2, 2]), (1.0, [2, 2])):
        assert inverse_cdf(probs, torch.tensor([u, u], dtype=torch.float64)).tolist() == want


def test_top_p_draws_follow_the_nucleus_and_not_the_batch():
    scores = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])).expand(4000, 4)
    sampler = TopPSampler(temperature=1.0, top_p=0.9, seeds=list(range(4000)))
    drawn = sampler(scores, list(range(4000)), [3] * 4000)
    share = torch.bincount(drawn, minlength=4).double() / 4000
    assert torch.allclose(share, nucleus_probs(scores[:1], 1.0, 0.9)[0].double(), atol=0.025)
    assert share[3] == 0  # outside the nucleus
    alone = [int(sampler(scores[:1], [i], [3])) for i in range(0, 4000, 397)]
    assert alone == drawn[::397].tolist()


def test_free_memory_counts_what_the_caching_allocator_holds(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 9000))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 700)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 200)
    assert free_memory(torch.device("cuda", 0)) == 1500


def test_models_decoding_together_each_count_their_cache_in_the_batch(pair, monkeypatch):
    """Contrastive decoding keeps the amateur's KV cache and step logits beside the expert's:
    fewer rows fit than for the expert alone."""
    from lightreasoner.generation import sizing

    expert, amateur = load_model(str(pair[0])), load_model(str(pair[1]))
    vocab = {m: m.get_output_embeddings().weight.shape[0] for m in (expert, amateur)}
    per_row = {m: sizing.kv_bytes_per_token(m) * 100 + vocab[m] * 16 for m in (expert, amateur)}
    both = per_row[expert] + per_row[amateur]
    monkeypatch.setattr(sizing, "free_memory", lambda device: 2 * 100 * both)  # half of it is used
    assert sizing.batch_capacity([expert, amateur], 100, 0) == 100
    assert sizing.batch_capacity(expert, 100, 0) == min(256, 100 * both // per_row[expert]) > 100
    assert sizing.batch_capacity([expert, amateur], 100, 40) == 40  # a smaller request is kept


def test_out_of_memory_drops_the_failed_batch_before_emptying_the_cache(pair, monkeypatch):
    tok, model = load_tokenizer(str(pair[0])), load_model(str(pair[0]))
    prompts = prompts_of_many_lengths(tok, 4)
    live, released = weakref.WeakSet(), []
    real_init, real_step = decoding._Batch.__init__, decoding._Batch.step

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        live.add(self)

    def step(self, tokens):
        if len(tokens) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real_step(self, tokens)

    monkeypatch.setattr(decoding._Batch, "__init__", init)
    monkeypatch.setattr(decoding._Batch, "step", step)
    monkeypatch.setattr(decoding, "release_memory", lambda: released.append(len(live)))
    greedy_decode(model, prompts, 4, [], tok.pad_token_id, 4)
    assert released == [0]  # the failed batch (and its KV cache) was gone when the cache was emptied


def test_scoring_out_of_memory_drops_the_failed_pass_first(pair, monkeypatch):
    from lightreasoner import sampling

    model, tok = load_model(str(pair[0])), load_tokenizer(str(pair[0]))
    trajs = trajectories(model, tok, 3)
    real, held, released = sampling.teacher_forced_logits, [], []

    def scoring(model, batch, pad):
        if len(batch) > 1:
            big = torch.empty(1000)
            held.append(weakref.ref(big))
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(model, batch, pad)

    monkeypatch.setattr(sampling, "teacher_forced_logits", scoring)
    monkeypatch.setattr(sampling, "release_memory", lambda: released.append(held[0]() is None))
    assert len(sampling.forced_in_pieces(model, trajs, tok.pad_token_id)) == 3
    assert released == [True]


def write_adapter(path, **cfg):
    path.mkdir(parents=True)
    base = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], "bias": "none", "peft_type": "LORA"}
    (path / "adapter_config.json").write_text(json.dumps({**base, **cfg}))
    return str(path)


def test_adapters_vllm_cannot_serve(tmp_path):
    plain = write_adapter(tmp_path / "plain", r=300)
    assert generation.adapter_obstacles(plain) == [] and generation.lora_rank_slot(plain) == 320
    big = write_adapter(tmp_path / "big", r=1024)
    with pytest.raises(LightReasonerError, match="r=1024 is above 512"):
        generation.lora_rank_slot(big)
    with pytest.raises(LightReasonerError, match="--max-lora-rank 256 is below the adapter's rank r=300"):
        generation.refuse_adapter(plain, 256)
    generation.refuse_adapter(plain, 320)
    for name, kw, says in (
        ("big2", {"r": 1024}, "above 512"),
        ("saved", {"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ("dora", {"use_dora": True}, "DoRA"),
        ("bias", {"bias": "all"}, "biases"),
        ("pattern", {"rank_pattern": {"q_proj": 4}}, "per-module"),
        ("lora_bias", {"lora_bias": True}, "lora_bias"),
        ("tokens", {"trainable_token_indices": [5, 7]}, "trainable_token_indices"),
    ):
        (problem,) = generation.adapter_obstacles(write_adapter(tmp_path / name, **kw))
        assert says in problem
        with pytest.raises(LightReasonerError, match=says):
            generation.refuse_adapter(str(tmp_path / name))


def test_auto_backend_is_hf_wherever_vllm_cannot_serve(pair, tmp_path, monkeypatch):
    from lightreasoner.evaluation.runner import check_backend

    monkeypatch.setattr(generation, "vllm_available", lambda: True)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    big = write_adapter(tmp_path / "big", r=1024)
    base = {"model": str(pair[0]), "out": "o"}
    assert check_backend(EvalConfig(**base)) == "vllm"
    for kw, says in (
        ({"contrastive_amateur": str(pair[1])}, "--contrastive-amateur"),
        ({"model": str(gguf)}, "GGUF"),
        ({"device": "cpu"}, "--device cpu"),
        ({"trust_remote_code": True}, "--trust-remote-code"),
        ({"adapter": big}, "r=1024"),
    ):
        assert check_backend(EvalConfig(**{**base, **kw})) == "hf"
        with pytest.raises(LightReasonerError, match=says):
            check_backend(EvalConfig(**{**base, **kw, "backend": "vllm"}))
    sample = SampleConfig(expert=str(pair[0]), amateur=str(pair[1]), data="d", out="o", backend="auto")
    src = ModelSource(str(pair[0]))
    assert resolve_backend(sample, src).backend == "vllm"
    assert resolve_backend(sample, src).expert_scoring == "teacher-forced"
    assert resolve_backend(SampleConfig(**{**vars(sample), "reference_scoring": True}), src).backend == "hf"
    assert resolve_backend(sample, ModelSource(str(tmp_path), "model.gguf")).backend == "hf"
    monkeypatch.setattr(generation, "vllm_available", lambda: False)
    assert check_backend(EvalConfig(**base)) == "hf"
    assert resolve_backend(sample, src) == SampleConfig(**{**vars(sample), "backend": "hf"})


def test_readme_contrastive_eval_runs_with_backend_auto_beside_vllm(pair, tmp_path, stand_in_vllm):
    """``eval --contrastive-amateur`` on a machine with vLLM and a GPU: auto means hf, no engine starts."""
    from lightreasoner.cli import main

    out = tmp_path / "cd"
    args = ["eval", "-q", "--model", str(pair[0]), "--contrastive-amateur", str(pair[1]), "--benchmarks",
            "reasoning-gym:gsm_symbolic", "--limit", "2", "--max-new-tokens", "6", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert stand_in_vllm == [] and json.loads((out / "fingerprint.json").read_text())["backend"] == "hf"


def test_vllm_evaluation_gets_token_ids_and_reports_as_hf(pair, tmp_path, stand_in_vllm, monkeypatch):
    """Prompts reach vLLM as token ids (a text prompt would get special tokens added, a second
    BOS for Llama-style tokenizers), and the rows equal the hf backend's."""
    import vllm  # the stand-in

    from lightreasoner.evaluation.runner import evaluate

    prompts_seen = []
    real_generate = vllm.LLM.generate

    def generate(self, prompts, *a, **kw):
        prompts_seen.extend(prompts)
        return real_generate(self, prompts, *a, **kw)

    monkeypatch.setattr(vllm.LLM, "generate", generate)
    tok = load_tokenizer(str(pair[0]))
    base = dict(model=str(pair[0]), benchmarks="reasoning-gym:gsm_symbolic", limit=3, max_new_tokens=8, dtype="float32")
    rows = {}
    for backend in ("hf", "vllm"):
        evaluate(EvalConfig(**base, backend=backend, out=str(tmp_path / backend)), show_progress=False)
        rows[backend] = [json.loads(x) for x in (tmp_path / backend / "reasoning-gym:gsm_symbolic.jsonl").open()]
    assert len(prompts_seen) == 3 and all(set(p) == {"prompt_token_ids"} for p in prompts_seen)
    ids = [p["prompt_token_ids"] for p in prompts_seen]
    assert [tok(tok.decode(x), add_special_tokens=False)["input_ids"] for x in ids] == ids
    keys = ("id", "completion", "tokens", "cut_off", "correct")
    assert [{k: r[k] for k in keys} for r in rows["vllm"]] == [{k: r[k] for k in keys} for r in rows["hf"]]


def test_vllm_gets_the_dtype_the_hf_backend_resolves(pair, tmp_path, stand_in_vllm):
    """``--dtype auto`` reaches vLLM resolved as hf resolves it (vLLM's own ``auto`` would keep
    the checkpoint's dtype: float16 for a float16 checkpoint where hf takes bfloat16)."""
    from lightreasoner.evaluation.runner import evaluate
    from lightreasoner.models import resolve_device, resolve_dtype

    for asked in ("auto", "float32"):
        stand_in_vllm.clear()
        base = dict(model=str(pair[0]), benchmarks="reasoning-gym:gsm_symbolic", limit=1, max_new_tokens=4)
        evaluate(EvalConfig(**base, dtype=asked, backend="vllm", out=str(tmp_path / asked)), show_progress=False)
        want = str(resolve_dtype(asked, resolve_device("auto"))).removeprefix("torch.")
        assert [e[1] for e in stand_in_vllm if e[0] == "engine"] == [want]
        assert want != "auto"


def test_text_prompts_would_get_a_second_bos(tmp_path):
    """Why token ids: a tokenizer that adds BOS (as Llama's does) to a chat text that already
    starts with it, which is what vLLM does with a text prompt (``tokenizer.encode(prompt)``)."""
    import types

    from tokenizers import processors

    tok = tiny.make_tokenizer(tmp_path)
    bos = tok.convert_tokens_to_ids("<|im_start|>")
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)]
    )
    text = "<|im_start|>user\n1+1?"
    assert tok.encode(text)[:2] == [bos, bos]
    gen = generation.VLLMGenerator.__new__(generation.VLLMGenerator)
    gen.tok, gen.stops, gen.params, gen.lora, seen = tok, [0], {}, None, []
    out = types.SimpleNamespace(
        outputs=[types.SimpleNamespace(token_ids=(5, 0), finish_reason="stop", stop_reason=None)]
    )
    gen.llm = types.SimpleNamespace(generate=lambda p, *a, **k: seen.extend(p) or [out])
    (g,) = gen.generate([text])
    assert seen[0]["prompt_token_ids"][:2] != [bos, bos] and seen[0]["prompt_token_ids"][0] == bos
    assert g.tokens == 2 and not g.cut_off


def test_a_non_finite_training_loss_stops_training(monkeypatch):
    """The Trainer only leaves a NaN loss out of its logs; our trainers stop with a clear error."""
    import types

    from transformers import Trainer

    from lightreasoner.training import SeenTrainer

    losses = iter([torch.tensor(0.5), torch.tensor(math.nan)])
    monkeypatch.setattr(Trainer, "training_step", lambda self, model, inputs, n=None: next(losses))
    trainer = SeenTrainer.__new__(SeenTrainer)
    trainer.state = types.SimpleNamespace(global_step=3)
    assert float(trainer.training_step(None, {})) == 0.5
    with pytest.raises(LightReasonerError, match="loss is nan at optimizer step 3.*TORCH_CUDNN_SDPA_DEPRIORITIZED"):
        trainer.training_step(None, {})
