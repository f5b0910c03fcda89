"""Stage 1: expert trajectories, the two models' distributions at every step, soft labels.

Fast path: the expert decodes many problems together (:func:`generation.greedy_decode`) and
its raw logits at each generated position are kept, so the expert runs once. As
trajectories finish, the amateur scores a few of them in ONE teacher-forced forward pass
(a causal LM's logits at position t depend only on ids ≤ t, so that pass gives the
distribution at every step) and their steps are selected and labelled.
``expert_scoring="teacher-forced"`` also runs the expert a second time that way;
``reference_scoring`` runs one forward per prefix for both models, the way the original
release scores, and exists to validate the fast path.

The problems are cut into work groups (``group_size``, :mod:`distributed`): each group is
decoded as its own batch (refilled within the group), scored in the order its trajectories
finish and committed whole, so the records do not depend on the number of processes or on
interruptions. A backend without the decoder's own logits (``backend="vllm"``, GPU)
generates all of a rank's trajectories first and is shut down; then both models score them
group by group in teacher-forced passes. A rerun after an
interruption redoes the groups not yet committed (and generates them again).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from . import contrast, generation
from .config import SampleConfig
from .data import Problem, load_problems
from .distributed import (
    barrier,
    main_lock,
    open_shard,
    rank_groups,
    runtime,
    unit_fields,
    work_groups,
)
from .errors import LightReasonerError
from .generation import (
    Completion,
    Request,
    choose_backend,
    greedy_decode,
    note_memory_bound,
    open_generator,
    release_memory,
)
from .generation.decoder import attention_mask_for, last_positions, require_finite
from .io import (
    atomic_open,
    atomic_write_json,
    file_fingerprint,
    friendly_os_errors,
    model_fingerprint,
)
from .models import (
    ModelSource,
    check_pair,
    dtype_name,
    end_token_ids,
    load_model,
    load_tokenizer,
    logit_vocab_size,
    resolve_device,
    resolve_dtype,
    resolve_source,
)
from .prompts import encode_prompt
from .records import RUNTIME, ResumableWriter, SoftLabelRecord, check_resume_fingerprint, summary_path

log = logging.getLogger(__name__)


@dataclass
class Trajectory:
    """An expert trajectory: ``prompt_ids`` (no padding) and greedy ``generated_ids`` (up to
    and including the first end token, at most ``max_new_tokens``); ``expert_logits``
    ``[len(generated_ids), vocab]`` are the raw logits that chose them, when kept."""

    problem: Problem
    prompt_ids: list[int]
    generated_ids: list[int]
    expert_logits: torch.Tensor | None = None


@dataclass
class StepLabel:
    """A selected step ``step`` (= tokens of the prefix) with its soft label."""

    step: int
    token_ids: list[int]
    weights: list[float]
    kl: float
    expert_weights: list[float] | None = None
    top_ids: list[int] | None = None  # see :func:`shown_tokens`
    top_expert_probs: list[float] | None = None
    top_amateur_probs: list[float] | None = None


TOP_K = 5  # each model's most likely tokens a record keeps for the report's step view


def shown_tokens(pe: torch.Tensor, pa: torch.Tensor, mask: torch.Tensor, k: int = TOP_K) -> list[tuple]:
    """Per row of ``pe``, ``pa`` ``[rows, shared]`` (probabilities) and the plausible ``mask``:
    ``(ids, expert_probs, amateur_probs)`` of the expert's and the amateur's ``k`` most likely
    tokens and the plausible set, the expert's likeliest first (5 significant digits)."""
    union = mask.clone()
    k = min(k, pe.shape[-1])
    union.scatter_(1, pe.topk(k).indices, True)
    union.scatter_(1, pa.topk(k).indices, True)
    out = []
    for i in range(pe.shape[0]):
        ids = union[i].nonzero().flatten()
        ids = ids[pe[i, ids].argsort(descending=True, stable=True)]
        out.append((ids.tolist(), *([float(f"{x:.5g}") for x in probs[i, ids].tolist()] for probs in (pe, pa))))
    return out


