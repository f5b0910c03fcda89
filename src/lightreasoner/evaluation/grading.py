"""Answer extraction and equivalence, following the Qwen2.5-Math evaluation toolkit.

Extraction: the last ``\\boxed{...}`` (nested braces), else "the answer is ...", else
the last number; multiple choice gives a letter. The toolkit's string normalisation is
applied to both sides; equality is then decided by exact match, by numbers (commas,
percentages, fractions; relative tolerance 1e-4, a percentage may match its /100 or
x100 form as in the toolkit), and finally by ``math-verify`` (LaTeX and symbolic
equivalence, intervals, sets, tuples), which has a time limit per comparison. Model
text is never evaluated as code.
"""

from __future__ import annotations

import math
import re

CHOICE_LETTERS = "ABCD"

# unit words the toolkit strips from numeric answers (free-standing words only)
_UNITS = [
    "degree",
    "mph",
    "kmph",
    "kmh",
    "ft",
    "feet",
    "foot",
    "inch",
    "inches",
    "yard",
    "mile",
    "meter",
    "metre",
    "km",
    "cm",
    "mm",
    "m",
    "sq",
    "square",
    "cubic",
    "cu",
    "acre",
    "hectare",
    "liter",
    "litre",
    "gallon",
    "gal",
    "lb",
    "kg",
    "gm",
    "g",
    "hour",
    "hr",
    "minute",
    "min",
    "second",
    "sec",
    "day",
    "month",
    "year",
    "yr",
    "week",
    "dollar",
    "cent",
    "rupee",
    "rs",
    "unit",
    "percent",
    "apple",
    "man",
    "men",
    "woman",
    "women",
    "people",
    "person",
    "coin",
    "toy",
    "number",
    "more",
    "less",
    "pm",
    "am",
    "noon",
    "st",
    "nd",
    "rd",
    "th",
]
_UNIT_RE = re.compile(
    r"(^|\W)(?:" + "|".join(re.escape(u) + "s?" for u in sorted(_UNITS, key=len, reverse=True)) + r")($|\W)"
)
_WORD_NUMBERS = {
    w: str(i)
    for i, w in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        ]
    )
}
_NUMBER = re.compile(r"-?\d*\.?\d+")


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


def _fix_fracs(s: str) -> str:
    """``\\frac12`` → ``\\frac{1}{2}``, ``\\frac1{7}`` → ``\\frac{1}{7}``."""
    parts = s.split("\\frac")
    out = parts[0]
    for p in parts[1:]:
        out += "\\frac"
        if p.startswith("{") or len(p) < 2:
            out += p
        elif p[1] != "{":
            out += "{" + p[0] + "}{" + p[1] + "}" + p[2:]
        else:
            out += "{" + p[0] + "}" + p[1:]
    return out


def _fix_a_slash_b(s: str) -> str:
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    return f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}" if m else s


def normalize(answer: str, strip_units: bool = True) -> str:
    """The toolkit's answer normalisation (``strip_string``), rule for rule."""
    s = str(answer).strip().replace("\n", "").rstrip(".")
    s = s.replace("\\!", "")
    s = re.sub(r"\\begin\{array\}\{.*?\}", r"\\begin{pmatrix}", s)
    s = re.sub(r"\\end\{array\}", r"\\end{pmatrix}", s).replace("bmatrix", "pmatrix")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\{", "{").replace("\\}", "}")
    no_unit = re.sub(r"\\text\{.*?\}$", "", s).strip()
    if no_unit:
        s = no_unit
    if strip_units:
        for _ in range(2):
            stripped = _UNIT_RE.sub(r"\1\2", s)
            if stripped.strip():
                s = stripped
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\(", "").replace("\\)", "")
    s = _WORD_NUMBERS.get(s.strip().lower(), s)
    s = re.sub(r"\\text\{(.*?)\}", r"\1", s)
    for key in ("x=", "y=", "z=", "x\\in", "y\\in", "z\\in", "x\\to", "y\\to", "z\\to"):
        s = s.replace(key, "")
    s = s.replace("\\emptyset", "{}").replace("(-\\infty,\\infty)", "\\mathbb{R}")
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    s = s.replace("infinity", "\\infty")
    if "\\infty" not in s:
        s = s.replace("inf", "\\infty")
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
    if len(sides) == 2 and len(sides[0].strip()) <= 2:
        s = sides[1]
    s = re.sub(r"\\sqrt(\w+)", r"\\sqrt{\1}", s)
    s = s.replace(" ", "")
    return _fix_a_slash_b(_fix_fracs(s))


