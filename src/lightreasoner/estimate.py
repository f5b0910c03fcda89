"""Before a run's first stage: how long each stage should take on this machine.

A short measurement with the run's own models, dtype and device (:func:`measure`): the time
to start a stage's process and load each model, a decode step at the batch sizes the stages
will use, and the forward pass per token of each model. The stages' sizes (problems, token
budgets, batch sizes, optimizer steps) then give each stage's time (:func:`stage_seconds`):

- a decoding stage (evaluation, trajectories) is simulated step by step as the decoder runs
  it: ``batch`` rows at a time, new prompts joining once an eighth of the rows are free, a
  step costing what a step at that many rows was measured to cost (interpolated between the
  row counts measured: the stages' own batches, capped by their problems, an eighth of each
  and one row) and a joining prompt its prefill. Each answer's length is taken from an earlier
  evaluation of the same problems in the run when there is one (the tuned evaluation after the
  baseline), else it is ``PRIOR_TOKENS`` (at most the budget);
- a training step is ``grad_accum`` micro-batches of forward and backward over one packed
  trajectory (about three forward passes);
- the adapter-effect check is its teacher-forced passes and loads (a float32 load and float32
  passes, measured as such, where the run's dtype is another).

Every figure is an estimate: :func:`table` prints them, the run writes them to
``RUN/estimates.json`` and the report puts them beside the measured times.
"""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .files import SOLUTIONS

PRIOR_TOKENS = 300
"""An answer's length in tokens (at most the budget) when the run has no evaluation of the
same problems yet: zero-shot chain-of-thought answers to GSM8K-style problems by small
instruct models run to a few hundred tokens."""

ESTIMATES_FILE = "estimates.json"


@dataclass
class Costs:
    """What the measurement found, in seconds."""

    start: float  # a stage's process: interpreter and imports
    load: dict[str, float] = field(default_factory=dict)  # model spec -> load time
    # model spec -> [(rows, seconds of one decode step at that many rows)], rows ascending
    step: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    token: dict[str, float] = field(default_factory=dict)  # model spec -> prefill seconds per token
    capacity: dict[str, int] = field(default_factory=dict)  # model spec -> rows that fit (eval budget)
    # where the run's dtype is not float32: model spec -> its load widened to float32 and its
    # prefill seconds per token in float32 (the adapter-effect check's reference)
    load_float32: dict[str, float] = field(default_factory=dict)
    token_float32: dict[str, float] = field(default_factory=dict)


def step_at(points: list[tuple[int, float]], rows: float) -> float:
    """Seconds of one decode step at ``rows`` rows, interpolated linearly between the measured
    ``points`` ((rows, seconds), rows ascending); past the largest, extended along the last
    segment's slope (or in proportion to the rows, from a single point); below the smallest,
    the smallest's time."""
    if not points:
        return 0.0
    if rows <= points[0][0]:
        return points[0][1]
    for (r0, t0), (r1, t1) in zip(points, points[1:]):
        if rows <= r1:
            return t0 + (t1 - t0) * (rows - r0) / (r1 - r0)
    r1, t1 = points[-1]
    if len(points) == 1:
        return t1 * rows / r1
    r0, t0 = points[-2]
    return t1 + max(0.0, (t1 - t0) / (r1 - r0)) * (rows - r1)


def _timed(fn, repeats: int = 2, enough: float = 1.0) -> float:
    """The best of ``repeats`` timed calls of ``fn``, stopping after one that took at least
    ``enough`` seconds (a long call's time is steady; repeating it only makes the wait longer)."""
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        took = time.perf_counter() - t0
        best = min(best, took)
        if took >= enough:
            break
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
def prefill_seconds_per_token(model, tokens: int = 256, rows: int = 1) -> float:
    """A token's share of one forward pass over ``rows`` × ``tokens`` (a prompt, or a packed
    training sequence: hundreds of rows of matrix products, where the compute binds), after a
    short warm-up pass."""

    def once(n: int) -> None:
        model(input_ids=torch.ones(rows, n, dtype=torch.long, device=model.device), logits_to_keep=1)
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)

    once(8)
    return _timed(lambda: once(tokens)) / (rows * tokens)


