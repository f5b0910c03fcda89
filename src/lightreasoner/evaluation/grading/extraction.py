"""The final answer of a completion: the toolkit's ``extract_answer`` (last box, "the answer
is", last number) and its multiple-choice reading, and the strict grader's repairs."""

from __future__ import annotations

import re

from .normalization import normalize

CHOICE_LETTERS = "ABCD"


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
    while raw.startswith("\\text{") and closing_bracket(raw, 5) == len(raw) - 1:
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


def closing_bracket(s: str, start: int) -> int:
    """Index of the bracket that closes the one at ``start`` (-1 if none)."""
    depth = 0
    for i in range(start, len(s)):
        depth += s[i] in "([{"
        depth -= s[i] in ")]}"
        if depth == 0:
            return i
    return -1