def generate_trajectories(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[Problem],
    system_prompt: str,
    max_new_tokens: int,
    batch_size: int = 8,
    keep_logits: bool = False,
    on_result: Callable[[Trajectory], None] | None = None,
) -> list[Trajectory]:
    """Greedy trajectories (pure argmax of raw logits, see :mod:`generation.decoder`), stopping at the
    end of the assistant's turn; ``on_result`` gets each one as soon as it is finished (with
    its ``expert_logits`` when kept; the returned trajectories then carry none)."""
    prompts = [encode_prompt(tokenizer, p.question, system_prompt) for p in problems]
    stops = end_token_ids(model.generation_config.eos_token_id, tokenizer, chat_ends=True)

    def wrap(i: int, comp: Completion) -> Trajectory:
        return Trajectory(problems[i], prompts[i], comp.ids, comp.logits)

    callback = None if on_result is None else (lambda i, comp: on_result(wrap(i, comp)))
    comps = greedy_decode(
        model, prompts, max_new_tokens, stops, tokenizer.pad_token_id, batch_size, keep_logits, on_result=callback
    )
    return [wrap(i, c) for i, c in enumerate(comps)]


def truncate_to_vocab(trajs: list[Trajectory], vocab: int) -> int:
    """Cut each trajectory before its first id ≥ ``vocab`` (an id the amateur cannot embed,
    e.g. an unused padding row of the expert's output layer). Returns how many were cut."""
    cut = 0
    for t in trajs:
        bad = next((i for i, tok in enumerate(t.generated_ids) if tok >= vocab), None)
        if bad is not None:
            t.generated_ids = t.generated_ids[:bad]
            if t.expert_logits is not None:
                t.expert_logits = t.expert_logits[:bad]
            cut += 1
    return cut


