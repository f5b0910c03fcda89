"""Answer extraction and equivalence: the Qwen2.5-Math toolkit's verdicts, and a strict grader.

``toolkit`` (the default) reproduces QwenLM/Qwen2.5-Math ``evaluation/parser.py`` and
``grader.py`` rule for rule, so accuracies sit next to the paper's, including where the
toolkit errs: its unit list (``"162 dollars"`` stays ``162dollars``), ``"11 and 13"`` read
as ``1113``, lists compared in order, the last free-standing letter of the prose taken as a
multiple-choice answer, a left-hand side ``f(x)=`` kept. Its symbolic step parses with
sympy's ANTLR LaTeX parser, as the toolkit does first, then with a restricted evaluator in
place of sympy's ``parse_expr`` (which runs ``eval`` on the text), and has the toolkit's
time limit (3 s).

``strict`` keeps the toolkit's extraction and normalisation but judges equivalence
correctly: exact integers, no factor of 100 forgiven, unit words dropped, lists and
multiple answers order-free, labels (``b=-3``) and left-hand sides (``f(x)=``) set aside,
symbolic equality by ``math-verify`` (time-limited), the article "A" not a choice.
Model text is never evaluated as code.
"""

from __future__ import annotations

import ast
import math
import operator
import re
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

CHOICE_LETTERS = "ABCD"
TOOLKIT_TIMEOUT_S = 3.0  # evaluate.py: pool.map(math_equal_process, params, timeout=3)

# ---------------------------------------------------------------------------------------------
# The toolkit's normalisation (parser.strip_string). Its unit list (mainly from MathQA) is used
# as regular expressions, in this order, as the toolkit does; "dollar" is not in it.
# ---------------------------------------------------------------------------------------------
_TOOLKIT_UNITS = [
    "east", "degree", "mph", "kmph", "ft", "m sqaure", " m east", "sq m", "deg", "mile", "q .", "monkey",
    "prime", "ratio", "profit of rs", "rd", "o", "gm", "p . m", "lb", "tile", "per", "dm", "lt", "gain",
    "ab", "way", "west", "a .", "b .", "c .", "d .", "e .", "f .", "g .", "h .", "t", "a", "h",
    "no change", "men", "soldier", "pie", "bc", "excess", "st", "inches", "noon", "percent", "by", "gal",
    "kmh", "c", "acre", "rise", "a . m", "th", "π r 2", "sq", "mark", "l", "toy", "coin", "sq . m",
    "gallon", "° f", "profit", "minw", "yr", "women", "feet", "am", "pm", "hr", "cu cm", "square",
    "v â € ™", "are", "rupee", "rounds", "cubic", "cc", "mtr", "s", "ohm", "number", "kmph", "day",
    "hour", "minute", "min", "second", "man", "woman", "sec", "cube", "mt", "sq inch", "mp", "∏ cm ³",
    "hectare", "more", "sec", "unit", "cu . m", "cm 2", "rs .", "rs", "kg", "g", "month", "km", "m",
    "cm", "mm", "apple", "liter", "loss", "yard", "pure", "year", "increase", "decrease", "d", "less",
    "Surface", "litre", "pi sq m", "s .", "metre", "meter", "inch",
]  # fmt: skip
# (pattern, the literal text every match contains: the unit up to its first "." wildcard)
_UNIT_RES = [
    (re.compile(r"(^|\W)" + u + r"($|\W)"), u.split(".")[0]) for u in _TOOLKIT_UNITS + [u + "s" for u in _TOOLKIT_UNITS]
]

# word2number's American number words, as the toolkit converts them (w2n.word_to_num)
_DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_TEENS = ["ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_NUMBER_WORDS: dict[str, int | str] = {
    **{w: i for i, w in enumerate(_DIGIT_WORDS + _TEENS)},
    **{w: 10 * i for i, w in enumerate(_TENS, 2)},
    "hundred": 100,
    "thousand": 1000,
    "million": 1000000,
    "billion": 1000000000,
    "point": ".",
}