def extract_choice(completion: str, strict: bool = False) -> str:
    """A letter A–D: from the last box, else "answer is (X)", else the last free-standing
    letter. ``strict`` does not take the article "A" (a capital A before a lowercase word)
    for a choice, as the toolkit does."""
    boxed = last_boxed(completion)
    for text in ([boxed] if boxed else []) + [completion]:
        m = re.search(r"(?:answer|choice) is:?\s*\(?\$?(?:\\text\{)?\(?([A-D])\b", text)
        if m:
            return m.group(1)
        article = r"(?!\s+[a-z])" if strict else ""
        letters = re.findall(r"(?<![A-Za-z\\])([A-D])(?![A-Za-z])" + article, text)
        if letters:
            return letters[-1]
    return ""


def extract_answer(completion: str, kind: str = "math", strip_units: bool = True, strict: bool = False) -> str:
    """The final answer of a completion, normalised. ``kind`` is ``math`` or ``choice``."""
    if kind == "choice":
        return extract_choice(completion, strict)
    text = completion
    if "final answer is $" in text and "$. I hope" in text:
        pred = text.split("final answer is $", 1)[1].split("$. I hope", 1)[0].strip()
    elif (boxed := last_boxed(text)) is not None:
        pred = boxed
    elif "he answer is" in text:
        pred = _first_sentence(text.split("he answer is")[-1])
    elif "final answer is" in text:
        pred = _first_sentence(text.split("final answer is")[-1])
    else:
        nums = _NUMBER.findall(text.replace(",", ""))
        pred = nums[-1] if nums else ""
    pred = re.sub(r"\n\s*", "", pred)
    pred = pred.lstrip(":").rstrip("/").strip()
    return normalize(pred, strip_units)


def _first_sentence(text: str) -> str:
    text = text.strip().split("\n")[0]
    return re.split(r"\.(?:\s|$)", text)[0]


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
    try:
        val = float(s)
    except ValueError:
        return None
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


def math_verify_equal(pred: str, gold: str, timeout: int = 5) -> bool:
    """Symbolic equivalence with ``math-verify`` (time-limited; False on any failure)."""
    from math_verify import parse, verify

    try:
        g = parse(f"${gold}$", parsing_timeout=timeout)
        p = parse(f"${pred}$", parsing_timeout=timeout)
        return bool(g and p and verify(g, p, timeout_seconds=timeout))
    except Exception:  # a pathological expression must not stop an evaluation
        return False


def is_equiv(
    pred: str, gold: str, kind: str = "math", multiple: bool = False, timeout: int = 5, strict: bool = False
) -> bool:
    """Whether a normalised prediction matches a normalised gold answer (``strict``: see
    :func:`numbers_equal`)."""
    if pred is None or gold is None or str(pred).strip() == "":
        return False
    pred, gold = str(pred).strip(), str(gold).strip()
    if kind == "choice":
        return pred.upper() == gold.upper()
    if pred.lower() == gold.lower():
        return True
    pn, gn = to_number(pred), to_number(gold)
    if pn is not None and gn is not None:
        return numbers_equal(pn, gn, strict)
    if multiple:
        ps, gs = _split_top_level(pred), _split_top_level(gold)
        if len(gs) > 1:
            if len(ps) != len(gs):
                return False
            remaining = list(ps)
            for g in gs:
                hit = next((p for p in remaining if is_equiv(p, g, kind, False, timeout, strict)), None)
                if hit is None:
                    return False
                remaining.remove(hit)
            return True
    return math_verify_equal(pred, gold, timeout)
