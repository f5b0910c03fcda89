"""The rejection-sampling SFT baseline (the paper's "+ SFT"): sample full solutions from
the expert, keep those the grader accepts, LoRA-fine-tune the expert on them.

1. Sampling: ``samples_per_problem`` solutions per problem at ``temperature`` / ``top_p``
   (:class:`generation.TopPSampler`, seeded per problem and sample, so a solution does not
   depend on batching or restarts), batched like evaluation. The prompt is the
   evaluation's (answer in ``\\boxed{}``): the grader can read every answer, and the tuned
   model is trained on the prompt it is evaluated with.
2. Rejection: each solution is graded against the problem's gold answer by the
   evaluation's grader; correct solutions are kept, distinct ones only (whitespace
   ignored), at most ``keep_per_problem`` per problem, in sample order.
3. Fine-tuning: LoRA with ``train``'s options; the loss is the mean cross-entropy of the
   solution tokens (prompt tokens masked), the model's own causal-LM loss in the
   transformers Trainer.

``DIR/solutions.jsonl`` holds every sampled solution (written per problem, crash-safe and
resumed like ``sample``); the adapter, tokenizer and ``DIR/sft_summary.json`` (sampling
and fine-tuning times, sampled problems, tuned tokens) follow. A rerun continues where
the last one stopped: sampling per problem, fine-tuning from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .config import SFTConfig
from .data import Problem, load_problems
from .distributed import (
    barrier,
    is_main,
    main_lock,
    open_shard,
    rank_groups,
    runtime,
    unit_fields,
    work_groups,
)
from .errors import LightReasonerError
from .evaluation.benchmarks import grade_completion
from .evaluation.grading import normalize
from .files import SFT_SUMMARY, SOLUTIONS
from .generation import Completion, TopPSampler, greedy_decode, note_memory_bound
from .io import atomic_write_json, file_fingerprint, friendly_os_errors, model_fingerprint
from .models import end_token_ids, load_model, load_tokenizer, resolve_device, resolve_dtype, resolve_source
from .prompts import encode_prompt
from .records import RUNTIME, ResumableWriter, check_resume_fingerprint, last_checkpoint, summary_path
from .training import (
    RESULT_FIELDS,
    TRAIN_FINGERPRINT,
    IndexedDataset,
    SeenTrainer,
    batch_fields,
    check_checkpoints,
    lora_model,
    training_arguments,
    validate_lora,
)

log = logging.getLogger(__name__)


def gold_answer(problem: Problem, answer_field: str) -> str:
    """The problem's gold answer, normalised for the grader; GSM8K's ``... #### N`` gives ``N``."""
    ans = (problem.answer or "").split("####")[-1].strip()
    if not ans:
        where = problem.where or f"problem {problem.index}"
        raise LightReasonerError(
            f"{where}: no gold answer in field {answer_field!r}; SFT keeps only solutions it can grade "
            "(set --answer-field, or drop the problem)"
        )
    return normalize(ans)


def keep_solutions(rows: list[dict], keep: int) -> list[dict]:
    """Mark ``kept`` on one problem's graded rows (in sample order): correct, distinct
    (whitespace ignored), at most ``keep``."""
    seen: set[str] = set()
    for r in rows:
        key = " ".join(r["completion"].split())
        r["kept"] = bool(r["correct"]) and key not in seen and len(seen) < keep
        if r["kept"]:
            seen.add(key)
    return rows


def solution_seed(seed: int, problem: int, sample: int) -> int:
    return (seed * 1_000_003 + problem) * 10_007 + sample


def sampling_fingerprint(cfg: SFTConfig) -> dict:
    """Everything that decides the sampled solutions and their grades."""
    keys = (
        "question_field",
        "answer_field",
        "split",
        "max_problems",
        "data_seed",
        "samples_per_problem",
        "temperature",
        "top_p",
        "max_new_tokens",
        "keep_per_problem",
        "system_prompt",
        "seed",
        "dtype",
    )
    data = Path(cfg.data)
    return {
        "model": model_fingerprint(cfg.model),
        "data": file_fingerprint(data)["sha256"] if data.is_file() else cfg.data,
        **{k: getattr(cfg, k) for k in keys},
        **unit_fields(cfg.group_size),
        RUNTIME: runtime(sample_batch_size=cfg.sample_batch_size),
    }