def _number_formation(words: list[str]) -> int:
    nums = [_NUMBER_WORDS[w] for w in words]
    if len(nums) == 4:
        return nums[0] * nums[1] + nums[2] + nums[3]
    if len(nums) == 3:
        return nums[0] * nums[1] + nums[2]
    if len(nums) == 2:
        return nums[0] * nums[1] if 100 in nums else nums[0] + nums[1]
    return nums[0]


def word_to_num(text: str) -> int | float:
    """word2number 1.1's ``word_to_num`` (the toolkit's ``convert_word_number``): the number
    words of ``text`` as a number, every other word ignored; ValueError (or another
    exception, as in the original) when there is none."""
    text = text.replace("-", " ").lower()
    if text.isdigit():
        return int(text)
    words = [w for w in text.strip().split() if w in _NUMBER_WORDS]
    if not words:
        raise ValueError("no number words")
    if any(words.count(w) > 1 for w in ("thousand", "million", "billion", "point")):
        raise ValueError("redundant number word")
    decimals: list[str] = []
    if "point" in words:
        decimals, words = words[words.index("point") + 1 :], words[: words.index("point")]
    bi, mi, th = (words.index(w) if w in words else -1 for w in ("billion", "million", "thousand"))
    if (th > -1 and (th < mi or th < bi)) or (mi > -1 and mi < bi):
        raise ValueError("malformed number")
    total: int | float = 0
    if len(words) == 1:
        total += _NUMBER_WORDS[words[0]]
    elif words:
        if bi > -1:
            total += _number_formation(words[:bi]) * 1000000000
        if mi > -1:
            total += _number_formation(words[bi + 1 if bi > -1 else 0 : mi]) * 1000000
        if th > -1:
            start = mi + 1 if mi > -1 else bi + 1 if bi > -1 else 0
            total += _number_formation(words[start:th]) * 1000
        if th > -1 and th != len(words) - 1:
            total += _number_formation(words[th + 1 :])
        elif mi > -1 and mi != len(words) - 1:
            total += _number_formation(words[mi + 1 :])
        elif bi > -1 and bi != len(words) - 1:
            total += _number_formation(words[bi + 1 :])
        elif th == -1 and mi == -1 and bi == -1:
            total += _number_formation(words)
    if decimals and all(d in _DIGIT_WORDS for d in decimals):
        total += float("0." + "".join(str(_DIGIT_WORDS.index(d)) for d in decimals))
    return total


def _convert_word_number(s: str) -> str:
    try:
        return str(word_to_num(s))
    except Exception:
        return s


def _fix_fracs(s: str) -> str:
    """``\\frac12`` → ``\\frac{1}{2}``, ``\\frac1{7}`` → ``\\frac{1}{7}``; unchanged when a
    ``\\frac`` has fewer than two characters after it."""
    parts = s.split("\\frac")
    out = parts[0]
    for p in parts[1:]:
        out += "\\frac"
        if p.startswith("{"):
            out += p
        elif len(p) < 2:
            return s
        elif p[1] != "{":
            out += "{" + p[0] + "}{" + p[1] + "}" + p[2:]
        else:
            out += "{" + p[0] + "}" + p[1:]
    return out


def _fix_a_slash_b(s: str) -> str:
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        a = parts[0] if "sqrt" in parts[0] else int(parts[0])
        b = parts[1] if "sqrt" in parts[1] else int(parts[1])
    except ValueError:
        return s
    return f"\\frac{{{a}}}{{{b}}}" if s == f"{a}/{b}" else s


