"""Problem sources: the packaged GSM8K, JSONL files, Hugging Face datasets and reasoning-gym
generators.

Every source yields :class:`Problem` objects; ``index`` is the problem's position in
the source and is what resumable jobs use to know what is done.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import LightReasonerError

REASONING_GYM_PREFIX = "reasoning-gym:"
PACKAGED = {"gsm8k:train": "gsm8k/train.jsonl.gz", "gsm8k:test": "gsm8k/test.jsonl.gz"}
"""Sources shipped inside the package (GSM8K, MIT licence: ``packaged/gsm8k/README.md``)."""


@dataclass
class Problem:
    index: int
    question: str
    answer: str | None = None
    where: str = ""  # "file:line" or "dataset row i", for error messages


def packaged_path(name: str) -> Path:
    """The file of a packaged source (``gsm8k:train``, ``gsm8k:test``): gzip-compressed JSONL."""
    return Path(__file__).parent / "packaged" / PACKAGED[name]


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line (``.gz`` files are read
    compressed); errors name file and line."""
    path = Path(path)
    try:
        f = gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")  # noqa: SIM115
    except OSError as e:
        raise LightReasonerError(f"{path}: cannot open ({e.strerror})") from e
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise LightReasonerError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from e
            if not isinstance(obj, dict):
                raise LightReasonerError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _question_of(obj: dict, field_: str, where: str) -> str:
    if field_ not in obj:
        raise LightReasonerError(f"{where}: no {field_!r} field (keys: {', '.join(obj)}); set --question-field")
    q = obj[field_]
    if not isinstance(q, str) or not q.strip():
        raise LightReasonerError(f"{where}: field {field_!r} is not a non-empty string")
    return q


def load_problems(
    source: str,
    question_field: str = "question",
    answer_field: str | None = "answer",
    max_problems: int | None = None,
    split: str = "train",
    seed: int = 0,
) -> list[Problem]:
    """Problems from a packaged source (``gsm8k:train``, ``gsm8k:test``: the first
    ``max_problems`` in the file's order), a JSONL path (``.jsonl.gz`` too),
    ``reasoning-gym:<task>`` or a hub dataset (``name[:config]``)."""
    if source.startswith(REASONING_GYM_PREFIX):
        return reasoning_gym_problems(source[len(REASONING_GYM_PREFIX) :], max_problems or 100, seed)
    path = packaged_path(source) if source in PACKAGED else Path(source)
    problems: list[Problem] = []
    if source in PACKAGED or path.suffix in (".jsonl", ".json", ".gz") or path.exists():
        if not path.is_file():
            raise LightReasonerError(f"{source}: no such file")
        for lineno, obj in iter_jsonl(path):
            if max_problems is not None and len(problems) >= max_problems:
                break
            q = _question_of(obj, question_field, f"{path}:{lineno}")
            ans = obj.get(answer_field) if answer_field else None
            problems.append(Problem(len(problems), q, None if ans is None else str(ans), f"{path}:{lineno}"))
    else:
        problems = _hub_problems(source, question_field, answer_field, max_problems, split)
    if not problems:
        raise LightReasonerError(f"{source}: no problems found")
    return problems


def _hub_problems(name: str, question_field: str, answer_field: str | None, limit: int | None, split: str):
    import datasets

    repo, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(repo, config or None, split=split)
    except Exception as e:  # datasets raises many types; all mean "cannot load this name"
        raise LightReasonerError(f"{name}: not a file, and cannot load it as a Hugging Face dataset ({e})") from e
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    out = []
    for i, row in enumerate(ds):
        q = _question_of(row, question_field, f"{name} row {i}")
        ans = row.get(answer_field) if answer_field else None
        out.append(Problem(i, q, None if ans is None else str(ans), f"{name} row {i}"))
    return out


def reasoning_gym_problems(task: str, size: int, seed: int) -> list[Problem]:
    """``size`` generated problems of a reasoning-gym task (e.g. ``gsm_symbolic``) with answers."""
    import reasoning_gym

    try:
        ds = reasoning_gym.create_dataset(task, size=size, seed=seed)
    except Exception as e:
        raise LightReasonerError(f"reasoning-gym task {task!r}: cannot create it ({e})") from e
    return [Problem(i, e["question"], str(e["answer"]), f"reasoning-gym:{task} #{i}") for i, e in enumerate(ds)]