def validate(cfg: SFTConfig) -> None:
    validate_lora(cfg)
    for name in ("samples_per_problem", "max_new_tokens", "keep_per_problem"):
        if getattr(cfg, name) < 1:
            raise LightReasonerError(f"--{name.replace('_', '-')}: must be at least 1")
    if cfg.temperature <= 0:
        raise LightReasonerError("--temperature: must be positive (SFT samples; greedy would repeat one solution)")
    if not (0 < cfg.top_p <= 1):
        raise LightReasonerError("--top-p: must be in (0, 1]")
    if cfg.target_problems is not None and cfg.target_problems < 1:
        raise LightReasonerError("--target-problems: must be at least 1")
    if cfg.sample_batch_size < 0:
        raise LightReasonerError("--sample-batch-size: must be at least 1 (or 0: as many as fit in memory)")
    if cfg.group_size < 1:
        raise LightReasonerError("--group-size: must be at least 1")


def sft(cfg: SFTConfig, show_progress: bool = True) -> dict:
    """Sample, grade, keep, fine-tune; returns the summary (also ``DIR/sft_summary.json``)."""
    validate(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with main_lock(out), friendly_os_errors(out):
        if cfg.overwrite and is_main():
            clear(out)
        barrier()
        if (out / SFT_SUMMARY).exists():
            summary = json.loads((out / SFT_SUMMARY).read_text())
            before = summary.get("sampling_fingerprint") or {}
            check_resume_fingerprint(
                before,
                sampling_fingerprint(cfg),
                str(out),
                f"{out} holds an SFT run made with other inputs or settings",
                "choose another --output-dir or pass --overwrite",
                warn=False,
            )
            log.info("%s is complete; pass --overwrite to run it again", out)
            return summary
        problems = load_problems(
            cfg.data, cfg.question_field, cfg.answer_field, cfg.max_problems, cfg.split, cfg.data_seed
        )
        golds = {p.index: gold_answer(p, cfg.answer_field) for p in problems}  # all checked before any work
        src = resolve_source(cfg.model, cfg.allow_pickle, "model")
        tok = load_tokenizer(src, cfg.trust_remote_code)
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, device)
        model = load_model(src, dtype, device, cfg.allow_pickle, cfg.trust_remote_code)
        sampled = sample_solutions(cfg, model, tok, problems, golds, out / SOLUTIONS, show_progress)
        rows = [json.loads(x) for x in (out / SOLUTIONS).read_text(encoding="utf-8").splitlines()]
        tuned = fine_tune(cfg, model, tok, rows, out, dtype, device, show_progress)
        summary = {
            "method": "sft",
            **{k: v for k, v in sampled.items() if k != "config"},
            **tuned,
            "total_seconds": sampled["sampling_seconds"] + tuned["fine_tuning_seconds"],
            "sampling_fingerprint": sampling_fingerprint(cfg),
            "config": asdict(cfg),
        }
        if is_main():
            atomic_write_json(out / SFT_SUMMARY, summary)  # last: its presence means the run is complete
        return summary


def clear(out: Path) -> None:
    """What an earlier run left in ``out``: solutions, checkpoints, adapter, summaries."""
    for name in (SOLUTIONS, SOLUTIONS + ".partial", SOLUTIONS + ".progress", SFT_SUMMARY, TRAIN_FINGERPRINT):
        (out / name).unlink(missing_ok=True)
    summary_path(out / SOLUTIONS).unlink(missing_ok=True)
    for f in out.glob("adapter_*"):
        f.unlink()
    for d in out.glob("checkpoint-*"):
        shutil.rmtree(d, ignore_errors=True)


def sample_solutions(cfg: SFTConfig, model, tok, problems: list[Problem], golds: dict, path: Path, show: bool) -> dict:
    """Sample and grade solutions of every work group not yet done (up to ``target_problems``
    when set); publishes ``path`` and returns the sampling summary."""
    writer, rank, world = open_shard(path, sampling_fingerprint(cfg), overwrite=False, stage="sft")
    if writer.complete:
        return json.loads(summary_path(path).read_text())
    stops = end_token_ids(model.generation_config.eos_token_id, tok, chat_ends=True)
    groups = work_groups(problems, cfg.group_size)
    show = show and rank == 0
    bar = tqdm(total=len(problems), initial=len(writer.done), desc="sft sampling", unit="problem", disable=not show)
    longest = max(len(encode_prompt(tok, p.question, cfg.system_prompt)) for p in problems) + cfg.max_new_tokens
    wanted = cfg.group_size * cfg.samples_per_problem
    note_memory_bound(model, longest, min(cfg.sample_batch_size or wanted, wanted))

    def run(group: list[Problem]) -> None:
        results = sample_group(cfg, model, tok, group, golds, stops)
        writer.commit_group([r for r in results if r[0] not in writer.done])  # (a group is committed whole)
        bar.update(len(group))
        n = sum(e["samples"] for e in writer.done.values())
        bar.set_postfix(accepted=f"{sum(e['correct'] for e in writer.done.values()) / max(1, n):.0%}")

    if cfg.target_problems is None:
        chosen = groups
        for group in rank_groups(groups, lambda p: p.index in writer.done, rank, world):
            run(group)
    else:
        chosen = sample_to_target(groups, cfg.target_problems, writer, rank, world, run)
    bar.close()
    barrier()
    if rank == 0:  # the main process merges the shards; the others wait for the result
        writer.refresh()
        keep = {p.index for g in chosen for p in g}
        entries = [e for i, e in writer.done.items() if i in keep]
        writer.finish(sampling_summary(cfg, entries), keep=keep.__contains__)
    barrier()
    return json.loads(summary_path(path).read_text())


