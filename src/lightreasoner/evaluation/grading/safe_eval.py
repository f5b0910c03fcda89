"""Reading model text as maths without running it: sympy's ANTLR LaTeX parser, a restricted
stand-in for sympy's ``parse_expr`` (which runs ``eval`` on the text), a size guard for
numbers too large to compute, and a time limit for symbolic comparisons."""

from __future__ import annotations

import ast
import math
import operator
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any


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


def parse_latex(s: str) -> Any:
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


def parse_expr_safely(s: str) -> Any:
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
        return bool(base.is_number and exp.is_number and is_huge(sympy.Pow(base, exp, evaluate=False)))
    except Exception:
        return False


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


def is_huge(e: Any) -> bool:
    """Whether a parsed answer holds a number too large to compute (more than 10**5 digits)."""
    try:
        return _log10_size(e) > 1e5
    except Exception:
        return False


class Timeout(BaseException):
    """Raised by the timer inside a symbolic comparison (not an Exception, so that no
    ``except Exception`` on the way swallows it)."""


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`Timeout` after ``seconds`` (SIGALRM: main thread on POSIX only;
    elsewhere no limit)."""
    usable = seconds and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise Timeout

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