STAGE_IMPORTS = ("torch", "transformers", "peft", "lightreasoner.cli")
"""What a stage's process imports before its work."""


def start_seconds() -> float:
    """A stage process's start: the interpreter and the imports every stage makes."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {', '.join(STAGE_IMPORTS)}"], check=False, capture_output=True)
    return time.perf_counter() - t0


def step_points(rows: list[int], capacity: int) -> list[int]:
    """The row counts to time a model's decode step at: each batch a stage decodes at (capped
    by ``capacity``), an eighth of each (a batch's tail, as its rows finish) and one row."""
    out = {1}
    for r in rows:
        r = max(1, min(r, capacity))
        out |= {r, max(1, r // 8)}
    return sorted(out)


def measure(
    models: dict[str, list[int]],
    context: int,
    dtype,
    device,
    budget_tokens: int,
    widened=(),
    start: float | None = None,
) -> Costs:
    """Measure ``models`` (spec -> the batches its stages decode it at; empty: scoring only),
    and, for each spec in ``widened``, its load and prefill in float32. ``start``: a stage
    process's start where the caller timed one (else a process is started to time it)."""
    from .generation.sizing import batch_capacity, release_memory
    from .models import load_model

    costs = Costs(start=start_seconds() if start is None else start)
    for spec, rows in models.items():
        t0 = time.perf_counter()
        model = load_model(spec, dtype, device)
        costs.load[spec] = time.perf_counter() - t0
        costs.token[spec] = prefill_seconds_per_token(model)
        costs.capacity[spec] = batch_capacity(model, budget_tokens, 4096 if rows else 0)
        points = step_points(rows, costs.capacity[spec]) if rows else [1]
        costs.step[spec] = [(r, step_seconds(model, r, context)) for r in points]
        del model
        release_memory()
        if spec in widened and dtype != torch.float32:
            t0 = time.perf_counter()
            model = load_model(spec, torch.float32, device)
            costs.load_float32[spec] = time.perf_counter() - t0
            costs.token_float32[spec] = prefill_seconds_per_token(model)
            del model
            release_memory()
    return costs


def simulate_decode(lengths: list[int], prompt_lengths: list[int], batch: int, step, token: float) -> float:
    """Seconds the decoder takes for answers of ``lengths`` tokens, ``batch`` rows at a time,
    new prompts joining once ``batch // 8`` rows are free (as :func:`generation.greedy_decode`);
    ``step(rows)``: one decode step's seconds, ``token``: a prompt token's prefill seconds."""
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
            seconds += step(len(left))
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


def table(
    estimates: dict[str, float], actual: dict[str, float] | None = None, left: dict[str, float] | None = None
) -> str:
    """A markdown table of each stage's estimate, beside its ``actual`` time or, for a run
    that resumes, what is ``left`` of it (a column only when some stage was begun)."""
    from .report.tables import hms

    if left is not None and all(abs(left.get(s, t) - t) < 0.5 for s, t in estimates.items()):
        left = None
    extra, values = ("Actual", actual) if actual is not None else ("Left", left)
    lines = [
        "| Stage | Estimate |" + (f" {extra} |" if values is not None else ""),
        "|---|---|" + ("---|" if values else ""),
    ]
    for s, t in estimates.items():
        lines.append(f"| {s} | {hms(t)} |" + (f" {hms(values[s])} |" if values and s in values else ""))
    total = f"| **total** | {hms(sum(estimates.values()))} |"
    lines.append(total + (f" **{hms(sum(left.values()))}** |" if left is not None and actual is None else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------- a run's stages


def _eval_benchmarks(ev) -> list[tuple[str, list, int]]:
    """(benchmark, items, work units) of each benchmark an evaluation stage runs."""
    from .distributed import work_groups
    from .evaluation.benchmarks import load_items

    out = []
    for name in [b.strip() for b in ev.benchmarks.split(",") if b.strip()]:
        items = load_items(name, ev.data_dir, ev.limit, ev.seed)
        out.append((name, items, len(work_groups(items, ev.group_size))))
    return out


def _eval_items(ev) -> tuple[list, int]:
    """(items, work units) of an evaluation stage."""
    benchmarks = _eval_benchmarks(ev)
    return [it for _, items, _ in benchmarks for it in items], sum(units for *_, units in benchmarks)


def _eval_problems(ev, tok, left: bool = False) -> tuple[list[str], list[int], int]:
    """(ids, prompt lengths, units) of an evaluation stage's problems (with ``left``, those
    it has not finished yet, in as many units as they fill)."""
    from .prompts import encode_prompt
    from .records import finished_problems

    ids, prompts, units = [], [], 0
    for name, items, groups in _eval_benchmarks(ev):
        per = max(1, math.ceil(len(items) / max(1, groups)))
        if left:
            done = {str(k) for k in finished_problems(Path(ev.out) / f"{name}.jsonl", key="id")}
            items = [it for it in items if str(it.id) not in done]
        units += math.ceil(len(items) / per)
        ids += [it.id for it in items]
        prompts += [len(encode_prompt(tok, it.question, ev.system_prompt)) for it in items]
    return ids, prompts, units


def _not_done(problems: list, out: Path, left: bool) -> list:
    """``problems`` without those the output ``out`` has finished (``left``), else all."""
    from .records import finished_problems

    done = finished_problems(out) if left else set()
    return [p for p in problems if p.index not in done]


def _sample_problems(sc) -> list:
    from .data import load_problems

    return load_problems(sc.data, sc.question_field, None, max_problems=sc.max_problems, seed=sc.seed)


def _sft_problems(sf) -> list:
    from .data import load_problems

    return load_problems(sf.data, sf.question_field, sf.answer_field, max_problems=sf.max_problems, seed=sf.data_seed)


def batches(command: str, sc) -> list[tuple[str, int]]:
    """(model spec, rows) of each model a stage loads: the rows it decodes at once (its batch,
    capped by the rows a work unit has; 0: the model is only scored or trained)."""
    if command == "eval":
        items, units = _eval_items(sc)
        per_unit = max(1, math.ceil(len(items) / max(1, units)))
        rows = min(sc.batch_size or sc.group_size, sc.group_size, per_unit)
        return [(sc.model, rows)] + ([(sc.contrastive_amateur, rows)] if sc.contrastive_amateur else [])
    if command == "sample":
        n = len(_sample_problems(sc))
        return [(sc.expert, max(1, min(sc.batch_size or sc.group_size, sc.group_size, n))), (sc.amateur, 0)]
    if command == "sft":
        wanted = sc.group_size * sc.samples_per_problem
        n = len(_sft_problems(sc)) * sc.samples_per_problem
        return [(sc.model, max(1, min(sc.sample_batch_size or wanted, wanted, n)))]
    if command in ("train", "effect"):
        return [(sc.model, 0)]
    return []


def _decode(costs: Costs, spec: str, lengths, prompts, batch: int, units: int, extra: str | None = None) -> float:
    token = costs.token[spec] + (costs.token[extra] if extra else 0.0)

    def step(rows: int) -> float:  # with a second model decoding alongside (contrastive decoding)
        return step_at(costs.step[spec], rows) + (step_at(costs.step[extra], rows) if extra else 0.0)

    per = max(1, math.ceil(len(lengths) / max(1, units)))
    return sum(
        simulate_decode(lengths[i : i + per], prompts[i : i + per], batch, step, token)
        for i in range(0, len(lengths), per)
    )


RECORDS_PER_TRAJECTORY = 12
"""Selected steps of one 128-token trajectory opening when a run has not sampled yet (the
default run kept 3,724 records of 320 trajectories at β 0.4: 11.6 each)."""


def record_lengths(samples: Path) -> tuple[int, dict | None]:
    """(records, {trajectory: (prompt tokens, [prefix tokens of each record])}) of a selected
    records file, the second None when the records do not carry their token ids (the release's
    format). Read once per version of the file (its path, size and time): a run's estimate
    asks for a training stage's records several times, and a pool's are ~90 MB."""
    st = samples.stat()
    return _record_lengths(str(samples), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _record_lengths(path: str, size: int, mtime_ns: int) -> tuple[int, dict | None]:
    lengths: dict | None = {}
    records = 0
    with open(path) as f:
        for line in f:
            records += 1
            if lengths is None:
                continue
            r = json.loads(line)
            if "prompt_token_ids" not in r or "prefix_token_ids" not in r:
                lengths = None
                continue
            key = r.get("problem_index", r.get("prompt_id"))
            lengths.setdefault(key, (len(r["prompt_token_ids"]), []))[1].append(len(r["prefix_token_ids"]))
    return records, lengths


def packed_tokens(samples: Path, batch_size: int, order: str, pack: bool) -> float | None:
    """Mean tokens of one training micro-batch of ``batch_size`` records of ``samples``: in
    ``trajectory`` order with packing, the records of each trajectory by prefix length and
    one sequence (prompt + the longest prefix) for each trajectory a micro-batch spans;
    otherwise one sequence a record (a random draw seldom meets two of one trajectory).
    None when the records do not carry their token ids (the release's format)."""
    records, lengths = record_lengths(samples)
    if not records or lengths is None:
        return None
    if order != "trajectory" or not pack:
        return batch_size * sum(p * len(v) + sum(v) for p, v in lengths.values()) / records
    stream = [(k, p) for k, (_, v) in lengths.items() for p in sorted(v)]
    total = 0
    for i in range(0, len(stream), batch_size):
        longest: dict = {}
        for k, p in stream[i : i + batch_size]:
            longest[k] = max(longest.get(k, 0), p)
        total += sum(lengths[k][0] + p for k, p in longest.items())
    return total / math.ceil(len(stream) / batch_size)


def optimizer_steps(train: dict, examples: float) -> int:
    """A training stage's optimizer steps: ``max_steps``, or with ``epochs`` set (which wins, as
    in training) that many passes over ``examples`` in global batches of ``batch_size ×
    grad_accum``."""
    if train.get("epochs"):
        per_step = (train.get("batch_size") or 1) * (train.get("grad_accum") or 1)
        return math.ceil(train["epochs"] * examples / per_step)
    return max(0, train.get("max_steps") or 0)


def _train(costs: Costs, spec: str, train: dict, tokens: float, examples: float, left: bool = False) -> float:
    """The optimizer steps (:func:`optimizer_steps`; with ``left``, those after the checkpoint
    the stage resumes from) of ``grad_accum`` micro-batches of ``tokens`` tokens each (forward
    and backward: about three forward passes), the first step counted twice: it also allocates
    the optimizer's state and the autograd buffers (the quick run's first step took 9.5 s, its
    second 5 s, on a 2-core Xeon in fp32)."""
    from .records import checkpoint_step

    steps = optimizer_steps(train, examples)
    if left:
        steps = max(0, steps - checkpoint_step(train["output_dir"]))
    return (steps + 1 if steps else 0) * (train.get("grad_accum") or 1) * 3 * costs.token[spec] * tokens


def _rows(costs: Costs, command: str, sc) -> int:
    """The rows a stage's first model decodes at, capped by what fits in memory (models that
    decode together, as in contrastive decoding, share it: each row holds a cache in each)."""
    models = batches(command, sc)
    rows = models[0][1]
    fits = [costs.capacity[spec] for spec, n in models if n and costs.capacity.get(spec)]
    return max(1, min(rows, int(1 / sum(1 / f for f in fits) + 1e-9) if fits else rows))


def stage_seconds(command: str, stage_cfg, costs: Costs, configs: dict, tok, left: bool = False) -> float:
    """One stage's estimated seconds (``command``: eval, sample, train, sft, effect, or ''
    for the in-process selection); with ``left``, of what a resumed stage has still to do
    (the problems its work units have not finished, the optimizer steps after its last
    checkpoint; its start and loads in full)."""
    from .prompts import encode_prompt

    if not command:
        return 1.0
    if command == "eval":
        ev = stage_cfg
        ids, prompts, units = _eval_problems(ev, tok, left)
        prior = configs["baseline"].out if Path(ev.out) != Path(configs["baseline"].out) else ev.out
        lengths = eval_lengths(Path(prior), ids, ev.max_new_tokens)
        extra = ev.contrastive_amateur if ev.contrastive_amateur in costs.step else None
        decode = _decode(costs, ev.model, lengths, prompts, _rows(costs, command, ev), units, extra)
        return costs.start + costs.load[ev.model] + (costs.load[extra] if extra else 0.0) + decode
    if command == "sample":
        sc = stage_cfg
        probs = _not_done(_sample_problems(sc), Path(sc.out), left)
        prompts = [len(encode_prompt(tok, p.question, sc.system_prompt)) for p in probs]
        lengths = [sc.max_new_tokens] * len(probs)  # a trajectory's opening: it runs to its budget
        units = math.ceil(len(probs) / sc.group_size)
        seconds = _decode(costs, sc.expert, lengths, prompts, _rows(costs, command, sc), units)
        scored = sum(prompts) + sc.max_new_tokens * len(probs)  # teacher-forced scoring by the amateur
        seconds += scored * costs.token[sc.amateur] * (1 if sc.expert_scoring == "generation" else 2)
        return costs.start + costs.load[sc.expert] + costs.load[sc.amateur] + seconds
    if command == "train":
        tc = stage_cfg  # a micro-batch is one trajectory's records, packed into one sequence
        samples = Path(tc.samples)
        records = record_lengths(samples)[0] if samples.is_file() else RECORDS_PER_TRAJECTORY * configs["_problems"]
        # a micro-batch's tokens: from the records once selected, else a whole trajectory's opening
        packed = packed_tokens(samples, tc.batch_size, tc.order, tc.pack) if samples.is_file() else None
        seconds = _train(costs, tc.model, vars(tc), packed or configs["_train_tokens"], records, left)
        return costs.start + costs.load[tc.model] + seconds
    if command == "sft":
        sf = stage_cfg
        probs = _sft_problems(sf)
        kept = len(probs) * sf.keep_per_problem  # at most ``keep_per_problem`` solutions are kept a problem
        solutions = Path(sf.output_dir) / SOLUTIONS  # published: the sampling is over
        probs = [] if left and solutions.exists() else _not_done(probs, solutions, left)
        prompts = [len(encode_prompt(tok, p.question, sf.system_prompt)) for p in probs] * sf.samples_per_problem
        lengths = [min(PRIOR_TOKENS, sf.max_new_tokens)] * len(prompts)
        units = math.ceil(len(probs) / sf.group_size)
        seconds = _decode(costs, sf.model, lengths, prompts, _rows(costs, command, sf), units)
        # a micro-batch is ``batch_size`` solutions
        prompt = sum(prompts) / max(1, len(prompts)) if prompts else configs["_prompt_tokens"]
        tokens = sf.batch_size * (prompt + min(PRIOR_TOKENS, sf.max_new_tokens))
        return costs.start + 2 * costs.load[sf.model] + seconds + _train(costs, sf.model, vars(sf), tokens, kept, left)
    if command == "effect":
        ef = stage_cfg
        tokens = ef.problems * (configs["_prompt_tokens"] + ef.positions)
        # float32 with and without the adapter, then the evaluation path's base and tuned model
        # (in float32 the path is the reference's own model: one load, one more pass)
        if configs["_dtype"] == "float32":
            return costs.start + costs.load[ef.model] + 3 * tokens * costs.token[ef.model]
        wide_load = costs.load_float32.get(ef.model, costs.load[ef.model])
        wide_token = costs.token_float32.get(ef.model, costs.token[ef.model])
        return costs.start + wide_load + costs.load[ef.model] + 2 * tokens * (wide_token + costs.token[ef.model])
    return 0.0


def estimate_run(cfg, configs: dict, stages: list, costs: Costs, left: bool = False) -> dict[str, float]:
    """Estimated seconds of each of ``stages`` ((Stage, config) pairs) of the run (with
    ``left``, of what each has still to do: :func:`stage_seconds`)."""
    from .data import load_problems
    from .models import load_tokenizer
    from .prompts import encode_prompt

    tok = load_tokenizer(cfg.expert, cfg.trust_remote_code)
    probs = load_problems(cfg.data, cfg.question_field, None, max_problems=cfg.max_problems, seed=cfg.seed)
    sample_tokens = cfg.sample.get("max_new_tokens", 128)
    prompt = sum(len(encode_prompt(tok, p.question, "")) for p in probs) / max(1, len(probs))
    from .models import dtype_name, resolve_device, resolve_dtype

    dtype = dtype_name(resolve_dtype(cfg.dtype, resolve_device(cfg.device)))
    configs = {
        **configs,
        "_train_tokens": prompt + sample_tokens,
        "_prompt_tokens": prompt,
        "_dtype": dtype,
        "_problems": len(probs),
    }
    return {stage.name: stage_seconds(stage.command, sc, costs, configs, tok, left) for stage, sc in stages}


def decoders(stages: list) -> dict[str, list[int]]:
    """Each model the stages load, with the batches they decode it at (empty: not decoded)."""
    out: dict[str, set[int]] = {}
    for stage, sc in stages:
        for spec, rows in batches(stage.command, sc):
            if spec:
                out.setdefault(spec, set()).update([rows] if rows else [])
    return {spec: sorted(rows) for spec, rows in out.items()}


def widened(stages: list) -> list[str]:
    """The models an adapter-effect stage loads in float32 too (its reference)."""
    return sorted({sc.model for stage, sc in stages if stage.command == "effect"})


def measure_in_subprocess(
    models: dict[str, list[int]], context: int, dtype: str, device: str, budget: int, widened=()
) -> Costs:
    """:func:`measure` in a process of its own, so that the memory it used is free again for
    the stages (their batch sizes follow the free memory)."""
    code = "import sys; from lightreasoner.estimate import _child; _child(sys.argv[1])"
    a = {"models": models, "context": context, "dtype": dtype, "device": device, "budget": budget}
    # the child's own start (interpreter and a stage's imports, from this moment) is a stage's start
    args = json.dumps({**a, "widened": list(widened), "launched": time.time()})
    out = subprocess.run([sys.executable, "-c", code, args], check=True, capture_output=True, text=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    data["step"] = {k: [(int(r), float(t)) for r, t in v] for k, v in data["step"].items()}
    return Costs(**data)


def _child(args: str) -> None:
    import importlib
    import logging
    from dataclasses import asdict

    for name in STAGE_IMPORTS:
        importlib.import_module(name)
    a = json.loads(args)
    start = time.time() - a["launched"]
    from .models import resolve_device, resolve_dtype

    logging.disable(logging.WARNING)
    device = resolve_device(a["device"])
    dtype = resolve_dtype(a["dtype"], device)
    costs = measure(a["models"], a["context"], dtype, device, a["budget"], a["widened"], start)
    print(json.dumps(asdict(costs)))
