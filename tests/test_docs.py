"""The documentation runs as written: every command in README.md and docs/*.md is checked
against the real command-line parser, and every relative link points at a file that exists.

- Fenced ``bash`` blocks: each ``lightreasoner ...``, ``python -m lightreasoner ...``,
  ``accelerate launch ... -m lightreasoner ...`` and ``torchrun ... -m lightreasoner ...``
  command is parsed by :func:`lightreasoner.cli.build_parser` as the command line would be:
  the subcommand exists, required arguments are there, and every ``--flag`` is an option of
  that subcommand, spelled out in full. ``train`` and ``sft`` also take any
  ``transformers.TrainingArguments`` field as a flag: those go through the same check the
  command applies (:func:`lightreasoner.config.trainer_args`). ``python benchmarks/X.py``
  commands use only flags that script defines; ``configs/``, ``benchmarks/`` and ``docs/``
  paths exist; ``pip install -e ".[extras]"`` names extras that pyproject.toml defines.
- Inline code spans that start with ``lightreasoner <subcommand>`` use only its flags.
- Relative links and images resolve, ``#anchors`` included; every docs page is linked from
  the README and opens with a paragraph saying what it is for.

The parser is read when the test runs, so new subcommands and flags are picked up as they
appear. Nothing is run and no model is loaded.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from lightreasoner.cli import TRAINER_STAGES, build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell"}
FENCE = re.compile(r"^(```+|~~~+)([^\n]*)\n(.*?)^\1[ \t]*$", re.M | re.S)
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
SHELL_OPERATORS = {"&&", "||", ";", "|", "&"}
REPO_PATH_PREFIXES = ("configs/", "benchmarks/", "docs/")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --------------------------------------------------------------------------- extraction


def fenced_blocks(text: str) -> list[tuple[str, int, str]]:
    """``(language, line number of the first body line, body)`` of every fenced block."""
    return [
        (m.group(2).strip().split(" ")[0].lower(), text.count("\n", 0, m.start(3)) + 1, m.group(3))
        for m in FENCE.finditer(text)
    ]


def without_code_blocks(text: str) -> str:
    """``text`` with fenced blocks blanked out (line numbers kept)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def logical_lines(body: str, first_line: int) -> list[tuple[int, str]]:
    """Shell lines with ``\\``-continuations joined, each with its first line number."""
    out, buf, start = [], "", first_line
    for i, line in enumerate(body.split("\n"), first_line):
        if not buf:
            start = i
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        if buf.strip():
            out.append((start, buf))
        buf = ""
    if buf.strip():
        out.append((start, buf))
    return out


