"""``report.html``: one self-contained page (no network) for a run, a samples file, an
evaluation folder or a pair of them (``lightreasoner view``).

Tabs: the overview (``report.md`` or a summary of what was given, plots as base64 PNG),
the training problems (each expert trajectory, every token shaded by KL(expert ‖ amateur),
selected steps marked; a step's expert, amateur and soft-label tokens on click) and the
test problems (completions side by side, gained / lost / unchanged). The data sit in the
page as JSON, parsed when a tab is first opened, and are shown a page at a time.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..data import iter_jsonl
from ..errors import LightReasonerError
from ..io import atomic_write_text
from ..records import RELEASE_KEYS, summary_path
from .summaries import display_name, load_summary, markdown_table, significance_table

TEMPLATE = "template.html"
PAGE_NAME = "report.html"


# ---------------------------------------------------------------- markdown -> HTML


def _inline(text: str) -> str:
    """Escaped text with ``code`` and **bold**."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for p in parts:
        if len(p) >= 2 and p.startswith("`") and p.endswith("`"):
            out.append(f"<code>{html.escape(p[1:-1])}</code>")
        else:
            out.append(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(p)))
    return "".join(out)


def _table(lines: list[str]) -> str:
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    body = [r for r in rows[1:] if not all(re.fullmatch(r":?-+:?", c) for c in r)]
    head = "".join(f"<th>{_inline(c)}</th>" for c in rows[0])
    trs = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
    return f'<div class="scroll"><table class="md"><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table></div>'


def markdown_html(md: str, image: Callable[[str], str | None]) -> str:
    """The markdown ``report.md`` uses (headings, paragraphs, tables, lists, fenced code,
    images on their own line) as HTML; ``image(src)`` gives an image's data URI or None."""
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("```"):
            j = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("```")), len(lines))
            out.append(f"<pre>{html.escape(chr(10).join(lines[i + 1 : j]))}</pre>")
            i = j + 1
            continue
        block = [ln]
        kind = "table" if ln.startswith("|") else "list" if ln.startswith("- ") else "p"
        while kind != "p" and i + 1 < len(lines) and lines[i + 1].startswith("|" if kind == "table" else "- "):
            i += 1
            block.append(lines[i])
        i += 1
        m = re.fullmatch(r"!\[([^\]]*)\]\(([^)]+)\)", ln.strip())
        if kind == "table":
            out.append(_table(block))
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{_inline(b[2:])}</li>" for b in block) + "</ul>")
        elif m:
            uri = image(m.group(2))
            if uri:
                out.append(f'<img class="plot" alt="{html.escape(m.group(1))}" src="{uri}">')
        elif h := re.match(r"(#{1,4}) (.*)", ln):
            level = len(h.group(1)) + 1  # the page's title is the only h1
            out.append(f"<h{level}>{_inline(h.group(2))}</h{level}>")
        elif ln.startswith("> "):
            out.append(f'<blockquote class="notice">{_inline(ln[2:])}</blockquote>')
        elif ln.strip():
            out.append(f"<p>{_inline(ln)}</p>")
    return "\n".join(out)


def png_uri(path: Path) -> str | None:
    """A PNG file as a data URI (None when it is missing)."""
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


# ---------------------------------------------------------------- training problems


def _num(x: float | None, digits: int = 4) -> float | None:
    """A probability or KL, short (``digits`` significant digits) for the page's JSON."""
    return None if x is None or not math.isfinite(x) else float(f"{x:.{digits}g}")


def _key(rec: dict) -> object:
    """The problem a record belongs to: its index (ours) or its question (the release's)."""
    return rec.get("problem_index", rec["prompt_id"])


def _chosen(rec: dict) -> str | None:
    """The text of the token the expert chose at this step, when the record tells."""
    tid = rec.get("next_token_id")
    for ids, toks in ((rec.get("top_ids"), rec.get("top_tokens")), (rec.get("token_ids"), rec.get("tokens"))):
        if tid is not None and ids and toks and tid in ids:
            return toks[ids.index(tid)]
    return None


def step_detail(rec: dict, pool_rec: dict | None = None) -> dict:
    """One step's table: rows ``[token, p_expert, p_amateur, in α-mask, soft label, label
    without the contrast]`` (None where not stored), the expert's likeliest token first, and
    ``chosen``: the row of the token the expert wrote. ``pool_rec`` (the same step in a pool
    of every step) adds the label without the contrast when ``rec`` lacks it."""
    label = dict(zip(rec["token_ids"], rec["weights"]))
    own_src = rec if rec.get("expert_weights") else (pool_rec or {})
    own = dict(zip(own_src.get("token_ids", []), own_src.get("expert_weights") or []))
    src = next((r for r in (rec, pool_rec) if r and r.get("top_expert_probs")), None)
    if src is not None:
        top, toks, pe, pa = src["top_ids"], src["top_tokens"], src["top_expert_probs"], src["top_amateur_probs"]
    else:  # written before the records kept both models' probabilities: the label only
        top = sorted(label, key=lambda t: -label[t])
        toks = [rec["tokens"][rec["token_ids"].index(t)] for t in top]
        pe = pa = [None] * len(top)
    rows = [
        [tok, _num(e), _num(a), int(t in label), _num(label.get(t)), _num(own.get(t))]
        for t, tok, e, a in zip(top, toks, pe, pa)
    ]
    tid = rec.get("next_token_id")
    return {"rows": rows, "chosen": top.index(tid) if tid in top else None, "probs": pe[0] is not None}