def normalize(answer: str, strip_units: bool = True) -> str:
    """The toolkit's answer normalisation (``strip_string``; ``strip_units=False`` is its
    ``skip_unit``), rule for rule."""
    s = str(answer).strip().replace("\n", "").rstrip(".")
    s = s.replace("\\!", "")
    s = re.sub(r"\\begin\{array\}\{.*?\}", r"\\begin{pmatrix}", s)
    s = re.sub(r"\\end\{array\}", r"\\end{pmatrix}", s).replace("bmatrix", "pmatrix")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\{", "{").replace("\\}", "}")
    no_unit = re.sub(r"\\text\{.*?\}$", "", s).strip()
    if no_unit != "":
        s = no_unit
    if strip_units:
        for _ in range(2):
            for unit, literal in _UNIT_RES:
                stripped = unit.sub(r"\1\2", s) if literal in s else s
                if stripped != "":
                    s = stripped
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\(", "").replace("\\)", "")
    s = _convert_word_number(s)
    s = re.sub(r"\\text\{(.*?)\}", r"\1", s)
    for key in ("x=", "y=", "z=", "x\\in", "y\\in", "z\\in", "x\\to", "y\\to", "z\\to"):
        s = s.replace(key, "")
    s = s.replace("\\emptyset", "{}").replace("(-\\infty,\\infty)", "\\mathbb{R}")
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    # (the toolkit drops one pair of brackets around an alphanumeric string here: a no-op)
    s = s.replace("infinity", "\\infty")
    if "\\infty" not in s:
        s = s.replace("inf", "\\infty")
    s = s.replace("+\\inity", "\\infty")
    s = s.replace("and", "").replace("\\mathbf", "")
    s = re.sub(r"\\mbox\{.*?\}", "", s)
    if "j" in s and "i" not in s:
        s = s.replace("j", "i")
    s = re.sub(r"(\d+)\.0*([^\d])", r"\1\2", s)
    s = re.sub(r"(\d+)\.0*$", r"\1", s)
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        s = sides[1]
    s = re.sub(r"\\sqrt(\w+)", r"\\sqrt{\1}", s)
    s = s.replace(" ", "")
    return _fix_a_slash_b(_fix_fracs(s))


# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------
def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (nested braces) or ``\\boxed x``; None if absent."""
    idx = text.rfind("boxed")
    if idx < 0:
        return None
    rest = text[idx + len("boxed") :]
    if not rest:
        return ""
    if rest[0] != "{":
        return rest.split("$")[0].strip()
    depth, out = 1, []
    for ch in rest[1:]:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                break
        out.append(ch)
    return "".join(out)


_CHOICE_TRIGGERS = ("choice is", "answer is")


def toolkit_choice(text: str, triggers: bool = True) -> str:
    """The toolkit's ``choice_answer_clean``: the first letter A–E after the last "answer is"
    / "choice is", else the last free-standing letter a–e or A–E anywhere (so the article
    "a" counts), else the cleaned text. ``triggers=False``: grader.py's variant, without
    the triggers."""
    text = text.strip("\n")
    flag = False
    if triggers:
        if any(text.count(t) > 1 for t in _CHOICE_TRIGGERS):
            text = text.split("\n\n")[0]
        parts = re.split("|".join(_CHOICE_TRIGGERS), text)
        if len(parts) > 1:
            flag, text = True, parts[-1]
    text = text.strip("\n").rstrip(".").rstrip("/").strip(" ").lstrip(":")
    letters = re.findall(r"\b(A|B|C|D|E)\b", text.upper()) or [text.strip().strip(".")]
    return (letters[0] if flag else letters[-1]).rstrip(".").rstrip("/")


def _is_article(text: str, start: int, end: int) -> bool:
    """Whether the "A" at ``text[start:end]`` opens a sentence before a lowercase word."""
    return (
        text[start:end] == "A"
        and re.match(r"\s+[a-z]", text[end:]) is not None
        and re.search(r"(?:^|[.!?:;]\s*|\n\s*)$", text[:start]) is not None
    )


def extract_choice(completion: str, strict: bool = False) -> str:
    """A letter A–D: from the last box, else "answer is (X)", else the last free-standing
    capital letter. ``strict`` also reads a lowercase letter standing alone after "answer
    is", and does not take the article "A" opening a sentence for a choice."""
    boxed = last_boxed(completion)
    for text in ([boxed] if boxed else []) + [completion]:
        m = re.search(r"(?:answer|choice|option) is:?\s*\(?\$?(?:\\text(?:bf)?\{)?\(?([A-D])\b", text)
        if m:
            return m.group(1)
        m = re.search(r"(?:answer|choice) is:?\s*\(?([a-d])\)?(?=\s*[.,;:]?\s*$)", text) if strict else None
        if m:
            return m.group(1).upper()
        letters = [
            m.group(1)
            for m in re.finditer(r"(?<![A-Za-z\\])([A-D])(?![A-Za-z])", text)
            if not (strict and _is_article(text, m.start(1), m.end(1)))
        ]
        if letters:
            return letters[-1]
    return ""