def _batch_tensors(trajs: list[Trajectory], pad: int, device) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Layout ``[left-padded prompt | generated, right-padded]``: ids, mask ``[B, P+G]``, P, G."""
    width = max(len(t.prompt_ids) for t in trajs)
    gmax = max(len(t.generated_ids) for t in trajs)
    rows, masks = [], []
    for t in trajs:
        lp, lg = width - len(t.prompt_ids), gmax - len(t.generated_ids)
        rows.append([pad] * lp + t.prompt_ids + t.generated_ids + [pad] * lg)
        masks.append([0] * lp + [1] * (len(t.prompt_ids) + len(t.generated_ids)) + [0] * lg)
    return torch.tensor(rows, device=device), torch.tensor(masks, device=device), width, gmax


@torch.inference_mode()
def teacher_forced_logits(model: PreTrainedModel, trajs: list[Trajectory], pad: int) -> list[torch.Tensor]:
    """One forward over prompt + trajectory per sequence (batched).

    Returns, per trajectory, the raw logits ``[n, vocab]`` (model dtype) where row s is the
    distribution over ``generated_ids[s]`` given the prompt and ``generated_ids[:s]``.
    """
    ids, mask, width, gmax = _batch_tensors(trajs, pad, model.device)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    keep = last_positions(gmax + 1, ids.shape[1], ids.device)
    attention = attention_mask_for(model, mask, ids.shape[1])  # left-padding queries see themselves
    logits = model(
        input_ids=ids, attention_mask=attention, position_ids=position_ids, logits_to_keep=keep
    ).logits  # [B, G+1, V]; index j is position width-1+j, predicting generated token j
    out = [logits[i, : len(t.generated_ids)] for i, t in enumerate(trajs)]
    for x in out:
        require_finite(x, "teacher-forced scoring")
    return out


@torch.inference_mode()
def reference_logits(model: PreTrainedModel, traj: Trajectory, start: int) -> torch.Tensor:
    """One forward per prefix (no padding, no cache): ``[n, vocab]``, rows < ``start`` are NaN."""
    rows = []
    for s in range(len(traj.generated_ids)):
        if s < start:
            rows.append(None)
            continue
        ids = torch.tensor([traj.prompt_ids + traj.generated_ids[:s]], device=model.device)
        rows.append(model(input_ids=ids).logits[0, -1].float())
    vocab = next(r for r in rows if r is not None).shape[-1] if any(r is not None for r in rows) else 1
    return torch.stack([torch.full((vocab,), math.nan, device=model.device) if r is None else r for r in rows])


def label_steps(
    expert_logits: torch.Tensor,
    amateur_logits: torch.Tensor,
    beta: float,
    alpha: float,
    start: int = 1,
    use_contrast: bool = True,
    with_expert_weights: bool = False,
) -> tuple[list[StepLabel], list[float]]:
    """Select steps and build soft labels from per-step logits ``[n, V_E]``, ``[n, V_A]``.

    Softmax over each model's full logits, then compare over the shared ids
    ``[:min(V_E, V_A)]``. Returns the selected steps and the KL of every scored step.
    ``with_expert_weights`` also gives each label the expert's own renormalised weights
    over the same tokens (the plausible set depends on the expert only).
    """
    shared = min(expert_logits.shape[-1], amateur_logits.shape[-1])
    pe = torch.softmax(expert_logits[start:].float(), -1)[:, :shared]
    pa = torch.softmax(amateur_logits[start:].float(), -1)[:, :shared]
    if pe.shape[0] == 0:
        return [], []
    kl = contrast.kl_divergence(pe, pa)
    rows = contrast.select_steps(kl, beta).nonzero().flatten()
    if rows.numel() == 0:
        return [], kl.tolist()
    pe_k, pa_k = pe[rows], pa[rows]  # [k, shared]
    mask = contrast.plausible_mask(pe_k, alpha)
    if use_contrast:
        w = contrast.contrastive_weights(pe_k, pa_k, mask)
    else:
        w = contrast.expert_weights(pe_k, mask)
    we = contrast.expert_weights(pe_k, mask) if with_expert_weights else None
    labels = []
    for i, (row, top) in enumerate(zip(rows.tolist(), shown_tokens(pe_k, pa_k, mask))):
        ids = mask[i].nonzero().flatten()
        own = None if we is None else we[i, ids].tolist()
        labels.append(StepLabel(row + start, ids.tolist(), w[i, ids].tolist(), float(kl[row]), own, *top))
    return labels, kl.tolist()


def to_records(
    traj: Trajectory, labels: list[StepLabel], tokenizer: PreTrainedTokenizerBase, expert: str, amateur: str
) -> list[SoftLabelRecord]:
    """Records in the release's layout plus the exact ids training needs, the token the expert
    chose and both models' likeliest tokens (for the report's view)."""
    gen = traj.generated_ids
    return [
        SoftLabelRecord(
            prompt_id=traj.problem.question,
            step=lab.step,
            prefix=tokenizer.decode(gen[: lab.step]),
            tokens=tokenizer.batch_decode([[t] for t in lab.token_ids]),
            token_ids=lab.token_ids,
            weights=lab.weights,
            kl_divergence=lab.kl,
            problem_index=traj.problem.index,
            question=traj.problem.question,
            prompt_token_ids=traj.prompt_ids,
            prefix_token_ids=gen[: lab.step],
            expert=expert,
            amateur=amateur,
            expert_weights=lab.expert_weights,
            next_token_id=gen[lab.step],
            top_ids=lab.top_ids,
            top_tokens=None if lab.top_ids is None else tokenizer.batch_decode([[t] for t in lab.top_ids]),
            top_expert_probs=lab.top_expert_probs,
            top_amateur_probs=lab.top_amateur_probs,
        )
        for lab in labels
    ]


def fingerprint(cfg: SampleConfig) -> dict:
    """What must not change between a run and its resumption."""
    keys = (
        "expert",
        "amateur",
        "data",
        "question_field",
        "split",
        "beta",
        "alpha",
        "max_new_tokens",
        "skip_first_step",
        "contrast",
        "expert_scoring",
        "system_prompt",
        "seed",
        "dtype",
    )
    fp = {k: getattr(cfg, k) for k in keys}
    fp["beta"] = repr(fp["beta"])
    fp["expert"], fp["amateur"] = model_fingerprint(cfg.expert), model_fingerprint(cfg.amateur)
    fp["data_content"] = file_fingerprint(cfg.data)["sha256"] if Path(cfg.data).is_file() else None
    fp["max_problems"] = cfg.max_problems
    if cfg.backend != "hf":  # only when set: runs made before the option resume
        fp["backend"] = cfg.backend
    if cfg.expert_weights:  # only when set: runs made before the option resume
        fp["expert_weights"] = True
    if cfg.batch_invariant:  # only when set
        fp["batch_invariant"] = True
    fp |= unit_fields(cfg.group_size)
    fp[RUNTIME] = runtime(batch_size=cfg.batch_size, score_batch_size=cfg.score_batch_size)
    return fp


def validate(cfg: SampleConfig) -> None:
    if not (0.0 < cfg.alpha <= 1.0):
        raise LightReasonerError(f"--alpha {cfg.alpha}: must be in (0, 1]")
    if math.isnan(cfg.beta):
        raise LightReasonerError("--beta: must be a number (or -inf to keep every step)")
    if cfg.max_new_tokens < 1:
        raise LightReasonerError("--max-new-tokens: must be at least 1")
    if cfg.batch_size < 0:
        raise LightReasonerError("--batch-size: must be at least 1 (or 0: as many as fit in memory)")
    if cfg.score_batch_size < 1:
        raise LightReasonerError("--score-batch-size: must be at least 1")
    if cfg.group_size < 1:
        raise LightReasonerError("--group-size: must be at least 1")
    if cfg.expert_scoring not in ("generation", "teacher-forced"):
        raise LightReasonerError(f"--expert-scoring {cfg.expert_scoring!r}: choose generation or teacher-forced")
    if cfg.max_problems is not None and cfg.max_problems < 1:
        raise LightReasonerError("--max-problems: must be at least 1")
    if cfg.backend != "auto" and not generation.backend(cfg.backend).step_logits and cfg.reference_scoring:
        raise LightReasonerError("--reference-scoring is a check of the hf backend's fast path; use --backend hf")


def expert_request(cfg: SampleConfig, src_e: ModelSource, tok=None, dtype: str | None = None) -> Request:
    """What sampling asks of a generation backend: the expert's greedy trajectories."""
    return Request(
        model=src_e,
        tokenizer=tok,
        max_new_tokens=cfg.max_new_tokens,
        dtype=dtype or cfg.dtype,
        device=cfg.device,
        role="expert",
        batch_size=cfg.batch_size,
        allow_pickle=cfg.allow_pickle,
        trust_remote_code=cfg.trust_remote_code,
        step_logits=cfg.reference_scoring,
        tensor_parallel_size=cfg.tensor_parallel_size,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
    )


