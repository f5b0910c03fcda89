"""The default grader against the Qwen2.5-Math toolkit's own grading code (tests/toolkit_reference).

Completions are generated for every benchmark from its real gold answers (../shared/data), in
many answer formats each, right and wrong; our verdict must be the toolkit's on >= 99% of them,
overall and per benchmark. Run this file alone with ``-s`` to see the figures and the cases
where the two differ.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Iterator

import pytest
from conftest import SHARED_DATA

pytest.importorskip("word2number", reason="the toolkit oracle needs word2number (pip install -e .[dev])")

from lightreasoner.evaluation.benchmarks import BENCHMARKS, grade_completion  # noqa: E402
from lightreasoner.evaluation.grading import grade, last_boxed  # noqa: E402

needs_data = pytest.mark.skipif(not SHARED_DATA.exists(), reason="benchmark files of ../shared/data not present")

# benchmark -> (the toolkit's data_name, problems sampled)
PLAN = {
    "gsm8k": ("gsm8k", 5),
    "svamp": ("svamp", 4),
    "asdiv": ("asdiv", 4),
    "math": ("math", 7),
    "math500": ("math", 5),
    "minerva_math": ("minerva_math", 5),
    "olympiadbench": ("olympiadbench", 6),
    "mmlu_stem": ("mmlu_stem", 4),
}
THRESHOLD = 0.99
COT = "Let me work through this step by step.\nFirst we set up the equations and simplify.\n"


def raw_gold(name: str, ex: dict) -> str:
    """The answer as the benchmark file writes it (before any normalisation)."""
    if name in ("math", "minerva_math"):
        return last_boxed(ex["solution"]) or ""
    if name == "math500":
        return ex["answer"]
    if name == "olympiadbench":
        return ex["final_answer"][0].strip("$")
    if name == "gsm8k":
        return ex["answer"].split("####")[-1].strip()
    if name == "svamp":
        return str(ex["Answer"])
    if name == "asdiv":
        return re.sub(r"\(.*?\)", "", ex["answer"]).strip()
    return "ABCD"[ex["answer"]]


def oracle_record(name: str, ex: dict) -> dict:
    """The record as the toolkit reads it (MATH-500 as a MATH record whose solution boxes its answer)."""
    if name == "math500":
        return {"solution": f"\\boxed{{{ex['answer']}}}"}
    return ex


def _split_list(g: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in g:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return [p for p in parts + [cur.strip()] if p]


def _number(g: str) -> float | None:
    try:
        return float(g.replace(",", ""))
    except ValueError:
        return None


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.6g}"


def math_formats(g: str, other: str, rng: random.Random) -> Iterator[str]:
    """Completions whose final answer is ``g`` (or a wrong one) written in many ways."""
    yield f"{COT}So the answer is $\\boxed{{{g}}}$."
    yield f"{COT}Therefore, the final answer is $\\boxed{{{g}}}$. I hope it is correct."
    yield f"{COT}The final answer is ${g}$. I hope it is correct."
    yield f"{COT}The answer is {g}."
    yield f"{COT}The answer is {g}. Done."
    yield f"{COT}The answer is: {g}"
    yield f"{COT}\\[\\boxed{{ {g} }}\\]"
    yield f"{COT}\\boxed{{\\text{{{g}}}}}"
    yield f"{COT}\\boxed{{{g}}}."
    yield f"{COT}\\boxed{{\\left( {g} \\right)}}"
    yield f"{COT}\\boxed{{{g.replace('frac', 'dfrac')}}}"
    yield f"{COT}\\boxed{{{g}\\%}}"
    yield f"{COT}\\boxed{{{other}}}"
    yield f"{COT}The answer is {other}."
    yield f"{COT}\\boxed{{-{g}}}"
    yield f"{COT}I could not finish the computation."
    yield f"{COT}\\boxed{{}}"
    yield f"{COT}first I thought \\boxed{{{other}}} but on reflection \\boxed{{{g}}}"
    n = _number(g)
    if n is not None:
        yield from number_formats(g, n)
    else:
        yield from expression_formats(g, rng)
    m = re.fullmatch(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", g.strip())
    if m:
        sign, a, b = m.groups()
        yield f"{COT}\\boxed{{{sign}{a}/{b}}}"
        yield f"{COT}\\boxed{{{sign}{int(a) / int(b):.4f}}}"
        yield f"{COT}\\boxed{{{sign}\\frac{a}{b}}}" if len(a) == len(b) == 1 else f"{COT}\\boxed{{{sign}{a}\\div{b}}}"
    parts = _split_list(g)
    if len(parts) > 1:
        yield f"{COT}\\boxed{{{', '.join(reversed(parts))}}}"
        yield f"{COT}\\boxed{{{' and '.join(parts)}}}"
        yield f"{COT}The answers are {' and '.join(parts)}, so \\boxed{{{' and '.join(reversed(parts))}}}"
        yield f"{COT}\\boxed{{{', '.join(f'{v}={p}' for v, p in zip('abcdefgh', parts))}}}"
        yield f"{COT}\\boxed{{{', '.join(parts[:-1])}}}"
        shuffled = parts[:]
        rng.shuffle(shuffled)
        yield f"{COT}\\boxed{{{';'.join(shuffled)}}}"
    tup = re.fullmatch(r"\\left\s*\((.*)\\right\s*\)|\((.*)\)", g.strip())
    if tup:
        inner = _split_list(tup.group(1) or tup.group(2) or "")
        if len(inner) > 1:
            yield f"{COT}\\boxed{{({', '.join(reversed(inner))})}}"
            yield f"{COT}\\boxed{{[{', '.join(inner)}]}}"
            yield f"{COT}\\boxed{{{', '.join(inner)}}}"


def number_formats(g: str, n: float) -> Iterator[str]:
    """Numbers: trailing in prose, units, commas, percentages, rounding, words."""
    yield f"{COT}So in the end she has {g} left."
    yield f"{COT}So in the end she has {g} apples left, and 3 more later."
    yield f"{COT}\\boxed{{{n:,.2f}}}" if abs(n) >= 1000 else f"{COT}\\boxed{{{_fmt(n)}.00}}"
    yield f"{COT}\\boxed{{{_fmt(n * 100)}\\%}}"
    yield f"{COT}\\boxed{{{_fmt(n / 100)}}}"
    yield f"{COT}\\boxed{{{_fmt(n + 1)}}}"
    yield f"{COT}\\boxed{{{_fmt(n * (1 + 5e-5))}}}"
    yield f"{COT}\\boxed{{{_fmt(n * (1 + 5e-3))}}}"
    yield f"{COT}\\boxed{{\\${_fmt(n)}}}"
    yield f"{COT}The answer is \\${_fmt(n)}."
    yield f"{COT}\\boxed{{{g} \\text{{ dollars}}}}"
    yield f"{COT}\\boxed{{{g} dollars}}"
    yield f"{COT}The answer is {g} dollars."
    yield f"{COT}\\boxed{{{_fmt(n)}\\text{{ meters}}}}"
    yield f"{COT}\\boxed{{{_fmt(n)} \\mathrm{{~m}}}}"
    yield f"{COT}\\boxed{{{_fmt(n)} \\text{{ cm}}^2}}"
    yield f"{COT}\\boxed{{{_fmt(n)}^\\circ}}"
    yield f"{COT}\\boxed{{x = {g}}}"
    yield f"{COT}\\boxed{{k = {g}}}"
    yield f"{COT}\\boxed{{{_fmt(n)} \\times 10^{{0}}}}"
    if n.is_integer() and 0 <= n <= 20:
        words = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        words += "sixteen seventeen eighteen nineteen twenty"
        yield f"{COT}The answer is {words.split()[int(n)]}."
    if not n.is_integer():
        yield f"{COT}\\boxed{{{_fmt(round(n, 2))}}}"


def expression_formats(g: str, rng: random.Random) -> Iterator[str]:
    """Expressions: labels, right-hand sides, rewritten functions, spacing, Python syntax."""
    if "=" in g:
        left, _, right = g.partition("=")
        yield f"{COT}\\boxed{{{right}}}"
        yield f"{COT}\\boxed{{{right} = {left}}}"
        yield f"{COT}\\boxed{{{left.replace(' ', '')}={right}}}"
    else:
        yield f"{COT}\\boxed{{f(x) = {g}}}"
        yield f"{COT}\\boxed{{y = {g}}}"
        yield f"{COT}\\boxed{{k = {g}}}"
    for a, b in (("\\cot", "\\frac{1}{\\tan}"), ("\\sec", "\\frac{1}{\\cos}"), ("\\csc", "\\frac{1}{\\sin}")):
        if a in g:
            yield f"{COT}\\boxed{{{g.replace(a, b)}}}"
    if "\\sqrt" in g:
        unbraced = re.sub(r"sqrt\{(\w+)\}", r"sqrt\1", g)
        yield f"{COT}\\boxed{{{unbraced}}}"
    if "\\pi" in g:
        pi = g.replace("\\pi", "π")
        yield f"{COT}\\boxed{{{pi}}}"
    if "^" in g:
        yield f"{COT}\\boxed{{{g.replace('^', '**')}}}"
    if g[:1] in "([" and g[-1:] in ")]":
        yield f"{COT}\\boxed{{{g[0].translate(str.maketrans('([', '[('))}{g[1:-1]}{g[-1]}}}"
    if " " in g:
        yield f"{COT}\\boxed{{{g.replace(' ', '')}}}"
    trig = {"\\cot x": "\\frac{1}{\\tan x}", "\\frac{1}{\\tan x}": "\\cot x", "\\sin^2 x": "1-\\cos^2 x"}
    a, b = rng.choice(sorted(trig.items()))
    yield f"{COT}The identity gives {a}: \\boxed{{{b}}}"


CHOICE_PROSE = [
    "The answer is ({L}).",
    "The answer is {L}",
    "the answer is: {l}",
    "Therefore, the correct choice is {L}.",
    "\\boxed{{{L}}}",
    "\\boxed{{\\text{{({L})}}}}",
    "\\boxed{{({L}) {text}}}",
    "A careful look shows that option {L} fits best.",
    "Option {L} is correct, since a mass on a spring oscillates.",
    "So {L}) {text} is right.",
    "Answer: {L}",
    "We pick {L}. A quick check confirms it.",
    "({L}) and (A) both look plausible, but the answer is {L}.",
    "The answer is {L}, not B.",
    "I think it is {text}.",
    "Between (B) and ({L}), we choose {L}.",
    "It is a tricky one; the best answer is {L}.",
    "The final answer is $\\boxed{{{L}}}$.",
    "So the correct option is \\textbf{{({L})}}.",
    "none of them fit",
]


def choice_formats(letter: str, text: str, rng: random.Random) -> Iterator[str]:
    """Each template with the right letter and, where it names one, a wrong letter."""
    for template in CHOICE_PROSE:
        wrong = rng.choice([c for c in "ABCD" if c != letter])
        for letter_ in (letter, wrong) if "{L}" in template or "{l}" in template else (letter,):
            yield f"{COT}{template.format(L=letter_, l=letter_.lower(), text=text)}"


def cases(name: str) -> Iterator[tuple[str, dict, str]]:
    """(completion, record, gold kind) for the benchmark's sampled problems."""
    rows = [json.loads(line) for line in (SHARED_DATA / name / "test.jsonl").open()]
    _, n = PLAN[name]
    rng = random.Random(f"agreement-{name}")
    picked = rng.sample(range(len(rows)), n)
    for k, i in enumerate(picked):
        ex = rows[i]
        if name == "mmlu_stem":
            for completion in choice_formats("ABCD"[ex["answer"]], str(ex["choices"][ex["answer"]]), rng):
                yield completion, ex, i
            continue
        other = raw_gold(name, rows[picked[(k + 1) % len(picked)]])
        for completion in math_formats(raw_gold(name, ex), other, rng):
            yield completion, ex, i