def _raw_answer(text: str, first_sentence: bool) -> str:
    """The toolkit's ``extract_answer`` before normalisation: the minerva "final answer is
    $...$. I hope", the last box, the text after "he answer is" / "final answer is" (all of
    it, or with ``first_sentence`` its first sentence), or the last number."""
    if "final answer is $" in text and "$. I hope" in text:
        pred = text.split("final answer is $", 1)[1].split("$. I hope", 1)[0].strip()
    elif "boxed" in text:
        pred = last_boxed(text) or ""
    elif "he answer is" in text or "final answer is" in text:
        pred = text.split("he answer is" if "he answer is" in text else "final answer is")[-1].strip()
        if first_sentence:
            pred = re.split(r"\.(?:\s|$)", pred.split("\n")[0])[0]
    elif "答案是" in text:
        pred = text.split("答案是")[1].strip().split("\n\n")[0].strip()
    else:
        nums = re.findall(r"-?\d*\.?\d+", text.replace(",", ""))
        pred = nums[-1] if nums else ""
    pred = re.sub(r"\n\s*", "", pred)
    pred = pred[1:] if pred.startswith(":") else pred
    pred = pred[:-1] if pred.endswith(".") else pred
    return pred[:-1] if pred.endswith("/") else pred


_UNIT_WORDS = re.compile(
    r"^\s*((?:[A-Za-z]\s*=\s*)?[-+]?\\?\$?\s*\d[\d,]*(?:\.\d+)?\s*(?:\\?%)?)\s+[A-Za-z][A-Za-z .'-]*$"
)
_AND_LIST = re.compile(r"\s*(?:,?\s+and\s+|\\text\{\s*and\s*\}|\\(?:q?quad)\s*and\s*)\s*")


def _strict_raw(raw: str) -> str:
    """Strict extraction's repairs before normalisation: the box inside a "final answer is
    $...$" sentence, an answer wrapped whole in ``\\text{}`` and a ``\\text{A}`` letter
    unwrapped (normalisation drops a trailing ``\\text{}`` as a unit), unit words after a
    number dropped (``162 dollars``), "and" between list items made a comma (``11 and 13``)."""
    raw = raw.strip()
    if "boxed" in raw:
        raw = last_boxed(raw) or raw
    while raw.startswith("\\text{") and _closing(raw, 5) == len(raw) - 1:
        raw = raw[6:-1].strip()
    raw = re.sub(r"\\text\{\s*(\(?[A-E]\)?)\s*\}", r"\1", raw)
    m = _UNIT_WORDS.match(raw)
    if m:
        return m.group(1)
    return _AND_LIST.sub(", ", raw)