def resolve_backend(cfg: SampleConfig, src_e: ModelSource) -> SampleConfig:
    """The backend that decodes the expert's trajectories (:func:`generation.choose_backend`).
    ``auto`` is vLLM where it is installed, a GPU is visible and it can serve the run (not a
    GGUF expert, no reference scoring, a CUDA device, no remote code), else hf; a named
    backend that cannot stops here. A backend without the decoder's own logits (vLLM) has the
    expert's distributions come from a teacher-forced pass."""
    request = expert_request(cfg, src_e)
    generation.check_options(request)
    name = choose_backend(cfg.backend, request)
    if generation.backend(name).step_logits:
        return replace(cfg, backend=name)
    if cfg.expert_scoring != "teacher-forced":
        log.info("--backend %s: the expert's distributions come from a teacher-forced pass", name)
    return replace(cfg, backend=name, expert_scoring="teacher-forced")


def sample(cfg: SampleConfig, show_progress: bool = True) -> dict:
    """Run stage 1 end to end; returns the summary (also saved beside ``cfg.out``)."""
    validate(cfg)
    if cfg.batch_invariant:  # before anything imports an engine
        generation.request_batch_invariance()
    problems = load_problems(cfg.data, cfg.question_field, None, cfg.max_problems, cfg.split, cfg.seed)
    src_e = resolve_source(cfg.expert, cfg.allow_pickle, "expert")
    asked = cfg.backend
    cfg = resolve_backend(cfg, src_e)
    generation.settle_batch_invariance(cfg.batch_invariant, asked, cfg.backend)
    src_a = resolve_source(cfg.amateur, cfg.allow_pickle, "amateur")
    tok = load_tokenizer(src_e, cfg.trust_remote_code)
    tok_a = load_tokenizer(src_a, cfg.trust_remote_code)
    check_pair(tok, tok_a)

    with main_lock(cfg.out), friendly_os_errors(cfg.out):
        try:
            return _sample_locked(cfg, problems, src_e, src_a, tok, show_progress)
        except torch.OutOfMemoryError:
            raise LightReasonerError(
                "out of memory even with one trajectory at a time; finished problems are kept in "
                f"{cfg.out}.partial. Lower --max-new-tokens, use --dtype bfloat16 on a GPU, or a larger device, "
                "then run the same command again."
            ) from None