def split_commands(line: str) -> list[list[str]]:
    """The simple commands of one shell line: tokens, comments dropped, split at ``&&``,
    ``||``, ``;``, ``|`` and ``&``, leading ``VAR=value`` assignments removed."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    commands, current = [], []
    for tok in lex:
        if tok in SHELL_OPERATORS:
            commands.append(current)
            current = []
        else:
            current.append(tok)
    commands.append(current)
    out = []
    for cmd in commands:
        while cmd and ENV_ASSIGNMENT.match(cmd[0]):
            cmd = cmd[1:]
        if cmd:
            out.append(cmd)
    return out


def lightreasoner_argv(cmd: list[str]) -> list[str] | None:
    """The arguments after ``lightreasoner`` when ``cmd`` runs the package, else None."""
    if cmd[0] == "lightreasoner":
        return cmd[1:]
    launchers = {"python", "python3", "torchrun", "accelerate", "srun"}
    if cmd[0] in launchers or cmd[0].endswith("/python"):
        for i in range(len(cmd) - 1):
            if cmd[i] == "-m" and cmd[i + 1] == "lightreasoner":
                return cmd[i + 2 :]
    return None


def shell_commands() -> list[tuple[str, list[str]]]:
    """``("file:line", tokens)`` of every simple command in a fenced shell block."""
    out = []
    for page in PAGES:
        for lang, first, body in fenced_blocks(page.read_text(encoding="utf-8")):
            if lang not in SHELL_LANGS:
                continue
            for lineno, line in logical_lines(body, first):
                for cmd in split_commands(line):
                    out.append((f"{rel(page)}:{lineno}", cmd))
    return out


COMMANDS = shell_commands()
LIGHTREASONER_COMMANDS = [(where, argv) for where, cmd in COMMANDS if (argv := lightreasoner_argv(cmd)) is not None]
BENCHMARK_COMMANDS = [
    (where, cmd)
    for where, cmd in COMMANDS
    if cmd[0] in ("python", "python3") and len(cmd) > 1 and cmd[1].startswith("benchmarks/")
]


# --------------------------------------------------------------------------- the parser


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the lightreasoner parser has no subcommands")


def option_strings(sub: argparse.ArgumentParser) -> set[str]:
    return {s for action in sub._actions for s in action.option_strings}


def long_flags(tokens: list[str]) -> list[str]:
    """The ``--name`` of every long-option token (``--name=value`` too), up to a bare ``--``."""
    out = []
    for tok in tokens:
        if tok == "--":
            break
        if tok.startswith("--") and len(tok) > 2:
            out.append(tok.split("=", 1)[0])
    return out


def check_trainer_flags(extra: list[str], where: str) -> None:
    """Flags ``train``/``sft`` pass to ``TrainingArguments``, checked as the command does."""
    from lightreasoner import config
    from lightreasoner.errors import LightReasonerError

    try:
        config.trainer_args({}, list(extra), where)
    except LightReasonerError as e:
        pytest.fail(f"{where}: {e}")


def trainer_field_names() -> set[str]:
    """``TrainingArguments`` fields as flags, under their installed and their aliased names."""
    from lightreasoner import config

    names = set(config.trainer_arg_names())
    aliases = getattr(config, "TRAINER_ARG_ALIASES", {})
    for new, old in aliases.items():  # either name of a renamed field is accepted
        if new in names or old in names:
            names |= {new, old}
    names -= set(getattr(config, "TRAINER_ARGS_OURS", {}))
    return {"--" + n.replace("_", "-") for n in names}


def parse(parser: argparse.ArgumentParser, argv: list[str], where: str) -> list[str]:
    """``parser.parse_known_args(argv)`` as the command does; the unknown tokens, or a test
    failure with argparse's own message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            _, extra = parser.parse_known_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: lightreasoner {' '.join(argv)}\n{err.getvalue().strip()}")
    return extra


# --------------------------------------------------------------------------- commands


def test_the_docs_hold_commands():
    """The extraction finds the commands (a broken extraction would pass every check)."""
    assert len(LIGHTREASONER_COMMANDS) >= 20
    assert any(argv[:1] == ["run"] for _, argv in LIGHTREASONER_COMMANDS)
    assert any(where.startswith("README.md") for where, _ in LIGHTREASONER_COMMANDS)


@pytest.mark.parametrize(
    "where,argv", LIGHTREASONER_COMMANDS, ids=[f"{w}:{' '.join(a[:1])}" for w, a in LIGHTREASONER_COMMANDS]
)
def test_command_matches_the_parser(parser, where, argv):
    subs = subcommands(parser)
    assert argv, f"{where}: `lightreasoner` without a subcommand"
    if argv[0] in ("-h", "--help", "--version"):
        return
    assert argv[0] in subs, f"{where}: unknown subcommand {argv[0]!r} (known: {', '.join(subs)})"
    sub = subs[argv[0]]
    if {"-h", "--help"} & set(argv[1:]):
        return
    extra = parse(parser, argv, where)
    ours = option_strings(sub)
    if argv[0] in TRAINER_STAGES:
        if extra:
            check_trainer_flags(extra, where)
        allowed = ours | trainer_field_names()
    else:
        assert not extra, f"{where}: lightreasoner {argv[0]} does not accept {' '.join(extra)}"
        allowed = ours
    unknown = [f for f in long_flags(argv[1:]) if f not in allowed]
    assert not unknown, f"{where}: lightreasoner {argv[0]}: not an option (or abbreviated): {', '.join(unknown)}"


def script_flags(script: Path) -> set[str]:
    """The option strings a benchmark script gives ``add_argument`` (read, not run)."""
    flags = set()
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            flags.update(names)
            boolean = any(kw.arg == "action" and "BooleanOptional" in ast.unparse(kw.value) for kw in node.keywords)
            if boolean:
                flags.update("--no-" + n[2:] for n in names if n.startswith("--"))
    return flags | {"-h", "--help"}


