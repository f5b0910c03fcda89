"""Evaluation summaries as tables: reading ``summary.json``, the accuracy table (a row per
evaluation, a column per benchmark), the paired significance table, the benchmarks' names.

What ``eval`` writes (``results.md``), ``compare`` prints and the run report shows; it reads
the evaluation's files and imports no stage.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import LightReasonerError
from ..io import read_json_lines
from ..stats import paired_difference, verdict

DISPLAY = {
    "gsm8k": "GSM8K",
    "gsm8k_qwen25math": "GSM8K",
    "math": "MATH",
    "math500": "MATH-500",
    "svamp": "SVAMP",
    "asdiv": "ASDiv",
    "minerva_math": "Minerva Math",
    "olympiadbench": "Olympiad Bench",
    "mmlu_stem": "MMLU STEM",
}


def display_name(name: str) -> str:
    return DISPLAY.get(name, name.split(":", 1)[-1])


def load_summary(run: str | Path) -> dict:
    path = Path(run) / "summary.json" if Path(run).is_dir() else Path(run)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LightReasonerError(f"{path}: not an evaluation summary ({e})") from e


def markdown_table(summaries: list[dict], deltas: bool = False) -> str:
    """One row per run, one column per benchmark (accuracy %), and AVG.; optional deltas vs the first run."""
    names: list[str] = []
    for s in summaries:
        names += [n for n in s["results"] if n not in names]
    head = "| Model | " + " | ".join(display_name(n) for n in names) + " | AVG. |"
    lines = [head, "|" + "---|" * (len(names) + 2)]
    base = summaries[0]
    for s in summaries:
        cells = []
        for n in names:
            r = s["results"].get(n)
            if r is None:
                cells.append("–")
                continue
            cell = f"{r['accuracy']:.1f}"
            if deltas and s is not base and n in base["results"]:
                cell += f" ({r['accuracy'] - base['results'][n]['accuracy']:+.1f})"
            cells.append(cell)
        avg = f"{s['average']:.1f}"
        if deltas and s is not base:
            avg += f" ({s['average'] - base['average']:+.1f})"
        lines.append(f"| {s['name']} | " + " | ".join(cells) + f" | {avg} |")
    return "\n".join(lines)


def paired_outcomes(first: str | Path, second: str | Path, names: list[str]) -> dict[str, tuple[list, list]]:
    """Per benchmark, the correct/incorrect vectors of two evaluations over the same
    problems (in the first's order); problem sets that differ are refused."""
    out = {}
    for name in names:
        rows = []
        for run in (first, second):
            path = Path(run) / f"{name}.jsonl"
            if not path.exists():
                raise LightReasonerError(f"{path}: no per-problem results to pair (is {run} an eval folder?)")
            rows.append({r["id"]: bool(r["correct"]) for r in read_json_lines(path, "per-problem results")})
        a, b = rows
        if a.keys() != b.keys():
            only = sorted(a.keys() ^ b.keys())
            raise LightReasonerError(
                f"{name}: {first} and {second} were evaluated on different problems "
                f"({len(only)} ids in one only, e.g. {', '.join(only[:3])}); they cannot be compared problem by problem"
            )
        out[name] = ([a[i] for i in a], [b[i] for i in a])
    return out


def significance_table(summaries: list[dict], runs: list[str | Path]) -> str:
    """Each run against the first: per benchmark and on the average, the paired difference
    (points), its 95% bootstrap interval and the exact McNemar p-value."""
    names = [n for n in summaries[0]["results"] if all(n in s["results"] for s in summaries)]
    lines = ["| Model | Benchmark | n | Δ (points) | 95% CI | p (McNemar) | |", "|---|---|---|---|---|---|---|"]
    for s, run in zip(summaries[1:], runs[1:]):
        pairs = paired_outcomes(runs[0], run, names)
        for name in [*names, "AVG."]:
            groups = list(pairs.values()) if name == "AVG." else [pairs[name]]
            d = paired_difference(groups)
            shown = name if name == "AVG." else display_name(name)
            lines.append(
                f"| {s['name']} | {shown} | {d['n']} | {d['delta']:+.1f} | [{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}] "
                f"| {d['p_value']:.3g} | {verdict(d['p_value'])} |"
            )
    n = {name: len(pairs[name][0]) for name in names} if len(runs) > 1 else {}
    worth = ", ".join(f"{display_name(k)} {100 / v:.2g}" for k, v in n.items())
    return "\n".join(lines) + (f"\n\nOne problem is worth (points): {worth}." if worth else "")
