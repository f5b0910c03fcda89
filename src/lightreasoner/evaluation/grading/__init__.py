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

- :mod:`.normalization`: the toolkit's ``strip_string`` (units, number words, fractions);
- :mod:`.extraction`: the final answer of a completion (box, "the answer is", last number, letter);
- :mod:`.toolkit`: the toolkit's equivalence (``math_equal``) and its time-limited verdict;
- :mod:`.strict`: the strict grader's equivalence;
- :mod:`.safe_eval`: parsing model text as maths without running it, and the time limit;
- here: :func:`grade` and :func:`is_equiv`, which choose between the two graders.
"""

from __future__ import annotations

from .extraction import CHOICE_LETTERS, extract_answer, extract_choice, last_boxed, toolkit_choice
from .normalization import normalize, word_to_num
from .strict import math_verify_equal, numbers_equal, strict_equal, to_number
from .toolkit import TOOLKIT_TIMEOUT_S, toolkit_equal, toolkit_verdict

__all__ = [
    "CHOICE_LETTERS",
    "TOOLKIT_TIMEOUT_S",
    "extract_answer",
    "extract_choice",
    "grade",
    "is_equiv",
    "last_boxed",
    "math_verify_equal",
    "normalize",
    "numbers_equal",
    "strict_equal",
    "to_number",
    "toolkit_choice",
    "toolkit_equal",
    "toolkit_verdict",
    "word_to_num",
]


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
