"""The evaluation loop: prompts, generation, grading, resumable outputs, tables.

Each benchmark's problems are cut into work groups (``group_size``, :mod:`..distributed`);
a group is decoded as its own batch and its rows are appended in one write, so the rows do
not depend on the number of processes or on interruptions; a resume redoes the groups not
yet on disk whole.
"""

from __future__ import annotations

import glob
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from .. import generation
from ..config import EvalConfig
from ..data import iter_jsonl
from ..distributed import (
    barrier,
    main_lock,
    open_shard,
    rank_and_world,
    rank_groups,
    runtime,
    unit_fields,
    work_groups,
)
from ..errors import LightReasonerError
from ..generation import Request, choose_backend, open_generator
from ..io import (
    atomic_write_json,
    atomic_write_text,
    file_fingerprint,
    friendly_os_errors,
    model_fingerprint,
)
from ..models import load_tokenizer, resolve_source
from ..prompts import build_prompt
from ..records import RUNTIME, ResumableWriter, check_resume_fingerprint
from ..report.summaries import markdown_table
from .benchmarks import get_benchmark, grade_completion, load_items

FINGERPRINT = "fingerprint.json"


def benchmark_names(spec: str) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise LightReasonerError("--benchmarks: give at least one benchmark")
    for n in names:
        get_benchmark(n)
    return names


def eval_fingerprint(cfg: EvalConfig, backend: str) -> dict:
    """Everything that decides a completion or its grade."""
    data = {}
    if cfg.data_dir:
        for n in benchmark_names(cfg.benchmarks):
            f = Path(cfg.data_dir) / n / "test.jsonl"
            data[n] = file_fingerprint(f)["sha256"] if f.is_file() else None
    fp = {
        "model": model_fingerprint(cfg.model),
        "adapter": model_fingerprint(cfg.adapter),
        "backend": backend,
        "dtype": cfg.dtype,
        "max_new_tokens": cfg.max_new_tokens,
        "system_prompt": cfg.system_prompt,
        "seed": cfg.seed,
        "data": data,
    }
    if cfg.grader != "toolkit":  # absent for the default, so evaluations made before --grader existed resume
        fp["grader"] = cfg.grader
    if cfg.batch_invariant:  # only when set
        fp["batch_invariant"] = True
    fp |= generation.backend(backend).fingerprint(eval_request(cfg))
    fp |= unit_fields(cfg.group_size)
    fp[RUNTIME] = runtime(batch_size=cfg.batch_size)
    return fp | (cd_fingerprint(cfg) if cfg.contrastive_amateur else {})


def cd_fingerprint(cfg: EvalConfig) -> dict:
    """Contrastive decoding's part of the fingerprint (absent for plain greedy evaluations)."""
    return {
        "contrastive_amateur": model_fingerprint(cfg.contrastive_amateur),
        "cd_alpha": cfg.cd_alpha,
        "cd_beta": cfg.cd_beta,
    }


def check_fingerprint(out: Path, fp: dict, overwrite: bool) -> None:
    """Refuse to resume an evaluation made with other inputs (``--overwrite`` starts again)."""
    path = out / FINGERPRINT
    if overwrite:
        for f in [path, out / "summary.json", out / "results.md", *out.glob("*.jsonl"), *shard_files(out)]:
            f.unlink(missing_ok=True)
    if path.exists():
        try:
            before = json.loads(path.read_text())
        except ValueError:
            raise LightReasonerError(f"{path}: unreadable; pass --overwrite to evaluate again") from None
        check_resume_fingerprint(
            before,
            fp,
            str(out),
            f"{out} holds an evaluation made with other inputs or settings",
            "choose another --out or pass --overwrite",
        )
    elif any(out.glob("*.jsonl")) or shard_files(out):
        raise LightReasonerError(
            f"{out} holds per-problem results of unknown origin; choose another --out or pass --overwrite"
        )
    else:
        atomic_write_json(path, fp)


