"""Before a run's first stage: how long each stage should take on this machine.

A short measurement with the run's own models, dtype and device (:func:`measure`): the time
to start a stage's process and load each model, a decode step at the batch sizes the stages
will use, and the forward pass per token of each model. The stages' sizes (problems, token
budgets, batch sizes, optimizer steps) then give each stage's time (:func:`stage_seconds`):

- a decoding stage (evaluation, trajectories) is simulated step by step as the decoder runs
  it: ``batch`` rows at a time, new prompts joining once an eighth of the rows are free, a
  step costing ``a + b · rows`` seconds (fitted to two measured steps) and a joining prompt
  its prefill. Each answer's length is taken from an earlier evaluation of the same problems
  in the run when there is one (the tuned evaluation after the baseline), else it is
  ``PRIOR_TOKENS`` (at most the budget);
- a training step is ``grad_accum`` micro-batches of forward and backward over one packed
  trajectory (about three forward passes);
- the adapter-effect check is its teacher-forced passes and loads.

Every figure is an estimate: :func:`table` prints them, the run writes them to
``RUN/estimates.json`` and the report puts them beside the measured times.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

PRIOR_TOKENS = 300
"""An answer's length in tokens (at most the budget) when the run has no evaluation of the
same problems yet: zero-shot chain-of-thought answers to GSM8K-style problems by small
instruct models run to a few hundred tokens."""

ESTIMATES_FILE = "estimates.json"


@dataclass
class Costs:
    """What the measurement found, in seconds (``step = a + b · rows`` per model)."""

    start: float  # a stage's process: interpreter and imports
    load: dict[str, float] = field(default_factory=dict)  # model spec -> load time
    step: dict[str, tuple[float, float]] = field(default_factory=dict)  # model spec -> (a, b)
    token: dict[str, float] = field(default_factory=dict)  # model spec -> prefill seconds per token
    capacity: dict[str, int] = field(default_factory=dict)  # model spec -> rows that fit (eval budget)


def _timed(fn, repeats: int = 2) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@torch.inference_mode()
def step_seconds(model, rows: int, context: int) -> float:
    """One decode step of ``rows`` sequences over a ``context``-token KV cache (filled with
    zeros: a step's cost does not depend on what the cache holds)."""
    from transformers import DynamicCache

    cfg = model.config.get_text_config()
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    dev = model.device
    cache = DynamicCache(config=model.config)
    for layer in range(cfg.num_hidden_layers):
        kv = torch.zeros(rows, heads, context, head_dim, dtype=model.dtype, device=dev)
        cache.update(kv, kv.clone(), layer)
    mask = torch.ones(rows, context + 1, dtype=torch.long, device=dev)
    ids = torch.ones(rows, 1, dtype=torch.long, device=dev)
    pos = torch.full((rows, 1), context, dtype=torch.long, device=dev)

    def once() -> None:
        model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
        for layer in cache.layers:  # keep the cache at ``context`` tokens
            layer.keys, layer.values = layer.keys[:, :, :context], layer.values[:, :, :context]
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    once()  # warm-up
    return _timed(once)


@torch.inference_mode()
def prefill_seconds_per_token(model, tokens: int = 256, rows: int = 2) -> float:
    ids = torch.ones(rows, tokens, dtype=torch.long, device=model.device)

    def once() -> None:
        model(input_ids=ids, logits_to_keep=1)
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)

    once()
    return _timed(once) / (rows * tokens)


def start_seconds() -> float:
    """A stage process's start: the interpreter and the imports every stage makes."""
    code = "import torch, transformers, peft; import lightreasoner.cli"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=False, capture_output=True)
    return time.perf_counter() - t0