def extract_answer(completion: str, kind: str = "math", strip_units: bool = True, strict: bool = False) -> str:
    """The final answer of a completion, normalised; ``kind`` is ``math`` or ``choice``.
    The toolkit normalises its prediction twice (in ``extract_answer`` and ``run_execute``)."""
    text = completion.strip().replace("\u043a\u0438", "")
    if kind == "choice":
        if strict:
            return extract_choice(text, strict=True)
        letter = toolkit_choice(text)
        cleaned = normalize(letter)
        return cleaned if cleaned in ("A", "B", "C", "D", "E") else letter
    if strict:
        return normalize(normalize(_strict_raw(_raw_answer(text, True)), strip_units), strip_units)
    return normalize(normalize(_raw_answer(text, False), strip_units), strip_units)


# ---------------------------------------------------------------------------------------------
# The toolkit's equivalence (grader.math_equal)
# ---------------------------------------------------------------------------------------------
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
    if _is_huge(x) or _is_huge(y):  # the toolkit's worker runs out of time on these
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


def _log10_size(e: Any) -> float:
    """An upper estimate of log10 of the size of a number built from numbers, powers,
    factorials, sums and products (inf when too large to tell); 0 for anything else."""
    import sympy

    if e.is_Integer or e.is_Rational:
        return max(len(str(abs(e.p))), len(str(abs(e.q))))
    if e.is_Float:
        return max(0.0, math.log10(abs(float(e)) or 1))
    if e.is_Pow:
        if e.base.is_number and e.base in (0, 1, -1):
            return 1.0
        exp_size = _log10_size(e.exp)
        if exp_size > 6:
            return math.inf
        try:
            exponent = abs(float(e.exp))
        except (TypeError, ValueError):
            return _log10_size(e.base)
        return exponent * max(_log10_size(e.base), 1.0)
    if isinstance(e, sympy.factorial):
        n = _log10_size(e.args[0])
        return math.inf if n > 6 else 10**n * n
    if e.args:
        return sum(_log10_size(a) for a in e.args)
    return 0.0


def _is_huge(e: Any) -> bool:
    """Whether a parsed answer holds a number too large to compute (more than 10**5 digits)."""
    try:
        return _log10_size(e) > 1e5
    except Exception:
        return False


@lru_cache(maxsize=4096)
def _toolkit_parse(s: str) -> Any:
    """The toolkit's parser chain: sympy's ANTLR ``parse_latex``, then ``parse_expr`` (here
    a restricted evaluator), each on the text with ``\\\\`` → ``\\`` first, then as it is;
    the text itself when both fail. (The toolkit tries its own latex2sympy third; that
    parser rejects nearly all of what reaches it, and what it accepts, lists written with
    ``;``, compares equal to nothing it did not already match, so it is left out.)"""
    for parse in (_parse_latex, _parse_expr_safely):
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


@lru_cache(maxsize=1)
def _antlr_latex() -> tuple[Any, Any, type, type]:
    """sympy's ANTLR LaTeX lexer and parser, without the check that the runtime is 4.11
    (the 4.11-generated parser loads in the 4.13 runtime that math-verify needs)."""
    import antlr4
    from sympy.parsing.latex import _parse_latex_antlr as m

    if m.LaTeXParser is None or m.MathErrorListener is None:
        raise ImportError("sympy's ANTLR LaTeX parser is unavailable")

    class Lexer(m.LaTeXLexer):
        def checkVersion(self, toolVersion: str) -> None:  # noqa: N802 (ANTLR's name)
            pass

    class Parser(m.LaTeXParser):
        def checkVersion(self, toolVersion: str) -> None:  # noqa: N802
            pass

    return antlr4, m, Lexer, Parser


def _parse_latex(s: str) -> Any:
    """``sympy.parsing.latex.parse_latex(s)`` (ANTLR backend, not strict: text after a
    complete expression, such as ``,2`` in ``1,2``, is ignored). sympy parses the top of a
    fraction again (to find derivatives) with its own ``parse_latex``, which is this one
    while the call lasts."""
    _, m, _, _ = _antlr_latex()
    checked = m.parse_latex
    m.parse_latex = _parse_latex_unchecked
    try:
        return _parse_latex_unchecked(s)
    finally:
        m.parse_latex = checked