def in_order(rows: list[dict], items: list) -> list[dict]:
    """The rows of the current ``items`` (by id), in the items' order, each once."""
    by_id = {r["id"]: r for r in rows}
    return [by_id[it.id] for it in items if it.id in by_id]


def eval_request(cfg: EvalConfig, tok=None) -> Request:
    """What the evaluation asks of its generation backend."""
    return Request(
        model=cfg.model,
        tokenizer=tok,
        max_new_tokens=cfg.max_new_tokens,
        dtype=cfg.dtype,
        device=cfg.device,
        adapter=cfg.adapter,
        batch_size=cfg.batch_size,
        allow_pickle=cfg.allow_pickle,
        trust_remote_code=cfg.trust_remote_code,
        contrastive=cfg.contrastive_amateur,
        cd_alpha=cfg.cd_alpha,
        cd_beta=cfg.cd_beta,
        tensor_parallel_size=cfg.tensor_parallel_size,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        max_lora_rank=cfg.max_lora_rank,
    )


def check_backend(cfg: EvalConfig) -> str:
    """The backend that serves ``cfg`` (:func:`generation.choose_backend`): ``auto`` → vLLM
    where it is installed, a GPU is visible and it can serve this evaluation (no contrastive
    decoding, no GGUF file, a CUDA device, no remote code, an adapter its LoRA takes), else
    ``hf``; a named backend that cannot is an error that says why."""
    return choose_backend(cfg.backend, lambda: eval_request(cfg))


GRADERS = ("toolkit", "strict")


def check_contrastive(cfg: EvalConfig) -> None:
    if not cfg.contrastive_amateur:
        return
    if not (0 <= cfg.cd_alpha <= 1):
        raise LightReasonerError("--cd-alpha: must be in [0, 1]")
    if cfg.cd_beta < 0:
        raise LightReasonerError("--cd-beta: must be at least 0")


def make_generator(cfg: EvalConfig, backend: str):
    """The tokenizer, and the model (+ adapter) behind generation backend ``backend``, loaded once."""
    tok = load_tokenizer(resolve_source(cfg.model, cfg.allow_pickle, "model"), cfg.trust_remote_code)
    return tok, open_generator(backend, eval_request(cfg, tok))


def eval_row(it, g, bench, grader: str) -> dict:
    """The per-problem row of item ``it`` and its completion ``g`` (graded both ways)."""
    verdicts = {
        name: grade_completion(it.kind, g.text, it.gold, bench.strip_units, it.multiple, name == "strict")
        for name in GRADERS
    }
    pred, ok = verdicts[grader]
    return {
        "id": it.id,
        "problem": it.question,
        "gold": it.gold,
        "completion": g.text,
        "extracted": pred,
        "correct": ok,
        **{f"correct_{name}": v[1] for name, v in verdicts.items()},
        "multiple": it.multiple,
        "tokens": g.tokens,
        "cut_off": g.cut_off,
    }


def generate_units(
    gen, units: list[list], prompt: Callable, commit: Callable, together: bool = False, on_each: Callable | None = None
) -> None:
    """Completions of each unit's prompts, each unit handed to ``commit(unit, completions)``
    whole, in order. One ``generate`` call per unit, so a unit is its own batch (hf); with
    ``together`` one call for all units (vLLM, which batches on its own), each unit committed
    as soon as its last completion arrives. ``on_each()`` runs as each completion arrives
    (progress within a unit; nothing is committed until the unit is whole)."""
    for batch in [units] if together and units else [[u] for u in units]:
        where = [(u, k) for u, unit in enumerate(batch) for k in range(len(unit))]
        got: dict[int, dict[int, object]] = {u: {} for u in range(len(batch))}

        def finished(i: int, g, batch=batch, where=where, got=got) -> None:
            u, k = where[i]
            got[u][k] = g
            if on_each is not None:
                on_each()
            if len(got[u]) == len(batch[u]):
                commit(batch[u], [got[u][j] for j in range(len(batch[u]))])

        gen.generate([prompt(x) for unit in batch for x in unit], on_result=finished)