DETAIL_KEYS = (
    "token_ids",
    "tokens",
    "weights",
    "expert_weights",
    "next_token_id",
    "top_ids",
    "top_tokens",
    "top_expert_probs",
    "top_amateur_probs",
)
"""What :func:`step_detail` reads of a record (the rest is not kept in memory)."""


@dataclass
class _Problem:
    question: str
    steps: list[tuple[int, str, float, str | None]] = field(default_factory=list)  # step, prefix, KL, chosen
    kept: dict[int, dict] = field(default_factory=dict)  # the wanted steps' records (their DETAIL_KEYS)


def _read_steps(path: Path, wanted: dict[object, dict[int, dict]]) -> dict[object, _Problem]:
    """Per problem (in file order), its records' step, prefix, KL and chosen token text, and
    the records of the ``wanted`` steps, in one pass over the file."""
    out: dict[object, _Problem] = {}
    for where, rec in iter_jsonl(path):
        missing = [k for k in ("prompt_id", "step", "prefix", "kl_divergence") if k not in rec]
        if missing:
            raise LightReasonerError(f"{path}:{where}: not a soft-label record (missing {', '.join(missing)})")
        key = _key(rec)
        p = out.setdefault(key, _Problem(rec.get("question") or rec["prompt_id"]))
        p.steps.append((rec["step"], rec["prefix"], rec["kl_divergence"], _chosen(rec)))
        if rec["step"] in wanted.get(key, ()):
            p.kept[rec["step"]] = {k: rec[k] for k in DETAIL_KEYS if k in rec}
    for p in out.values():
        p.steps.sort(key=lambda s: s[0])
    return out


def _pieces(p: _Problem, every_step: bool) -> tuple[list[str], list[float | None], list[int | None], bool]:
    """The trajectory cut at the stored steps: texts, KL and step of each piece (None: not
    scored or not stored), and whether text after the last stored step is missing."""
    texts, kls, steps = [], [], []

    def add(text: str, kl: float | None, step: int | None) -> None:
        if text:
            texts.append(text)
            kls.append(_num(kl, 3))
            steps.append(step)

    add(p.steps[0][1], None, None)
    for j, (step, prefix, kl, chosen) in enumerate(p.steps):
        nxt = p.steps[j + 1] if j + 1 < len(p.steps) else None
        span = nxt[1][len(prefix) :] if nxt and nxt[1].startswith(prefix) else None
        if span is None:  # the last step, or a prefix that does not extend the previous one
            add(chosen if chosen is not None else "▯", kl, step)
        elif chosen is not None and nxt[0] > step + 1 and span.startswith(chosen) and chosen:
            add(chosen, kl, step)
            add(span[len(chosen) :], None, None)
        else:
            add(span or "▯", kl, step)
    missing = not every_step or p.steps[-1][3] is None
    return texts, kls, steps, missing


def _selected(path: Path) -> dict[object, dict[int, dict]]:
    """Per problem, the records of a samples file by step (their DETAIL_KEYS)."""
    out: dict[object, dict[int, dict]] = {}
    for where, rec in iter_jsonl(path):
        missing = [k for k in RELEASE_KEYS if k not in rec]
        if missing:
            raise LightReasonerError(f"{path}:{where}: not a soft-label record (missing {', '.join(missing)})")
        out.setdefault(_key(rec), {})[rec["step"]] = {k: rec[k] for k in DETAIL_KEYS if k in rec}
    return out


def _summary(path: Path) -> dict:
    try:
        return json.loads(summary_path(path).read_text())
    except (OSError, ValueError):
        return {}


def _beta(value: object) -> float | None:
    try:
        b = float(value)  # '-inf' in summaries
    except (TypeError, ValueError):
        return None
    return b if math.isfinite(b) else None