def groups_to_target(groups: list[list[Problem]], done: dict[int, dict], target: int, most: int) -> tuple[list, list]:
    """Walk ``groups`` in order, counting the problems with a kept solution in finished ones,
    until ``target``: returns the groups walked and the first ``most`` unfinished among them."""
    walked, missing, kept = [], [], 0
    for g in groups:
        if kept >= target or len(missing) == most:
            break
        walked.append(g)
        if all(p.index in done for p in g):
            kept += sum(done[p.index]["kept"] > 0 for p in g)
        else:
            missing.append(g)
    return walked, missing


def sample_to_target(
    groups: list[list[Problem]],
    target: int,
    writer: ResumableWriter,
    rank: int,
    world: int,
    run: Callable[[list[Problem]], None],
) -> list[list[Problem]]:
    """Sample groups in order until the problems with a kept solution reach ``target``, in
    rounds of one unfinished group per rank; returns the groups the output keeps: the
    shortest prefix that reaches the target (or all), the same for any number of processes
    (a group a rank sampled beyond it is left out)."""
    while True:
        writer.refresh()  # every rank sees every commit of the last round
        walked, missing = groups_to_target(groups, writer.done, target, world)
        # and no rank commits this round's group before every rank has read: a rank that read
        # a commit of this round would plan other rounds than the rest (and leave early)
        barrier()
        if not missing:
            return walked
        if rank < len(missing):
            run(missing[rank])
        barrier()


def sample_group(cfg: SFTConfig, model, tok, group: list[Problem], golds: dict, stops: list[int]) -> list[tuple]:
    """One work unit: ``samples_per_problem`` solutions of each problem of ``group``, decoded
    together (``sample_batch_size`` at a time), graded and marked kept. Returns
    ``(problem index, rows, stats)`` in the group's order."""
    k = cfg.samples_per_problem
    owners = [(p, j) for p in group for j in range(k)]
    prompt = {p.index: encode_prompt(tok, p.question, cfg.system_prompt) for p in group}
    sampler = TopPSampler(cfg.temperature, cfg.top_p, [solution_seed(cfg.seed, p.index, j) for p, j in owners])
    t0 = time.perf_counter()
    comps = greedy_decode(
        model,
        [prompt[p.index] for p, _ in owners],
        cfg.max_new_tokens,
        stops,
        tok.pad_token_id,
        cfg.sample_batch_size,
        pick=sampler,
    )
    seconds = (time.perf_counter() - t0) / len(group)
    out = []
    for n, p in enumerate(group):
        rows = [solution_row(p, j, comps[n * k + j], tok, golds[p.index]) for j in range(k)]
        keep_solutions(rows, cfg.keep_per_problem)
        stats = {
            "samples": k,
            "correct": sum(r["correct"] for r in rows),
            "kept": sum(r["kept"] for r in rows),
            "tokens": sum(r["tokens"] for r in rows),
            "seconds": seconds,
        }
        out.append((p.index, rows, stats))
    return out


def sampling_summary(cfg: SFTConfig, entries: list[dict]) -> dict:
    samples = sum(e["samples"] for e in entries)
    return {
        "problems_attempted": len(entries),
        "sampled_problems": sum(e["kept"] > 0 for e in entries),
        "samples": samples,
        "correct": sum(e["correct"] for e in entries),
        "acceptance_rate": sum(e["correct"] for e in entries) / max(1, samples),
        "kept_solutions": sum(e["kept"] for e in entries),
        "sampled_tokens": sum(e["tokens"] for e in entries),
        "sampling_seconds": sum(e["seconds"] for e in entries),
        "config": asdict(cfg),
    }