def run_name(cfg: EvalConfig) -> str:
    if cfg.name:
        return cfg.name
    name = Path(cfg.model.rstrip("/")).name
    name = f"{name} + {Path(cfg.adapter.rstrip('/')).name}" if cfg.adapter else name
    return f"{name} + CD" if cfg.contrastive_amateur else name


def evaluate(cfg: EvalConfig, show_progress: bool = True) -> dict:
    """Evaluate ``cfg.model`` on each benchmark; writes per-problem files, summary and table."""
    if cfg.max_new_tokens < 1:
        raise LightReasonerError("--max-new-tokens: must be at least 1")
    if cfg.batch_size < 0:
        raise LightReasonerError("--batch-size: must be at least 1 (or 0: as many as fit in memory)")
    if cfg.group_size < 1:
        raise LightReasonerError("--group-size: must be at least 1")
    if cfg.batch_invariant:  # before anything imports an engine
        generation.request_batch_invariance()
    names = benchmark_names(cfg.benchmarks)
    generation.check_options(eval_request(cfg))
    backend = check_backend(cfg)
    check_contrastive(cfg)
    generation.settle_batch_invariance(cfg.batch_invariant, cfg.backend, backend)
    if cfg.grader not in GRADERS:
        raise LightReasonerError(f"--grader {cfg.grader!r}: choose toolkit or strict")
    items = {n: load_items(n, cfg.data_dir, cfg.limit, cfg.seed) for n in names}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with main_lock(out), friendly_os_errors(out):
        fp = eval_fingerprint(cfg, backend)
        if rank_and_world()[0] == 0:
            check_fingerprint(out, fp, cfg.overwrite)
        return _evaluate_locked(cfg, names, backend, items, out, fp, show_progress)


def shard_files(out: Path) -> list[Path]:
    """The unfinished parts of an evaluation's per-problem files: every rank's ``.partial``
    and ``.progress`` (the ``<name>.rank<r>.jsonl`` of versions before them match ``*.jsonl``)."""
    return [*out.glob("*.jsonl*.partial"), *out.glob("*.jsonl*.progress")]


def open_results(out: Path, name: str, fp: dict) -> tuple[ResumableWriter, list[dict]]:
    """The rows of benchmark ``name`` on disk (each rank's, every rank sees the same) and
    this rank's writer, which appends new ones in work units: crash-safe, as samples are."""
    writer = open_shard(out / f"{name}.jsonl", fp, overwrite=False, stage="eval", extends=True, key="id")[0]
    return writer, [json.loads(x) for x in writer.records()]