def measure(models: dict[str, int], context: int, dtype, device, budget_tokens: int) -> Costs:
    """Measure ``models`` (spec -> the largest batch its stages decode at, 0: scoring only)."""
    from .generation.sizing import batch_capacity, release_memory
    from .models import load_model

    costs = Costs(start=start_seconds())
    for spec, rows in models.items():
        t0 = time.perf_counter()
        model = load_model(spec, dtype, device)
        costs.load[spec] = time.perf_counter() - t0
        costs.token[spec] = prefill_seconds_per_token(model)
        costs.capacity[spec] = batch_capacity(model, budget_tokens, 0 if rows <= 0 else 4096)
        big = max(1, min(rows or 1, costs.capacity[spec]))
        small = max(1, big // 8)
        t_big = step_seconds(model, big, context)
        t_small = step_seconds(model, small, context) if small != big else t_big
        b = max(0.0, (t_big - t_small) / (big - small)) if big != small else 0.0
        costs.step[spec] = (max(1e-4, t_big - b * big), b)
        del model
        release_memory()
    return costs


def simulate_decode(
    lengths: list[int], prompt_lengths: list[int], batch: int, a: float, b: float, token: float
) -> float:
    """Seconds the decoder takes for answers of ``lengths`` tokens, ``batch`` rows at a time,
    new prompts joining once ``batch // 8`` rows are free (as :func:`generation.greedy_decode`)."""
    refill_at = max(1, batch // 8)
    queue = list(zip(lengths, prompt_lengths))
    left: list[int] = []  # tokens each running row still has to make
    seconds = 0.0
    while queue or left:
        free = batch - len(left)
        if queue and (free >= refill_at or not left):
            take, queue = queue[:free], queue[free:]
            width = max(p for _, p in take)
            seconds += token * width * len(take)  # the joining prompts' prefill (padded to the longest)
            left += [n - 1 for n, _ in take]  # the prefill makes each one's first token
        else:
            seconds += a + b * len(left)
            left = [n - 1 for n in left]
        left = [n for n in left if n > 0]
    return seconds


def eval_lengths(folder: Path | None, ids: list[str], budget: int) -> list[int]:
    """Each answer's length: from an earlier evaluation of the same problems (its rows'
    ``tokens``) where it has them, else ``PRIOR_TOKENS``; at most the budget."""
    known: dict[str, int] = {}
    if folder is not None and Path(folder).is_dir():
        for f in Path(folder).glob("*.jsonl"):
            for line in f.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                n = row.get("tokens") or row.get("completion_tokens")
                if isinstance(n, int):
                    known[str(row.get("id"))] = n
    return [min(budget, known.get(str(i), PRIOR_TOKENS)) for i in ids]


def table(estimates: dict[str, float], actual: dict[str, float] | None = None) -> str:
    from .report.tables import hms

    lines = [
        "| Stage | Estimate |" + (" Actual |" if actual is not None else ""),
        "|---|---|" + ("---|" if actual else ""),
    ]
    for s, t in estimates.items():
        lines.append(f"| {s} | {hms(t)} |" + (f" {hms(actual[s])} |" if actual and s in actual else ""))
    lines.append(f"| **total** | {hms(sum(estimates.values()))} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- a run's stages


def _eval_problems(ev, tok) -> tuple[list[str], list[int], int]:
    """(ids, prompt lengths, units) of an evaluation stage's problems."""
    from .distributed import work_groups
    from .evaluation.benchmarks import load_items
    from .prompts import encode_prompt

    ids, lengths, units = [], [], 0
    for name in [b.strip() for b in ev.benchmarks.split(",") if b.strip()]:
        items = load_items(name, ev.data_dir, ev.limit, ev.seed)
        units += len(work_groups(items, ev.group_size))
        ids += [it.id for it in items]
        lengths += [len(encode_prompt(tok, it.question, ev.system_prompt)) for it in items]
    return ids, lengths, units


def _decode(costs: Costs, spec: str, lengths, prompts, batch: int, units: int, extra: str | None = None) -> float:
    a, b = costs.step[spec]
    token = costs.token[spec]
    if extra:  # a second model decoding alongside (contrastive decoding)
        a, b, token = a + costs.step[extra][0], b + costs.step[extra][1], token + costs.token[extra]
    per = max(1, math.ceil(len(lengths) / max(1, units)))
    return sum(
        simulate_decode(lengths[i : i + per], prompts[i : i + per], batch, a, b, token)
        for i in range(0, len(lengths), per)
    )


def _train(costs: Costs, spec: str, train: dict, tokens: float) -> float:
    """``max_steps`` optimizer steps of ``grad_accum`` micro-batches over one packed
    trajectory of ``tokens`` tokens each (forward and backward: about three forward passes)."""
    steps = train.get("max_steps") or 0
    return steps * (train.get("grad_accum") or 1) * 3 * costs.token[spec] * tokens


def stage_seconds(command: str, stage_cfg, costs: Costs, configs: dict, tok) -> float:
    """One stage's estimated seconds (``command``: eval, sample, train, sft, effect, or ''
    for the in-process selection)."""
    from .prompts import encode_prompt

    if not command:
        return 1.0
    if command == "eval":
        ev = stage_cfg
        ids, prompts, units = _eval_problems(ev, tok)
        prior = configs["baseline"].out if Path(ev.out) != Path(configs["baseline"].out) else ev.out
        lengths = eval_lengths(Path(prior), ids, ev.max_new_tokens)
        spec = ev.model
        batch = min(ev.batch_size or ev.group_size, ev.group_size, costs.capacity.get(spec, 1)) or 1
        extra = ev.contrastive_amateur if ev.contrastive_amateur in costs.step else None
        return costs.start + costs.load[spec] + _decode(costs, spec, lengths, prompts, batch, units, extra)
    if command == "sample":
        sc = stage_cfg
        from .data import load_problems

        probs = load_problems(sc.data, sc.question_field, None, max_problems=sc.max_problems, seed=sc.seed)
        prompts = [len(encode_prompt(tok, p.question, sc.system_prompt)) for p in probs]
        lengths = [sc.max_new_tokens] * len(probs)  # a trajectory's opening: it runs to its budget
        batch = min(sc.batch_size or sc.group_size, sc.group_size)
        units = math.ceil(len(probs) / sc.group_size)
        seconds = _decode(costs, sc.expert, lengths, prompts, batch, units)
        scored = sum(prompts) + sc.max_new_tokens * len(probs)  # teacher-forced scoring by the amateur
        seconds += scored * costs.token[sc.amateur] * (1 if sc.expert_scoring == "generation" else 2)
        return costs.start + costs.load[sc.expert] + costs.load[sc.amateur] + seconds
    if command == "train":
        tc = stage_cfg
        tokens = configs["_train_tokens"]
        return costs.start + costs.load[tc.model] + _train(costs, tc.model, {**vars(tc)}, tokens)
    if command == "sft":
        sf = stage_cfg
        from .data import load_problems

        probs = load_problems(
            sf.data, sf.question_field, sf.answer_field, max_problems=sf.max_problems, seed=sf.data_seed
        )
        prompts = [len(encode_prompt(tok, p.question, sf.system_prompt)) for p in probs] * sf.samples_per_problem
        lengths = [min(PRIOR_TOKENS, sf.max_new_tokens)] * len(prompts)
        batch = min(sf.sample_batch_size or sf.group_size, sf.group_size)
        seconds = _decode(costs, sf.model, lengths, prompts, batch, math.ceil(len(prompts) / sf.group_size))
        tokens = sum(prompts) / max(1, len(prompts)) + min(PRIOR_TOKENS, sf.max_new_tokens)
        return costs.start + 2 * costs.load[sf.model] + seconds + _train(costs, sf.model, {**vars(sf)}, tokens)
    if command == "effect":
        ef = stage_cfg
        tokens = ef.problems * (configs["_prompt_tokens"] + ef.positions)
        # float32 with and without the adapter, then the evaluation path's base and tuned model
        # (in float32 the path is the reference's own model: one load, one more pass)
        same = configs["_dtype"] == "float32"
        loads, passes = (1, 3) if same else (2, 4)
        return costs.start + loads * costs.load[ef.model] + passes * tokens * costs.token[ef.model]
    return 0.0


def estimate_run(cfg, configs: dict, stages: list, costs: Costs) -> dict[str, float]:
    """Estimated seconds of each of ``stages`` ((Stage, config) pairs) of the run."""
    from .data import load_problems
    from .models import load_tokenizer
    from .prompts import encode_prompt

    tok = load_tokenizer(cfg.expert, cfg.trust_remote_code)
    probs = load_problems(cfg.data, cfg.question_field, None, max_problems=cfg.max_problems, seed=cfg.seed)
    sample_tokens = cfg.sample.get("max_new_tokens", 128)
    prompt = sum(len(encode_prompt(tok, p.question, "")) for p in probs) / max(1, len(probs))
    from .models import resolve_device, resolve_dtype

    dtype = str(resolve_dtype(cfg.dtype, resolve_device(cfg.device))).removeprefix("torch.")
    configs = {**configs, "_train_tokens": prompt + sample_tokens, "_prompt_tokens": prompt, "_dtype": dtype}
    return {stage.name: stage_seconds(stage.command, sc, costs, configs, tok) for stage, sc in stages}


def decoders(stages: list) -> dict[str, int]:
    """Each model the stages load, with the largest batch they decode it at (0: not decoded)."""
    out: dict[str, int] = {}

    def add(spec: str | None, rows: int) -> None:
        if spec:
            out[spec] = max(out.get(spec, 0), rows)

    for stage, sc in stages:
        if stage.command == "eval":
            add(sc.model, min(sc.batch_size or sc.group_size, sc.group_size))
            add(sc.contrastive_amateur, min(sc.batch_size or sc.group_size, sc.group_size))
        elif stage.command == "sample":
            add(sc.expert, min(sc.batch_size or sc.group_size, sc.group_size))
            add(sc.amateur, 0)
        elif stage.command == "sft":
            add(sc.model, min(sc.sample_batch_size or sc.group_size, sc.group_size))
        elif stage.command in ("train", "effect"):
            add(sc.model, 0)
    return out


def measure_in_subprocess(models: dict[str, int], context: int, dtype: str, device: str, budget: int) -> Costs:
    """:func:`measure` in a process of its own, so that the memory it used is free again for
    the stages (their batch sizes follow the free memory)."""
    args = json.dumps({"models": models, "context": context, "dtype": dtype, "device": device, "budget": budget})
    code = "import sys; from lightreasoner.estimate import _child; _child(sys.argv[1])"
    out = subprocess.run([sys.executable, "-c", code, args], check=True, capture_output=True, text=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    data["step"] = {k: tuple(v) for k, v in data["step"].items()}
    return Costs(**data)


def _child(args: str) -> None:
    import logging
    from dataclasses import asdict

    from .models import resolve_device, resolve_dtype

    logging.disable(logging.WARNING)
    a = json.loads(args)
    device = resolve_device(a["device"])
    costs = measure(a["models"], a["context"], resolve_dtype(a["dtype"], device), device, a["budget"])
    print(json.dumps(asdict(costs)))