@pytest.mark.parametrize("where,cmd", BENCHMARK_COMMANDS, ids=[w for w, _ in BENCHMARK_COMMANDS])
def test_benchmark_command_uses_its_script_flags(where, cmd):
    script = ROOT / cmd[1]
    assert script.is_file(), f"{where}: {cmd[1]} does not exist"
    unknown = [f for f in long_flags(cmd[2:]) if f not in script_flags(script)]
    assert not unknown, f"{where}: {cmd[1]} defines no {', '.join(unknown)}"


def test_paths_and_extras_in_commands_exist():
    problems = []
    extras = optional_dependencies()
    for where, cmd in COMMANDS:
        for tok in cmd:
            value = tok.split("=", 1)[1] if tok.startswith("--") and "=" in tok else tok
            if value.startswith(REPO_PATH_PREFIXES) and not (ROOT / value).exists():
                problems.append(f"{where}: {value} does not exist")
            m = re.fullmatch(r"\.\[([\w,-]+)\]", value)
            if m and extras is not None:
                problems += [
                    f"{where}: no extra {e!r} in pyproject.toml" for e in m.group(1).split(",") if e not in extras
                ]
    assert not problems, "\n".join(problems)


def optional_dependencies() -> set[str] | None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        return None
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return set(data["project"].get("optional-dependencies", {}))


INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
INLINE_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def inline_commands() -> list[tuple[str, list[str]]]:
    """``lightreasoner <subcommand> ...`` code spans in the prose (placeholders allowed)."""
    out = []
    for page in PAGES:
        text = without_code_blocks(page.read_text(encoding="utf-8"))
        for m in INLINE.finditer(text):
            words = m.group(1).split()
            if len(words) >= 2 and words[0] == "lightreasoner" and not words[1].startswith("<"):
                out.append((f"{rel(page)}:{text.count(chr(10), 0, m.start()) + 1}", words[1:]))
    return out


def test_inline_commands_use_known_flags(parser):
    subs = subcommands(parser)
    problems = []
    for where, words in inline_commands():
        if words[0] in ("-h", "--help", "--version"):
            continue
        if words[0] not in subs:
            problems.append(f"{where}: unknown subcommand {words[0]!r}")
            continue
        allowed = option_strings(subs[words[0]])
        if words[0] in TRAINER_STAGES:
            allowed = allowed | trainer_field_names()
        flags = INLINE_FLAG.findall(" ".join(words[1:]))  # placeholders such as [--adapter DIR] too
        problems += [f"{where}: lightreasoner {words[0]} has no {f}" for f in flags if f not in allowed]
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- links


LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]|<[^>]+>", "", heading).strip().lower()
    text = re.sub(r"\]\([^)]*\)", "", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in without_code_blocks(page.read_text(encoding="utf-8")).split("\n"):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: Path) -> list[tuple[int, str]]:
    text = without_code_blocks(page.read_text(encoding="utf-8"))
    text = INLINE.sub(lambda m: " " * len(m.group(0)), text)
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in LINK.finditer(text)]


def test_relative_links_resolve():
    problems = []
    for page in PAGES:
        for lineno, target in links(page):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            where = f"{rel(page)}:{lineno}"
            if not dest.exists():
                problems.append(f"{where}: {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{where}: {target}: no heading #{anchor} in {dest.name}")
    assert not problems, "\n".join(problems)


def test_every_docs_page_is_linked_from_the_readme_and_says_what_it_is_for():
    readme = ROOT / "README.md"
    linked = {(readme.parent / t.partition("#")[0]).resolve() for _, t in links(readme)}
    problems = []
    for page in PAGES[1:]:
        if page.resolve() not in linked:
            problems.append(f"{rel(page)}: not linked from README.md")
        blocks = [b.strip() for b in page.read_text(encoding="utf-8").split("\n\n") if b.strip()]
        if not blocks or not blocks[0].startswith("# "):
            problems.append(f"{rel(page)}: does not open with a title")
        elif len(blocks) < 2 or blocks[1][0] in "#-*|`>!<" or blocks[1][0].isdigit():
            problems.append(f"{rel(page)}: the title is not followed by a paragraph saying what the page is for")
    assert not problems, "\n".join(problems)
