"""The toolkit's answer normalisation (Qwen2.5-Math ``parser.strip_string``), rule for rule,
with word2number's ``word_to_num`` for answers written in words."""

from __future__ import annotations

import re

# The toolkit's unit list (mainly from MathQA), used as regular expressions, in this order, as
# the toolkit does; "dollar" is not in it.
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