def verdicts(name: str) -> Iterator[tuple[str, str, bool | None, bool, bool]]:
    """(completion, the toolkit's prediction, its verdict (None: out of time), ours by
    grade(), ours by benchmarks.grade_completion(), the path eval takes)."""
    from toolkit_reference import toolkit_score

    data_name, _ = PLAN[name]
    bench = BENCHMARKS[name]
    for completion, ex, i in cases(name):
        item = bench.item(ex, i)  # as load_items makes it
        pred_t, _, ok_t = toolkit_score(completion, oracle_record(name, ex), data_name)
        _, ok_g = grade(completion, item.gold, item.kind, bench.strip_units, item.multiple)
        _, ok_c = grade_completion(item.kind, completion, item.gold, bench.strip_units, item.multiple)
        yield completion, pred_t, ok_t, ok_g, ok_c


@pytest.mark.slow
@needs_data
def test_default_grader_agrees_with_the_toolkit(monkeypatch):
    import toolkit_reference

    from lightreasoner.evaluation import grading

    # Both run out of time at 3 s, as the toolkit does; on a busy machine that happens to
    # different answers on each side, so here neither has a limit (none of these is slow).
    monkeypatch.setattr(toolkit_reference, "TIMEOUT_S", 60)
    monkeypatch.setattr(grading, "TOOLKIT_TIMEOUT_S", 60)
    totals: Counter = Counter()
    report, misses = [], []
    for name in PLAN:
        c: Counter = Counter()
        for completion, pred_t, ok_t, ok_g, ok_c in verdicts(name):
            if ok_t is None:
                c["out_of_time"] += 1
                continue
            c["n"] += 1
            c["toolkit_correct"] += ok_t
            c["agree"] += ok_g == ok_t
            c["agree_eval_path"] += ok_c == ok_t
            if ok_g != ok_t:
                misses.append((name, ok_t, pred_t, completion[len(COT) :]))
        totals.update(c)
        report.append((name, c))
    print()
    for name, c in report + [("overall", totals)]:
        print(
            f"{name:14s} n={c['n']:5d} agreement {100 * c['agree'] / c['n']:6.2f}% "
            f"(benchmarks.grade_completion {100 * c['agree_eval_path'] / c['n']:6.2f}%), "
            f"toolkit correct {c['toolkit_correct']}, out of time {c['out_of_time']}"
        )
    for miss in misses:
        print("  differs:", miss)
    for name, c in report + [("overall", totals)]:
        assert c["agree"] >= THRESHOLD * c["n"], (name, c)
        assert c["agree_eval_path"] >= THRESHOLD * c["n"], (name, c)  # what eval and grade use
        assert 0 < c["toolkit_correct"] < c["n"], (name, c)  # right and wrong answers both generated