def _sample_locked(cfg: SampleConfig, problems: list[Problem], src_e, src_a, tok, show_progress: bool) -> dict:
    fp = fingerprint(cfg)
    writer, rank, world = open_shard(cfg.out, fp, cfg.overwrite)
    if writer.complete:
        spath = summary_path(cfg.out)
        try:
            summary = json.loads(spath.read_text())
        except (OSError, ValueError):
            raise LightReasonerError(
                f"{cfg.out} exists but its summary {spath} is missing or unreadable; pass --overwrite to sample again"
            ) from None
        before = summary.get("fingerprint") or {}
        check_resume_fingerprint(
            before,
            fp,
            cfg.out,
            f"{cfg.out} already holds samples made with other inputs or settings",
            "choose another --out or pass --overwrite",
            warn=False,
        )
        log.info("%s is already complete; nothing to do (use --overwrite to redo it)", cfg.out)
        return summary
    todo = rank_groups(work_groups(problems, cfg.group_size), lambda p: p.index in writer.done, rank, world)

    if todo:
        _sample_groups(cfg, todo, len(problems), writer, src_e, src_a, tok, show_progress and rank == 0)
    barrier()
    if rank != 0:  # the main process merges the shards and writes the summary
        return {}
    writer.refresh()
    summary = summarize(cfg, list(writer.done.values()))
    if summary["selected_steps"] == 0:
        writer.discard()
        raise LightReasonerError(
            f"no step reached KL >= beta = {cfg.beta} (largest KL seen: {summary['kl_quantiles']['max']:.4f}); "
            "nothing was written. Lower --beta."
        )
    writer.finish(summary)
    return summary


def forced_in_pieces(model: PreTrainedModel, trajs: list[Trajectory], pad: int) -> list[torch.Tensor]:
    """:func:`teacher_forced_logits`, one trajectory at a time if the batch runs out of memory."""
    try:
        return teacher_forced_logits(model, trajs, pad)
    except torch.OutOfMemoryError:
        if len(trajs) == 1:
            raise
    # out of the except block: the traceback, which holds the failed pass's tensors, is gone
    log.warning("out of memory scoring %d trajectories together; scoring them one by one", len(trajs))
    release_memory()
    return [x for t in trajs for x in teacher_forced_logits(model, [t], pad)]


def _sample_groups(
    cfg: SampleConfig,
    groups: list[list[Problem]],
    total: int,
    writer: ResumableWriter,
    src_e: ModelSource,
    src_a: ModelSource,
    tok: PreTrainedTokenizerBase,
    show_progress: bool,
) -> None:
    """Generate, score and commit each of ``groups`` as a unit of its own, in order."""
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    todo = [p for g in groups for p in g]
    ready, generation_s = {}, None
    if not generation.backend(cfg.backend).step_logits:  # all trajectories first; the engine is gone before scoring
        t0 = time.perf_counter()
        trajs = engine_trajectories(cfg, todo, src_e, tok, dtype_name(dtype), show_progress)
        ready = {t.problem.index: t for t in trajs}
        generation_s = (time.perf_counter() - t0) / len(trajs)
    expert = load_model(src_e, dtype, device, cfg.allow_pickle, cfg.trust_remote_code)
    amateur = load_model(src_a, dtype, device, cfg.allow_pickle, cfg.trust_remote_code)
    if not ready:
        longest = max(len(encode_prompt(tok, p.question, cfg.system_prompt)) for p in todo) + cfg.max_new_tokens
        wanted = min(cfg.batch_size or cfg.group_size, cfg.group_size)
        note_memory_bound(expert, longest, wanted, cfg.expert_scoring == "generation" and not cfg.reference_scoring)
    bar = tqdm(total=total, initial=total - len(todo), desc="sampling", unit="problem", disable=not show_progress)
    for group in groups:
        given = [ready[p.index] for p in group] if ready else None
        results = sample_group(cfg, group, expert, amateur, tok, given, generation_s)
        writer.commit_group([r for r in results if r[0] not in writer.done])  # (a group is committed whole)
        bar.update(len(group))
        bar.set_postfix(records=sum(e["records"] for e in writer.done.values()))
    bar.close()


