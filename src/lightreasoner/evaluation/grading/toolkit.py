"""The toolkit's equivalence (Qwen2.5-Math ``grader.math_equal``), rule for rule, including
where it errs, and its verdict within its time limit (3 s)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from .extraction import toolkit_choice
from .safe_eval import Timeout, is_huge, parse_expr_safely, parse_latex, time_limit

TOOLKIT_TIMEOUT_S = 3.0  # evaluate.py: pool.map(math_equal_process, params, timeout=3)


def _parse_digits(s: str) -> float | None:
    s = str(s).replace(",", "")
    try:
        return float(s)
    except ValueError:
        if s.endswith("%"):
            s = s[:-2] if s[:-1].endswith("\\") else s[:-1]
            try:
                return float(s) / 100
            except ValueError:
                pass
    return None


def _str_to_pmatrix(s: str) -> str:
    rows = re.findall(r"\{.*,.*\}", s.strip())
    return ", ".join(r"\begin{pmatrix}" + m.strip("{}").replace(",", "\\") + r"\end{pmatrix}" for m in rows)


def _pmatrix_rows(s: str) -> list[str]:
    inner = s[len("\\begin{pmatrix}") : -len("\\end{pmatrix}")]
    return [line.strip() for line in inner.split("\\\\") if line.strip()]


def _is_matrix(s: str) -> bool:
    return s.startswith(("\\begin{pmatrix}", "\\begin{bmatrix}")) and s.endswith(("\\end{pmatrix}", "\\end{bmatrix}"))


def toolkit_equal(pred: str, gold: str) -> bool:
    """``math_equal(pred, gold)`` of the toolkit (without its time limit: see :func:`is_equiv`)."""
    if pred is None or gold is None:
        return False
    if pred.strip().lower() == gold.strip().lower():
        return True
    if gold in ("A", "B", "C", "D", "E") and toolkit_choice(pred, triggers=False) == gold:
        return True
    p_num, g_num = _parse_digits(pred), _parse_digits(gold)
    if p_num is not None and g_num is not None:
        return any(math.isclose(g, p_num, rel_tol=1e-4) for g in (g_num / 100, g_num, g_num * 100))
    if not pred:
        return False
    gold, pred = gold.strip(), pred.strip()
    if "pmatrix" in pred and "pmatrix" not in gold:
        gold = _str_to_pmatrix(gold)
    p_str, g_str = pred, gold
    if (pred.startswith("[") and pred.endswith("]") and not gold.startswith("(")) or (
        pred.startswith("(") and pred.endswith(")") and not gold.startswith("[")
    ):
        p_str, g_str = p_str.strip("[]()"), g_str.strip("[]()")
    for ch in "{}()":
        p_str, g_str = p_str.replace(ch, ""), g_str.replace(ch, "")
    if p_str.lower() == g_str.lower():
        return True
    bracketed = re.compile(r"(\(|\[).+(\)|\])")
    if bracketed.match(pred) and bracketed.match(gold):
        p_parts, g_parts = pred[1:-1].split(","), gold[1:-1].split(",")
        if len(p_parts) == len(g_parts) and all(toolkit_equal(p, g) for p, g in zip(p_parts, g_parts)):
            return True
    if _is_matrix(pred) and _is_matrix(gold) and _matrices_equal(_pmatrix_rows(pred), _pmatrix_rows(gold)):
        return True
    if pred.count("=") == 1 and gold.count("=") == 1:
        p_l, p_r = pred.split("=")
        g_l, g_r = gold.split("=")
        diff_p, diff_g = f"{p_l.strip()} - ({p_r.strip()})", f"{g_l.strip()} - ({g_r.strip()})"
        if _symbolic_equal(diff_p, diff_g) or _symbolic_equal(f"-({diff_p})", diff_g):
            return True
    elif _short_left(pred) and "=" not in gold and toolkit_equal(pred.split("=")[1], gold):
        return True  # (merged conditions: a failed branch here never makes the next one true)
    elif _short_left(gold) and "=" not in pred and toolkit_equal(pred, gold.split("=")[1]):
        return True
    return _symbolic_equal(pred, gold)


def _short_left(s: str) -> bool:
    """One "=" with at most two characters before it."""
    return s.count("=") == 1 and len(s.split("=")[0].strip()) <= 2


def _matrices_equal(p_rows: list[str], g_rows: list[str]) -> bool:
    if len(p_rows) != len(g_rows):
        return False
    for p_row, g_row in zip(p_rows, g_rows):
        p_cells, g_cells = p_row.split("&"), g_row.split("&")
        if len(p_cells) != len(g_cells) or not all(toolkit_equal(p, g) for p, g in zip(p_cells, g_cells)):
            return False
    return True


def _symbolic_equal(a: str, b: str) -> bool:
    """grader.symbolic_equal: parse both sides, then equal by string, ``==``, ``equals`` or
    ``simplify``, as equations, numerically (1e-4), or as matrices rounded to 3 places."""
    import sympy

    if a != b and _ONE_LETTER.fullmatch(a) and _ONE_LETTER.fullmatch(b):
        return False  # two different symbols
    if (_starts_with_prose(a) and not _PROSE.search(b.replace(" ", ""))) or (
        _starts_with_prose(b) and not _PROSE.search(a.replace(" ", ""))
    ):
        return False
    x, y = _toolkit_parse(a), _toolkit_parse(b)
    try:
        if str(x) == str(y) or x == y:
            return True
    except Exception:
        pass
    if is_huge(x) or is_huge(y):  # the toolkit's worker runs out of time on these
        return False
    checks: list[Callable[[], Any]] = [
        lambda: x.equals(y) or sympy.simplify(x - y) == 0,
        lambda: abs(x.lhs - x.rhs).equals(abs(y.lhs - y.rhs)),
        lambda: math.isclose(float(sympy.N(y)), float(sympy.N(x)), rel_tol=1e-4),
        lambda: x.shape == y.shape and x.applyfunc(lambda v: round(v, 3)).equals(y.applyfunc(lambda v: round(v, 3))),
    ]
    for check in checks:
        try:
            if check():
                return True
        except Exception:
            pass
    return False


_PROSE = re.compile(r"[A-Za-z]{12,}")
_ONE_LETTER = re.compile(r"[A-Za-z]")


def _starts_with_prose(s: str) -> bool:
    """Whether an answer starts with 12 letters or more (spaces aside): prose, not maths.
    Every parser of the toolkit reads that as a product of one-letter symbols (or one long
    name), which equals nothing without the same run of letters, and often runs out of time
    doing it; its verdict against an answer without such a run is False, reached here
    without parsing."""
    return bool(_PROSE.match(s.replace(" ", "")))


@lru_cache(maxsize=4096)
def _toolkit_parse(s: str) -> Any:
    """The toolkit's parser chain: sympy's ANTLR ``parse_latex``, then ``parse_expr`` (here
    a restricted evaluator), each on the text with ``\\\\`` → ``\\`` first, then as it is;
    the text itself when both fail. (The toolkit tries its own latex2sympy third; that
    parser rejects nearly all of what reaches it, and what it accepts, lists written with
    ``;``, compares equal to nothing it did not already match, so it is left out.)"""
    for parse in (parse_latex, parse_expr_safely):
        for text in dict.fromkeys((s.replace("\\\\", "\\"), s)):
            try:
                return parse(text)
            except Exception:
                pass
    return _Unparsed(s)


class _Unparsed:
    """Text that no parser read. The toolkit keeps it as a ``str``, which sympy's
    ``N``/``equals`` would hand to ``parse_expr`` (``eval``); this compares and prints as
    that ``str`` but cannot be sympified."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Unparsed) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def toolkit_verdict(pred: str, gold: str, timeout: float | None = TOOLKIT_TIMEOUT_S) -> bool:
    """:func:`toolkit_equal` within the toolkit's time limit (False when it runs out)."""
    try:
        with time_limit(timeout):
            return bool(toolkit_equal(pred, gold))
    except Timeout:
        return False