def trajectory_set(samples: Path, name: str, pool: Path | None = None) -> dict:
    """Every problem of a samples file: its trajectory (from ``pool``, a file with every
    step, when given) cut into pieces with their KL, the file's steps marked as selected,
    with their tables."""
    summary, chosen = _summary(samples), _selected(samples)
    if not chosen:
        raise LightReasonerError(f"{samples}: no records")
    source = pool if pool is not None and pool.is_file() else samples
    base = _summary(source) if source != samples else summary
    every_step = str((base.get("config") or {}).get("beta")) in ("-inf", "-Infinity")
    problems, all_kl = [], []
    for n, (k, prob) in enumerate(_read_steps(source, chosen if source != samples else {}).items()):
        texts, kls, steps, missing = _pieces(prob, every_step)
        sel = chosen.get(k, {})
        marks = [i for i, s in enumerate(steps) if s in sel]
        details = {str(i): step_detail(sel[steps[i]], prob.kept.get(steps[i])) for i in marks}
        problems.append(
            {
                "i": k if isinstance(k, int) else n,
                "q": prob.question,
                "t": texts,
                "k": kls,
                "st": steps,
                "sel": marks,
                "d": details,
                "more": missing,
            }
        )
        all_kl += [x for x in kls if x is not None]
    all_kl.sort()
    cfg = summary.get("config") or {}
    beta = _beta(cfg.get("beta"))
    scale = all_kl[int(0.98 * (len(all_kl) - 1))] if all_kl else 1.0
    return {
        "name": name,
        "source": str(source),
        "selected_from": str(samples),
        "beta": beta,
        "alpha": cfg.get("alpha"),
        "every_step": every_step,
        "scale": max(scale, 1.5 * beta if beta else 0.0, 1e-6),
        "expert": cfg.get("expert"),
        "amateur": cfg.get("amateur"),
        "problems": problems,
    }


def pool_of(samples: Path, relocate: Callable[[str], Path] = Path) -> Path | None:
    """The pool of every step an arm's samples were selected from (None if none)."""
    pool = _summary(samples).get("pool")
    return relocate(pool) if pool else None


# ---------------------------------------------------------------- test problems


def _rows(folder: Path, name: str) -> Iterator[dict]:
    path = folder / f"{name}.jsonl"
    if not path.is_file():
        raise LightReasonerError(f"{path}: no per-problem results (is {folder} an evaluation folder?)")
    for _, row in iter_jsonl(path):
        yield row


def completion_set(runs: list[tuple[str, str, Path]], names: list[str]) -> dict:
    """Per benchmark, the problems (in the first run's order) and every run's row of each:
    ``[completion, extracted answer, correct, cut off]`` (None where a run lacks it)."""
    problems: dict[str, list] = {}
    rows: dict[str, dict[str, list]] = {key: {} for key, _, _ in runs}
    for name in names:
        first = list(_rows(runs[0][2], name))
        problems[name] = [[str(r["id"]), r.get("problem", ""), str(r.get("gold", ""))] for r in first]
        ids = [str(r["id"]) for r in first]
        for key, _, folder in runs:
            by_id = {str(r["id"]): r for r in (first if folder == runs[0][2] else _rows(folder, name))}
            rows[key][name] = [
                None
                if i not in by_id
                else [
                    by_id[i].get("completion", ""),
                    by_id[i].get("extracted"),
                    int(bool(by_id[i].get("correct"))),
                    int(bool(by_id[i].get("cut_off"))),
                ]
                for i in ids
            ]
    return {
        "benchmarks": [[n, display_name(n)] for n in names],
        "runs": [[key, label] for key, label, _ in runs],
        "problems": problems,
        "rows": rows,
    }


# ---------------------------------------------------------------- the page


def _json(obj: object) -> str:
    """JSON safe inside a ``<script>`` element."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def render(title: str, subtitle: str, overview: str, training: list[dict] | None, test: dict | None) -> str:
    """The page: the template with the title, the overview's HTML and the data filled in."""
    page = resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")
    fill = {
        "{{TITLE}}": html.escape(title),
        "{{SUBTITLE}}": html.escape(subtitle),
        "{{OVERVIEW}}": overview,
        "{{TRAINING}}": _json(training),
        "{{TEST}}": _json(test),
    }
    return re.sub("|".join(map(re.escape, fill)), lambda m: fill[m.group(0)], page)


def run_page(run: Path, fig: dict, md: str) -> str:
    """The page of a finished run: ``report.md`` with its plots, the LightReasoner arms'
    trajectories and every arm's test completions beside the baseline's."""
    old = Path(fig["run_dir"])

    def here(p: str) -> Path:  # paths in report.json name the run folder as it was given to `run`
        try:
            return run / Path(p).relative_to(old)
        except ValueError:
            return Path(p)

    training = []
    chosen = [a for a in fig["arms"].values() if a["method"] == "lightr" and a.get("selection")]
    chosen = chosen or [a for a in fig["arms"].values() if a.get("selection")][:1]
    for arm in chosen:
        samples = here(arm["folder"]) / "samples.jsonl"
        if samples.is_file():
            training.append(trajectory_set(samples, arm["label"], pool_of(samples, here)))
    baseline = here(fig["baseline"].get("eval") or str(old / "eval" / "baseline"))
    runs = [("baseline", "Baseline", baseline)] + [
        (a_id, a["label"], here(a["eval"])) for a_id, a in fig["arms"].items()
    ]
    test = completion_set(runs, fig["benchmarks"])
    if md.startswith("# "):  # the page's own title
        md = md.split("\n", 1)[-1]
    overview = markdown_html(md, lambda src: png_uri(run / src))
    return render("LightReasoner run report", f"{run} · written {fig['created']}", overview, training or None, test)


