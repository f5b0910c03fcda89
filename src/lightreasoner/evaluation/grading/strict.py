"""The strict grader's equivalence: exact integers, no factor of 100 forgiven, lists and
multiple answers order-free, labels and left-hand sides set aside, symbolic equality by
``math-verify`` (time-limited). Model text is never evaluated as code."""

from __future__ import annotations

import math
import re

from .extraction import closing_bracket


def to_number(s: str) -> float | None:
    """A plain number, ``1,234``, or ``\\frac{a}{b}`` / ``a/b`` with numeric parts; else None."""
    s = s.strip()
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    m = re.fullmatch(r"(-?)\\frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", s)
    if m:
        try:
            val = float(m.group(2)) / float(m.group(3))
        except (ValueError, ZeroDivisionError):
            return None
        return -val if m.group(1) else val
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?", s, flags=re.IGNORECASE):
        return None
    val = float(s)
    return val if math.isfinite(val) else None


def numbers_equal(pred: float, gold: float, strict: bool = False) -> bool:
    """The toolkit's rule: relative tolerance 1e-4, and a percentage may be written as a
    fraction or x100 (so 50 matches 0.5). ``strict``: integers must be equal, other
    numbers agree to 1e-6 relative, and no factor of 100 is forgiven."""
    if strict:
        if pred.is_integer() and gold.is_integer():
            return pred == gold
        return math.isclose(pred, gold, rel_tol=1e-6, abs_tol=1e-12)
    return any(math.isclose(pred, g, rel_tol=1e-4, abs_tol=1e-12) for g in (gold, gold / 100, gold * 100))


def _split_top_level(s: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in (x.strip() for x in parts) if p]


_LABEL = re.compile(r"^(?:[A-Za-z](?:_\{?\w+\}?)?'*|\\[A-Za-z]+|[A-Za-z]\w*\([^()=]*\))$")


def _label_split(s: str) -> tuple[str | None, str]:
    """``b=-3`` → ``("b", "-3")``, ``f(x)=x+1`` → ``("f(x)", "x+1")``; ``(None, s)`` when
    the left side is not a name or a function of arguments."""
    if s.count("=") == 1:
        left, right = s.split("=")
        if _LABEL.match(left.strip()) and right.strip():
            return left.strip(), right.strip()
    return None, s


def math_verify_equal(pred: str, gold: str, timeout: int = 5) -> bool:
    """Symbolic equivalence with ``math-verify`` (time-limited; False on any failure)."""
    from math_verify import parse, verify

    try:
        g = parse(f"${gold}$", parsing_timeout=timeout)
        p = parse(f"${pred}$", parsing_timeout=timeout)
        return bool(g and p and verify(g, p, timeout_seconds=timeout))
    except Exception:  # a pathological expression must not stop an evaluation
        return False


def _strict_atom(pred: str, gold: str, timeout: int) -> bool:
    if pred.lower() == gold.lower():
        return True
    pn, gn = to_number(pred), to_number(gold)
    if pn is not None and gn is not None:
        return numbers_equal(pn, gn, strict=True)
    return math_verify_equal(pred, gold, timeout)


def _strict_lists(ps: list[str], gs: list[str], timeout: int) -> bool:
    """Lists of answers: labelled on both sides by label, otherwise order-free."""
    p_lab, g_lab = [_label_split(p) for p in ps], [_label_split(g) for g in gs]
    if len(ps) != len(gs):
        return False
    if all(k for k, _ in p_lab) and all(k for k, _ in g_lab):
        p_map, g_map = dict(p_lab), dict(g_lab)
        return p_map.keys() == g_map.keys() and all(_strict_atom(p_map[k], g_map[k], timeout) for k in g_map)
    remaining = [v for _, v in p_lab]
    for _, g in g_lab:
        hit = next((p for p in remaining if _strict_atom(p, g, timeout)), None)
        if hit is None:
            return False
        remaining.remove(hit)
    return True


def _is_tuple(s: str) -> bool:
    """``(a, b, ...)``: one pair of round brackets around a list."""
    return s.startswith("(") and closing_bracket(s, 0) == len(s) - 1 and len(_split_top_level(s[1:-1])) > 1


def strict_equal(pred: str, gold: str, timeout: int = 5) -> bool:
    """Correct equivalence of two normalised answers: exact numbers, lists order-free (and
    labelled ones by label), a name or ``f(x)`` on the left set aside, else math-verify."""
    if pred.lower() == gold.lower():
        return True
    pn, gn = to_number(pred), to_number(gold)
    if pn is not None and gn is not None:  # before lists: 1,058 is a number
        return numbers_equal(pn, gn, strict=True)
    ps, gs = _split_top_level(pred), _split_top_level(gold)
    if len(ps) > 1 and len(gs) == 1 and _is_tuple(gold):  # a point written without its brackets
        return _strict_atom(f"({pred})", gold, timeout)
    if len(ps) > 1 or len(gs) > 1:
        return _strict_lists(ps, gs, timeout)
    p_label, p_value = _label_split(pred)
    g_label, g_value = _label_split(gold)
    if p_label and g_label and p_label != g_label:
        return False
    return _strict_atom(p_value, g_value, timeout)