def _parse_latex_unchecked(s: str, strict: bool = False) -> Any:
    antlr4, m, lexer_cls, parser_cls = _antlr_latex()
    s = s.strip()
    listener = m.MathErrorListener(s)
    lexer = lexer_cls(antlr4.InputStream(s))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    parser = parser_cls(antlr4.CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    return m.convert_relation(parser.math().relation())


# sympy's parse_expr: the same tokens (stringify_expr with the standard transformations and
# its default names), evaluated by walking a whitelisted AST instead of eval().
_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.BitXor: operator.xor,
}
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_STRING_TAKERS = ("Symbol", "Function", "Integer", "Float", "Rational")
_PLAIN_FUNCTIONS = ("sqrt", "root", "cbrt", "real_root", "gcd", "lcm", "abs")


class _Unsafe(ValueError):
    """A construct the restricted evaluator does not run."""


@lru_cache(maxsize=1)
def _parse_expr_names() -> dict[str, Any]:
    """parse_expr's default global names: ``from sympy import *``, the builtin functions,
    ``max``/``min`` as ``Max``/``Min``."""
    import builtins
    import types

    import sympy

    names = {name: getattr(sympy, name) for name in sympy.__all__ if hasattr(sympy, name)}
    names.update({k: v for k, v in vars(builtins).items() if isinstance(v, types.BuiltinFunctionType)})
    names.update(max=sympy.Max, min=sympy.Min)
    return names


def _allowed_callable(obj: Any) -> bool:
    import sympy
    from sympy.matrices import MatrixBase

    if isinstance(obj, type):
        return issubclass(obj, (sympy.Basic, MatrixBase))
    names = _parse_expr_names()
    return any(obj is names.get(n) for n in _PLAIN_FUNCTIONS)


def _parse_expr_safely(s: str) -> Any:
    """What ``sympy.parse_expr(s)`` returns, for arithmetic, symbols, sympy functions and
    classes, tuples, lists, sets and comparisons; anything else (attributes, keywords,
    strings, other builtins, huge powers) raises."""
    from sympy.parsing.sympy_parser import standard_transformations, stringify_expr

    names = _parse_expr_names()
    code = stringify_expr(s, {}, dict(names), standard_transformations)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)  # e.g. "(1,2)(3)": a tuple called
        tree = ast.parse(code.strip(), mode="eval")
    return _run(tree.body, names)


