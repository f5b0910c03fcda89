"""The Qwen2.5-Math evaluation toolkit's grading, as a test oracle (never used by the package).

``parser.py``, ``grader.py``, ``latex2sympy2.py`` and ``gen/`` are copies of QwenLM/Qwen2.5-Math
``evaluation/`` at commit a45202bd16f1ec06f433442dc1152d0074773465 (MIT, Copyright (c) 2024 Zhibin
Gou; latex2sympy MIT, Copyright 2016 latex2sympy), changed only where each file's header says.
:func:`toolkit_score` strings them together the way ``math_eval.py`` and ``evaluate.py`` do.

Differences from a run of the toolkit itself: sympy and the ANTLR runtime are this venv's (the
toolkit pins sympy 1.12 and antlr4 4.11.1; math-verify needs 4.13.2). sympy's ``parse_latex``
refuses a runtime other than 4.11, so grader.py gets the same function without that check (its
4.11-generated parser loads in 4.13.2), and without sympy 1.13's matrix-delimiter check, which
1.12 does not have; the generated parsers' version warnings are silenced. The 3 s per-answer
limit of ``evaluate.py`` (a pebble process pool that kills the worker) is a SIGALRM timer here,
and a comparison that runs out of time is reported as None rather than False.
"""

from __future__ import annotations

import functools
import signal
import warnings

import antlr4
from sympy.parsing.latex import _parse_latex_antlr

from .gen.PSLexer import PSLexer
from .gen.PSParser import PSParser


def _no_version_check(self, tool_version):
    pass


PSLexer.checkVersion = PSParser.checkVersion = _no_version_check  # before latex2sympy2 runs its examples

with warnings.catch_warnings():  # the copies' invalid escape sequences ("\%"), as in the toolkit
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", SyntaxWarning)
    from . import grader
    from .grader import math_equal
    from .parser import STRIP_EXCEPTIONS, choice_answer_clean, extract_answer, parse_ground_truth, strip_string


class _LaTeXLexer(_parse_latex_antlr.LaTeXLexer):
    checkVersion = _no_version_check


class _LaTeXParser(_parse_latex_antlr.LaTeXParser):
    checkVersion = _no_version_check


def parse_latex(sympy, strict=False):
    """sympy's ``parse_latex``, ANTLR backend, less its ANTLR 4.11 check (also for the
    fraction tops that sympy parses again, to find derivatives)."""
    checked = _parse_latex_antlr.parse_latex
    _parse_latex_antlr.parse_latex = _parse_latex_unchecked
    try:
        return _parse_latex_unchecked(sympy, strict)
    finally:
        _parse_latex_antlr.parse_latex = checked


def _parse_latex_unchecked(sympy, strict=False):
    sympy = sympy.strip()
    matherror = _parse_latex_antlr.MathErrorListener(sympy)
    lex = _LaTeXLexer(antlr4.InputStream(sympy))
    lex.removeErrorListeners()
    lex.addErrorListener(matherror)
    parser = _LaTeXParser(antlr4.CommonTokenStream(lex))
    parser.removeErrorListeners()
    parser.addErrorListener(matherror)
    relation = parser.math().relation()
    if strict and (relation.start.start != 0 or relation.stop.stop != len(sympy) - 1):
        raise _parse_latex_antlr.LaTeXParsingError("Invalid LaTeX")
    return _parse_latex_antlr.convert_relation(relation)


grader.parse_latex = parse_latex
# memoised: the same gold is parsed for every completion (pure functions; results unchanged)
grader.parse_latex = functools.lru_cache(maxsize=4096)(grader.parse_latex)
grader.parse_expr = functools.lru_cache(maxsize=4096)(grader.parse_expr)
grader.latex2sympy = functools.lru_cache(maxsize=4096)(grader.latex2sympy)

TIMEOUT_S = 3  # evaluate.py: pool.map(math_equal_process, params, timeout=3)


def _is_multi_choice(answer: str) -> bool:  # math_eval.is_multi_choice
    return all(c in ["A", "B", "C", "D", "E"] for c in answer)


def toolkit_pred(completion: str, gt: str, data_name: str) -> str:
    """The prediction as math_eval.py leaves it: run_execute, then the multiple-choice fix-ups."""
    pred = strip_string(extract_answer(completion, data_name), skip_unit=data_name in STRIP_EXCEPTIONS)
    if gt in ["A", "B", "C", "D", "E"] and pred not in ["A", "B", "C", "D", "E"]:
        pred = choice_answer_clean(completion)
    elif _is_multi_choice(gt) and not _is_multi_choice(pred):
        pred = "".join(c for c in pred if c in ["A", "B", "C", "D", "E"])
    return pred


class _OutOfTime(BaseException):
    pass


def toolkit_score(completion: str, example: dict, data_name: str) -> tuple[str, str, bool | None]:
    """``(pred, gt, correct)`` for one completion of one benchmark record, as the toolkit scores
    it; ``correct`` is None when the comparison ran out of time (the toolkit: False)."""
    _, gt = parse_ground_truth(dict(example), data_name)
    pred = toolkit_pred(completion.strip(), gt, data_name)
    timed_out = False

    def _alarm(signum, frame):  # raised again every 50 ms: grader.py's bare excepts swallow one
        nonlocal timed_out
        timed_out = True
        raise _OutOfTime

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, TIMEOUT_S, 0.05)
    try:
        ok = bool(math_equal(pred, gt))
    except _OutOfTime:
        ok = False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return pred, gt, None if timed_out else ok