def sample_group(
    cfg: SampleConfig,
    group: list[Problem],
    expert: PreTrainedModel,
    amateur: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    given: list[Trajectory] | None = None,
    generation_s: float | None = None,
) -> list[tuple[int, list[SoftLabelRecord], dict]]:
    """One work unit: the group's trajectories (decoded together, ``cfg.batch_size`` at a time,
    or ``given``), scored ``cfg.score_batch_size`` at a time in the order they finish. Returns
    ``(problem index, records, stats)`` in the group's order."""
    start = 1 if cfg.skip_first_step else 0
    shared = min(logit_vocab_size(expert), logit_vocab_size(amateur))
    pad = tok.pad_token_id
    from_generation = cfg.expert_scoring == "generation" and not cfg.reference_scoring
    out: dict[int, tuple[int, list[SoftLabelRecord], dict]] = {}
    buffer: list[Trajectory] = []
    clock = {"mark": time.perf_counter()}

    def score(trajs: list[Trajectory]) -> None:
        t1 = time.perf_counter()
        if truncate_to_vocab(trajs, shared):
            log.warning("a trajectory used ids outside the amateur's vocabulary; cut before them")
        if cfg.reference_scoring:
            le = [reference_logits(expert, t, start) for t in trajs]
            la = [reference_logits(amateur, t, start) for t in trajs]
        else:
            la = forced_in_pieces(amateur, trajs, pad)
            le = [t.expert_logits for t in trajs] if from_generation else forced_in_pieces(expert, trajs, pad)
        done = []
        for t, e, a in zip(trajs, le, la):
            labels, kls = label_steps(e, a, cfg.beta, cfg.alpha, start, cfg.contrast, cfg.expert_weights)
            done.append((t, to_records(t, labels, tok, cfg.expert, cfg.amateur), kls))
        t2 = time.perf_counter()
        for t, recs, kls in done:
            stats = {
                "trajectory_tokens": len(t.generated_ids),
                "kl": [round(k, 5) for k in kls],
                "generation_s": generation_s if generation_s is not None else (t1 - clock["mark"]) / len(trajs),
                "scoring_s": (t2 - t1) / len(trajs),
            }
            out[t.problem.index] = (t.problem.index, recs, stats)
        clock["mark"] = time.perf_counter()

    def finished(traj: Trajectory) -> None:
        buffer.append(traj)
        if len(buffer) >= cfg.score_batch_size:  # also bounds the [chunk, steps, vocab] logits held
            score(buffer[:])
            buffer.clear()

    if given is not None:
        for traj in given:
            finished(traj)
    else:
        generate_trajectories(
            expert, tok, group, cfg.system_prompt, cfg.max_new_tokens, cfg.batch_size, from_generation, finished
        )
    if buffer:
        score(buffer)
    return [out[p.index] for p in group]


def engine_trajectories(
    cfg: SampleConfig,
    problems: list[Problem],
    src: ModelSource,
    tok: PreTrainedTokenizerBase,
    dtype: str,
    show_progress: bool,
) -> list[Trajectory]:
    """The expert's greedy trajectories from the run's generation backend (an engine such as
    vLLM, with the settings of :mod:`generation.decoder`), which is shut down before this returns."""
    log.info("generating %d trajectories with %s; they are scored and committed afterwards", len(problems), cfg.backend)
    gen = open_generator(cfg.backend, expert_request(cfg, src, tok, dtype))
    try:
        prompts = [encode_prompt(tok, p.question, cfg.system_prompt) for p in problems]
        comps = gen.generate_ids(prompts, show_progress)
    finally:
        gen.close()
    return [Trajectory(p, ids, c.ids) for p, ids, c in zip(problems, prompts, comps)]