def _evaluate_locked(cfg: EvalConfig, names, backend, items, out: Path, fp: dict, show_progress: bool) -> dict:
    rank, world = rank_and_world()
    writers, saved = {}, {}
    for n in names:
        writers[n], saved[n] = open_results(out, n, fp)
    done = {n: in_order(saved[n], items[n]) for n in names}  # rows outside the selection are kept, not counted
    done_ids = {n: {r["id"] for r in done[n]} for n in names}
    units = [[(n, it) for it in g] for n in names for g in work_groups(items[n], cfg.group_size)]
    todo = rank_groups(units, lambda x: x[1].id in done_ids[x[0]], rank, world)
    total, remaining = sum(map(len, items.values())), sum(map(len, todo))

    t0 = time.perf_counter()
    tok = gen = None
    if remaining:
        tok, gen = make_generator(cfg, backend)
    show = show_progress and rank == 0
    bar = tqdm(total=total, initial=total - remaining * world, desc="eval", unit="problem", disable=not show)
    rows = [r for n in names for r in done[n]]  # for the running accuracy

    def commit(unit: list[tuple], gens: list) -> None:
        """Grade a finished unit and append its rows in one write (those not on disk yet)."""
        name = unit[0][0]
        bench = get_benchmark(name)
        new = [eval_row(it, g, bench, cfg.grader) for (_, it), g in zip(unit, gens) if it.id not in done_ids[name]]
        if new:
            writers[name].commit_group([(r["id"], [r], {}) for r in new])
        rows.extend(new)
        bar.set_description(name)
        bar.set_postfix(acc=f"{100 * sum(r['correct'] for r in rows) / max(1, len(rows)):.1f}")

    def finished_one() -> None:
        """The bar moves as each completion arrives (the other ranks' at the same pace)."""
        bar.update(world)

    def prompt(x: tuple) -> str:
        return build_prompt(tok, x[1].question, cfg.system_prompt)

    generate_units(gen, todo, prompt, commit, together=generation.backend(backend).together, on_each=finished_one)
    bar.close()
    if gen is not None:
        gen.close()  # an engine gives its GPU back now
    seconds = time.perf_counter() - t0
    barrier()
    if rank != 0:  # the main process merges the shards and writes the summary
        return {}
    for name in names:  # one file per benchmark, in problem order (problems finish in any order)
        position = {it.id: n for n, it in enumerate(items[name])}
        writers[name].refresh()
        lines = writers[name].finish(order=lambda i, pos=position: pos.get(i, len(pos)))  # the rest after
        for f in out.glob(glob.escape(name) + ".rank*.jsonl"):  # left by versions before the writer
            f.unlink()
        done[name] = in_order([json.loads(x) for x in lines], items[name])

    results = {}
    for name in names:
        rows = done[name]
        correct = sum(bool(r["correct"]) for r in rows)
        cut = sum(bool(r.get("cut_off", False)) for r in rows)
        results[name] = {
            "n": len(rows),
            "correct": correct,
            "accuracy": 100.0 * correct / max(1, len(rows)),
            "grader": cfg.grader,
            **{
                f"accuracy_{g}": 100.0
                * sum(bool(r.get(f"correct_{g}", r["correct"])) for r in rows)
                / max(1, len(rows))
                for g in GRADERS
            },
            "cut_off": cut,
            "cut_off_share": cut / max(1, len(rows)),
        }
    summary = {
        "name": run_name(cfg),
        "model": cfg.model,
        "adapter": cfg.adapter,
        "results": results,
        "average": sum(r["accuracy"] for r in results.values()) / len(results),
        "seconds": seconds,
        "processes": world,
        "config": asdict(cfg),
    }
    atomic_write_text(out / "results.md", markdown_table([summary]) + "\n")
    atomic_write_json(out / "summary.json", summary)  # last: its presence means the evaluation is complete
    return summary


def grade_file(path: str | Path, benchmark: str, out: str | Path | None = None, grader: str = "toolkit") -> dict:
    """Re-grade saved completions (lines with ``completion`` and ``gold``) with the
    ``toolkit`` or ``strict`` grader; writes each line back with ``extracted`` and ``correct``
    (to ``out``, else in place)."""
    if grader not in GRADERS:
        raise LightReasonerError(f"--grader {grader!r}: expected one of {', '.join(GRADERS)}")
    bench = get_benchmark(benchmark)
    rows = []
    for lineno, row in iter_jsonl(path):
        for key in ("completion", "gold"):
            if key not in row:
                raise LightReasonerError(f"{path}:{lineno}: no {key!r} field")
        pred, ok = grade_completion(
            bench.kind,
            str(row["completion"]),
            str(row["gold"]),
            bench.strip_units,
            bool(row.get("multiple", False)),
            grader == "strict",
        )
        rows.append({**row, "extracted": pred, "correct": ok})
    if not rows:
        raise LightReasonerError(f"{path}: no lines to grade")
    atomic_write_text(out or path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    correct = sum(r["correct"] for r in rows)
    return {"n": len(rows), "correct": correct, "accuracy": 100.0 * correct / len(rows), "grader": grader}