def samples_page(path: Path) -> str:
    """The page of a samples file: its trajectories (from its pool when it has one)."""
    s = _summary(path)
    data = trajectory_set(path, path.name, pool_of(path))
    lines = [f"Samples `{path}`" + (f", trajectories from `{data['source']}`" if data["source"] != str(path) else "")]
    if s:
        cfg = s.get("config") or {}
        lines += [
            "",
            f"Expert `{cfg.get('expert')}`, amateur `{cfg.get('amateur')}`, "
            f"β = {cfg.get('beta')}, α = {cfg.get('alpha')}.",
            "",
            "| Problems | Trajectory tokens | Scored steps | Selected steps | Share selected |",
            "|---|---|---|---|---|",
            f"| {s.get('problems')} | {s.get('trajectory_tokens')} | {s.get('scored_steps')} | "
            f"{s.get('selected_steps')} | {100 * s.get('selected_share', 0):.1f}% |",
        ]
    overview = markdown_html("\n".join(lines), lambda src: None)
    return render("LightReasoner samples", str(path), overview, [data], None)


def eval_page(folders: list[Path]) -> str:
    """The page of one evaluation folder, or of two compared problem by problem."""
    summaries = [load_summary(f) for f in folders]
    names = [n for n in summaries[0]["results"] if all(n in s["results"] for s in summaries)]
    md = [markdown_table(summaries, deltas=len(folders) > 1)]
    if len(folders) > 1:
        md += ["", significance_table(summaries, folders)]
    runs = [(f"run{i}", s.get("name") or str(f), f) for i, (s, f) in enumerate(zip(summaries, folders))]
    if len({label for _, label, _ in runs}) < len(runs):
        runs = [(key, f"{label} ({f})", f) for key, label, f in runs]
    overview = markdown_html("\n".join(md), lambda src: None)
    title = "LightReasoner evaluation" + (" comparison" if len(folders) > 1 else "")
    return render(title, " vs ".join(map(str, folders)), overview, None, completion_set(runs, names))


def write_run_page(run: Path, fig: dict, md: str) -> Path:
    """``RUN/report.html``."""
    out = run / PAGE_NAME
    atomic_write_text(out, run_page(run, fig, md))
    return out


def default_out(paths: list[Path]) -> Path:
    """Where ``view`` writes when not told: beside a samples file (``X.html``), in a folder
    (``report.html``), or in the second folder of a pair (``compare-<first>.html``)."""
    if len(paths) == 2:
        return paths[1] / f"compare-{paths[0].resolve().name}.html"
    return paths[0].with_suffix(".html") if paths[0].is_file() else paths[0] / PAGE_NAME


def page_of(given: list[Path]) -> str:
    """The page of what ``view`` was given (paths that exist)."""
    first = given[0]
    if len(given) == 2:
        bad = [p for p in given if not (p / "summary.json").is_file()]
        if bad:
            raise LightReasonerError(f"{bad[0]}: not an evaluation folder (no summary.json); two paths compare two")
        return eval_page(given)
    if first.is_file():
        return samples_page(first)
    if (first / "report.json").is_file():
        fig = json.loads((first / "report.json").read_text())
        md = (first / "report.md").read_text() if (first / "report.md").is_file() else ""
        return run_page(first, fig, md)
    if (first / "summary.json").is_file():
        return eval_page([first])
    raise LightReasonerError(
        f"{first}: not a samples file, an evaluation folder (summary.json) or a finished run (report.json)"
    )


def view(paths: list[str | Path], out: str | Path | None = None) -> Path:
    """Write the page of a run folder, a samples file, an evaluation folder or two
    evaluation folders; returns where."""
    given = [Path(p) for p in paths]
    if not 1 <= len(given) <= 2:
        raise LightReasonerError(
            "view: give one run folder, samples file or evaluation folder, or two evaluation folders"
        )
    for p in given:
        if not p.exists():
            raise LightReasonerError(f"{p}: no such file or folder")
    target = Path(out) if out else default_out(given)
    if not target.parent.is_dir():
        raise LightReasonerError(f"--out {target}: the folder {target.parent} does not exist")
    atomic_write_text(target, page_of(given))
    return target