def _run(node: ast.AST, names: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, complex, bool, type(None))):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise _Unsafe(node.id)
        obj = names[node.id]
        if callable(obj) and not _allowed_callable(obj) and not hasattr(obj, "is_number"):
            raise _Unsafe(node.id)
        return obj
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        items = [_run(e, names) for e in node.elts]
        return {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _run(node.left, names), _run(node.right, names)
        if isinstance(left, (tuple, list, set)) or isinstance(right, (tuple, list, set)):
            raise _Unsafe("arithmetic on a container")  # [1]*10**9 would repeat the list
        if isinstance(node.op, ast.Pow) and _too_big_power(left, right):
            raise _Unsafe("power")
        return _BINOPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _run(node.operand, names)
        return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _COMPARE:
        return _COMPARE[type(node.ops[0])](_run(node.left, names), _run(node.comparators[0], names))
    if isinstance(node, ast.Call) and not node.keywords:
        func = _run(node.func, names)
        if not _allowed_callable(func):
            raise _Unsafe("call")
        takes_strings = isinstance(node.func, ast.Name) and node.func.id in _STRING_TAKERS
        args = [
            a.value if takes_strings and isinstance(a, ast.Constant) and isinstance(a.value, str) else _run(a, names)
            for a in node.args
        ]
        if getattr(func, "__module__", "").startswith("sympy.functions.combinatorial") and any(
            _log10_size(a) > 5 for a in args if hasattr(a, "is_Integer")
        ):
            raise _Unsafe("factorial of a large number")
        return func(*args)
    raise _Unsafe(type(node).__name__)


def _too_big_power(base: Any, exp: Any) -> bool:
    """Whether ``base**exp`` of two numbers has more than 10**5 digits."""
    import sympy

    try:
        base, exp = sympy.sympify(base, strict=True), sympy.sympify(exp, strict=True)
        return bool(base.is_number and exp.is_number and _is_huge(sympy.Pow(base, exp, evaluate=False)))
    except Exception:
        return False


class _Timeout(BaseException):
    """Raised by the timer inside a symbolic comparison (not an Exception, so that no
    ``except Exception`` on the way swallows it)."""


@contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`_Timeout` after ``seconds`` (SIGALRM: main thread on POSIX only;
    elsewhere no limit)."""
    usable = seconds and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def toolkit_verdict(pred: str, gold: str, timeout: float | None = TOOLKIT_TIMEOUT_S) -> bool:
    """:func:`toolkit_equal` within the toolkit's time limit (False when it runs out)."""
    try:
        with _time_limit(timeout):
            return bool(toolkit_equal(pred, gold))
    except _Timeout:
        return False


# ---------------------------------------------------------------------------------------------
# The strict grader
# ---------------------------------------------------------------------------------------------
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
    return s.startswith("(") and _closing(s, 0) == len(s) - 1 and len(_split_top_level(s[1:-1])) > 1


def _closing(s: str, start: int) -> int:
    """Index of the bracket that closes the one at ``start`` (-1 if none)."""
    depth = 0
    for i in range(start, len(s)):
        depth += s[i] in "([{"
        depth -= s[i] in ")]}"
        if depth == 0:
            return i
    return -1


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


def is_equiv(
    pred: str, gold: str, kind: str = "math", multiple: bool = False, timeout: int = 5, strict: bool = False
) -> bool:
    """Whether a normalised prediction matches a normalised gold answer: the toolkit's
    verdict, or with ``strict`` :func:`strict_equal` (``multiple`` makes no difference to
    either: answer lists are ordered for the toolkit and order-free when strict).

    The toolkit's gold goes through ``strip_string`` once more, without units: that gives
    its MATH gold (stripped twice) and its Minerva gold (stripped without units) from the
    benchmark golds, and leaves the others as they are."""
    if pred is None or gold is None:
        return False
    pred, gold = str(pred), str(gold)
    if strict:
        pred, gold = pred.strip(), gold.strip()
        if not pred:
            return False
        if kind == "choice":
            return pred.upper() == gold.upper()
        return strict_equal(pred, gold, timeout)
    return toolkit_verdict(pred, normalize(gold, strip_units=False) if kind != "choice" else gold, TOOLKIT_TIMEOUT_S)


def _is_choice_string(s: str) -> bool:
    return all(c in "ABCDE" for c in s)


def grade(
    completion: str,
    gold: str,
    kind: str = "math",
    strip_units: bool = True,
    multiple: bool = False,
    strict: bool = False,
) -> tuple[str, bool]:
    """``(extracted, correct)`` for one completion against a normalised gold answer.

    The toolkit (``math_eval.py``) reads the completion again when the gold is a letter
    A–E and its prediction is not (``choice_answer_clean`` of the whole text), and keeps
    only the letters A–E of a prediction when the gold consists of them (or is empty)."""
    pred = extract_answer(completion, kind, strip_units, strict)
    if not strict:
        g = normalize(gold, strip_units=False) if kind != "choice" else gold
        if g in ("A", "B", "C", "D", "E") and pred not in ("A", "B", "C", "D", "E"):
            pred = toolkit_choice(completion.strip())
        elif _is_choice_string(g) and not _is_choice_string(pred):
            pred = "".join(c for c in pred if c in "ABCDE")
    return pred, is_equiv(pred, gold, kind, multiple, strict=strict)
