"""The benchmarks: where each file keeps its problem and its gold answer.

Files follow the layout of the Qwen2.5-Math toolkit's ``data/<name>/test.jsonl``;
questions and gold answers are read with the toolkit's rules (SVAMP body + question,
ASDiv without the unit in parentheses, MMLU-STEM choices laid out as
``Answer Choices: (A) ... (B) ...``, OlympiadBench ``final_answer[0]`` without ``$``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..data import REASONING_GYM_PREFIX, iter_jsonl, packaged_path, reasoning_gym_problems
from ..errors import LightReasonerError
from .grading import CHOICE_LETTERS, last_boxed, normalize

PAPER_BENCHMARKS = ("gsm8k", "math", "svamp", "asdiv", "minerva_math", "olympiadbench", "mmlu_stem")


@dataclass
class Item:
    """One evaluation problem: ``question`` as shown to the model, normalised ``gold``."""

    id: str
    question: str
    gold: str
    kind: str = "math"
    multiple: bool = False


@dataclass(frozen=True)
class Benchmark:
    name: str
    question: Callable[[dict], str]
    gold: Callable[[dict], str]
    kind: str = "math"
    strip_units: bool = True
    multiple: Callable[[dict], bool] = lambda ex: False
    hub: tuple[str, str | None, str] | None = None  # (repo, config, split) with the same fields
    packaged: str | None = None  # a source shipped in the package, used without --data-dir

    def item(self, ex: dict, index: int) -> Item:
        q = self.question(ex).strip()
        gold = self.gold(ex)
        if self.kind == "math":
            gold = normalize(gold, self.strip_units) if self.strip_units else _light(gold)
            low = gold.lower()
            if low in ("true", "false"):
                q += " (True or False)"
            elif low in ("yes", "no"):
                q += " (Yes or No)"
        return Item(str(ex.get("idx", ex.get("id", index))), q, gold, self.kind, self.multiple(ex))


def _light(s: str) -> str:
    return s.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")


def _boxed_solution(ex: dict) -> str:
    boxed = last_boxed(ex["solution"])
    if boxed is None:
        raise KeyError("solution has no \\boxed{} answer")
    return boxed


def _svamp_question(ex: dict) -> str:
    body = ex["Body"].strip()
    return f"{body if body.endswith('.') else body + '.'} {ex['Question'].strip()}"


def _mmlu_question(ex: dict) -> str:
    choices = ex["choices"]
    if len(choices) != 4:
        raise KeyError("choices must hold 4 options")
    opts = " ".join(f"({letter}) {str(c).strip()}" for letter, c in zip(CHOICE_LETTERS, choices))
    return f"{ex['question'].strip()}\nAnswer Choices: {opts}"


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark(
            "gsm8k",
            lambda ex: ex["question"],
            lambda ex: ex["answer"].split("####")[-1].strip(),
            hub=("openai/gsm8k", "main", "test"),
            packaged="gsm8k:test",
        ),
        Benchmark("math", lambda ex: ex["problem"], _boxed_solution),
        Benchmark(
            "math500", lambda ex: ex["problem"], lambda ex: ex["answer"], hub=("HuggingFaceH4/MATH-500", None, "test")
        ),
        Benchmark("svamp", _svamp_question, lambda ex: str(ex["Answer"]), hub=("tongyx361/svamp", None, "test")),
        Benchmark(
            "asdiv",
            lambda ex: f"{ex['body'].strip()} {ex['question'].strip()}",
            lambda ex: re.sub(r"\(.*?\)", "", ex["answer"]).strip(),
        ),
        Benchmark("minerva_math", lambda ex: ex["problem"], _boxed_solution, strip_units=False),
        Benchmark(
            "olympiadbench",
            lambda ex: ex["question"],
            lambda ex: ex["final_answer"][0].strip("$"),
            multiple=lambda ex: bool(ex.get("is_multiple_answer")),
        ),
        Benchmark("mmlu_stem", _mmlu_question, lambda ex: CHOICE_LETTERS[int(ex["answer"])], kind="choice"),
    ]
}
GENERATED = Benchmark("generated", lambda ex: ex["question"], lambda ex: str(ex["answer"]))
BENCHMARKS["gsm8k_qwen25math"] = Benchmark("gsm8k_qwen25math", BENCHMARKS["gsm8k"].question, BENCHMARKS["gsm8k"].gold)


def get_benchmark(name: str) -> Benchmark:
    if name.startswith(REASONING_GYM_PREFIX):
        return GENERATED
    if name not in BENCHMARKS:
        raise LightReasonerError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})")
    return BENCHMARKS[name]


def load_items(name: str, data_dir: str | Path | None, limit: int | None = None, seed: int = 0) -> list[Item]:
    """Items of one benchmark from ``data_dir/<name>/test.jsonl``; without it, from the
    package (GSM8K) or the hub.

    ``reasoning-gym:<task>`` generates ``limit`` (default 100) problems with ``seed``.
    """
    if name.startswith(REASONING_GYM_PREFIX):
        problems = reasoning_gym_problems(name[len(REASONING_GYM_PREFIX) :], limit or 100, seed)
        return [Item(str(p.index), p.question, normalize(p.answer or "")) for p in problems]
    bench = get_benchmark(name)
    rows: list[tuple[str, dict]] = []
    if data_dir is not None or bench.packaged:
        path = Path(data_dir) / name / "test.jsonl" if data_dir is not None else packaged_path(bench.packaged)
        if not path.exists():
            raise LightReasonerError(f"benchmark {name}: {path} does not exist")
        for lineno, ex in iter_jsonl(path):
            if limit is not None and len(rows) >= limit:
                break
            rows.append((f"{path}:{lineno}", ex))
    else:
        rows = _hub_rows(bench, limit)
    items = []
    for i, (where, ex) in enumerate(rows):
        try:
            items.append(bench.item(ex, i))
        except (KeyError, IndexError, ValueError, TypeError, AttributeError) as e:
            raise LightReasonerError(f"{where}: not a {name} record ({e})") from e
    if not items:
        raise LightReasonerError(f"benchmark {name}: no problems")
    return items


def _hub_rows(bench: Benchmark, limit: int | None) -> list[tuple[str, dict]]:
    if bench.hub is None:
        raise LightReasonerError(
            f"benchmark {bench.name}: no hub source with the toolkit's fields; pass --data-dir with "
            f"{bench.name}/test.jsonl (the Qwen2.5-Math toolkit's data folder has it)"
        )
    import datasets

    repo, config, split = bench.hub
    try:
        ds = datasets.load_dataset(repo, config, split=split)
    except Exception as e:
        raise LightReasonerError(
            f"benchmark {bench.name}: cannot load {repo} from the hub ({e}); pass --data-dir"
        ) from e
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return [(f"{repo} row {i}", dict(row)) for i, row in enumerate(ds)]


def grade_completion(
    item_kind: str, completion: str, gold: str, strip_units: bool = True, multiple: bool = False, strict: bool = False
) -> tuple[str, bool]:
    """``(extracted, correct)`` for one completion, by the toolkit's rules or, with
    ``strict``, with the toolkit's extraction and a correct equivalence: :func:`grading.grade`,
    which also reads the whole completion again for letter golds, as the toolkit does."""
    from .grading import grade

    return grade(completion, gold, item_kind, strip_units, multiple, strict)