def summarize(cfg: SampleConfig, done: list[dict]) -> dict:
    kls = torch.tensor([k for e in done for k in e["kl"]], dtype=torch.float64)
    qs = {"min": 0.0, "p10": 0.1, "p25": 0.25, "median": 0.5, "p75": 0.75, "p90": 0.9, "max": 1.0}
    quant = {name: (float(torch.quantile(kls, q)) if kls.numel() else float("nan")) for name, q in qs.items()}
    n = len(done)
    selected = sum(e["records"] for e in done)
    return {
        "problems": n,
        "trajectory_tokens": sum(e["trajectory_tokens"] for e in done),
        "scored_steps": int(kls.numel()),
        "selected_steps": selected,
        "selected_per_problem": selected / n if n else 0.0,
        "selected_share": selected / kls.numel() if kls.numel() else 0.0,
        "kl_quantiles": quant,
        "kl_histogram": kl_histogram(kls),
        "generation_seconds": sum(e["generation_s"] for e in done),
        "scoring_seconds": sum(e["scoring_s"] for e in done),
        "scoring": "reference" if cfg.reference_scoring else cfg.expert_scoring,
        "fingerprint": fingerprint(cfg),
        "config": {k: (repr(v) if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(cfg).items()},
    }


def kl_histogram(kls: torch.Tensor, bins: int = 60) -> dict:
    """Counts of per-step KL in ``bins`` equal bins over [0, max] (for the report's plot)."""
    if kls.numel() == 0:
        return {"edges": [], "counts": []}
    top = max(float(kls.max()), 1e-9)
    counts = torch.histc(kls.clamp(min=0).float(), bins=bins, min=0.0, max=top)
    edges = torch.linspace(0.0, top, bins + 1)
    return {"edges": [round(float(e), 6) for e in edges], "counts": [int(c) for c in counts]}


def select_from_pool(pool: str | Path, out: str | Path, beta: float, use_contrast: bool) -> dict:
    """Records of one LightReasoner variant from a pool sampled with ``beta = -inf`` and
    ``--expert-weights`` (every step, both labels): the steps with KL ≥ ``beta``, labelled
    with the contrastive weights or, without ``use_contrast``, the expert's own. The result
    equals sampling that variant directly (the same trajectories, steps and labels), without
    running either model again. Writes ``out`` and its summary; returns the summary."""
    pool, out = Path(pool), Path(out)
    base = json.loads(summary_path(pool).read_text())
    if base["fingerprint"].get("beta") != repr(-math.inf) or not base["fingerprint"].get("expert_weights"):
        raise LightReasonerError(f"{pool}: not a pool of every step with both labels (beta -inf, --expert-weights)")
    summary = {
        **base,
        "pool": str(pool),
        "fingerprint": {"pool": base["fingerprint"], "beta": repr(beta), "contrast": use_contrast},
        "config": {**base["config"], "beta": repr(beta) if math.isinf(beta) else beta, "contrast": use_contrast},
    }
    selected = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    # the records stream from the pool into a temporary file; the summary is written before
    # the rename, so an output under its final name always has its summary
    with atomic_open(out, before_rename=lambda: atomic_write_json(summary_path(out), summary)) as f:
        with pool.open(encoding="utf-8") as lines:
            for line in lines:
                r = json.loads(line)
                kl = torch.tensor([r["kl_divergence"]], dtype=torch.float32)  # the dtype selection compares in
                own = r.pop("expert_weights")
                if not bool(contrast.select_steps(kl, beta)[0]):
                    continue
                if not use_contrast:
                    r["weights"] = own
                f.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))
                selected += 1
        if not selected:
            raise LightReasonerError(f"no step of {pool} reached KL >= beta = {beta}; nothing was written. Lower beta.")
        summary.update(
            selected_steps=selected,
            selected_per_problem=selected / max(1, base["problems"]),
            selected_share=selected / max(1, base["scored_steps"]),
        )
    return summary