def solution_row(p: Problem, j: int, comp: Completion, tok: PreTrainedTokenizerBase, gold: str) -> dict:
    body = comp.ids[:-1] if comp.finished else comp.ids
    text = tok.decode(body, skip_special_tokens=True)
    extracted, correct = grade_completion("math", text, gold)
    return {
        "problem_index": p.index,
        "sample_index": j,
        "question": p.question,
        "completion": text,
        "extracted": extracted,
        "gold": gold,
        "correct": correct,
        "tokens": len(comp.ids),
        "cut_off": not comp.finished,
    }


@dataclass
class SFTExample:
    """Prompt + solution ids; the loss covers ``input_ids[prompt_len:]``."""

    input_ids: list[int]
    prompt_len: int


def sft_examples(rows: list[dict], tok: PreTrainedTokenizerBase, system_prompt: str, end_id: int) -> list[SFTExample]:
    """The kept solutions as training examples: the prompt, the solution, and the end-of-turn
    token when the solution ended its turn."""
    out = []
    for r in rows:
        if not r.get("kept"):
            continue
        prompt = encode_prompt(tok, r["question"], system_prompt)
        body = tok(r["completion"], add_special_tokens=False)["input_ids"]
        out.append(SFTExample(prompt + body + ([] if r["cut_off"] else [end_id]), len(prompt)))
    return out


@dataclass
class SFTCollator:
    """Right-padded ``input_ids``/``attention_mask`` ``[B, L]`` and ``labels`` ``[B, L]``:
    the ids on solution tokens, -100 on prompt and padding."""

    pad_token_id: int

    def __call__(self, batch: list[tuple[int, SFTExample]]) -> dict[str, torch.Tensor]:
        width = max(len(ex.input_ids) for _, ex in batch)
        ids, mask, labels = [], [], []
        for _, ex in batch:
            pad = width - len(ex.input_ids)
            ids.append(ex.input_ids + [self.pad_token_id] * pad)
            mask.append([1] * len(ex.input_ids) + [0] * pad)
            labels.append([-100] * ex.prompt_len + ex.input_ids[ex.prompt_len :] + [-100] * pad)
        return {
            "input_ids": torch.tensor(ids),
            "attention_mask": torch.tensor(mask),
            "labels": torch.tensor(labels),
            "record_index": torch.tensor([i for i, _ in batch]),
        }


class SolutionTrainer(SeenTrainer):
    """The model's causal-LM loss on the solution tokens; notes which examples got a loss."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.note_seen(inputs)
        inputs = {k: v for k, v in inputs.items() if k != "record_index"}
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def fine_tune(cfg: SFTConfig, model, tok, rows, out: Path, dtype, device, show: bool) -> dict:
    end_id = end_token_ids(model.generation_config.eos_token_id, tok, chat_ends=True)[-1]
    examples = sft_examples(rows, tok, cfg.system_prompt, end_id)
    if not examples:
        raise LightReasonerError(
            f"{out / SOLUTIONS}: no solution was correct, so there is nothing to fine-tune on "
            "(sample more per problem, more problems, or a higher --max-new-tokens)"
        )
    fp = {k: v for k, v in asdict(cfg).items() if k not in RESULT_FIELDS and k not in ("output_dir", "overwrite")}
    fp["model"] = model_fingerprint(cfg.model)
    fp["solutions"] = file_fingerprint(out / SOLUTIONS)["sha256"]
    check_checkpoints(out, fp | batch_fields(cfg), resume=True)
    model = lora_model(model, cfg)
    model.train()
    trainer = SolutionTrainer(
        model=model,
        args=training_arguments(cfg, out, dtype, device, show),
        train_dataset=IndexedDataset(examples),
        data_collator=SFTCollator(tok.pad_token_id),
        processing_class=tok,
    )
    resume = last_checkpoint(out)
    trainer.load_seen(resume)
    trainer.check_saveable()
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - t0
    trainer.save_adapter(out)  # every process: FSDP and DeepSpeed gather the sharded weights
    return {
        "examples": len(examples),
        "tuned_tokens": sum(len(examples[i].input_ids) - examples[i].prompt_len for i in trainer.all_seen()),
        "optimizer_steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "loss_curve": [[h["step"], h["loss"]] for h in trainer.state.log_history if "loss" in h],
        "fine_tuning_seconds": seconds,
    }
