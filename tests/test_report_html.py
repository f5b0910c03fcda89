"""report.html and `lightreasoner view`: the page's data, the records it reads, clear errors."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from lightreasoner.cli import main
from lightreasoner.config import SampleConfig, build
from lightreasoner.records import read_records
from lightreasoner.report.html import markdown_html, trajectory_set, view
from lightreasoner.sampling import sample, shown_tokens


def embedded(page: str, name: str) -> object:
    """The JSON a page carries in ``<script id="data-NAME">``."""
    m = re.search(rf'<script type="application/json" id="data-{name}">(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def eval_folder(root: Path, name: str, outcomes: list[int]) -> Path:
    """An evaluation folder of one GSM8K run with the given per-problem outcomes."""
    folder = root / name
    folder.mkdir()
    rows = [
        {"id": f"q{i}", "problem": f"problem {i}", "gold": str(i), "completion": f"{name} says {i if ok else -1}",
         "extracted": str(i if ok else -1), "correct": bool(ok), "cut_off": False}
        for i, ok in enumerate(outcomes)
    ]  # fmt: skip
    write_jsonl(folder / "gsm8k.jsonl", rows)
    acc = 100 * sum(outcomes) / len(outcomes)
    summary = {"name": name, "results": {"gsm8k": {"n": len(outcomes), "correct": sum(outcomes), "accuracy": acc}}}
    (folder / "summary.json").write_text(json.dumps({**summary, "average": acc}))
    return folder


def test_shown_tokens_are_both_top_k_and_the_plausible_set():
    pe = torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04]])
    pa = torch.tensor([[0.1, 0.05, 0.2, 0.6, 0.05]])
    mask = pe >= 0.2 * pe.max(-1, keepdim=True).values  # ids 0, 1, 2
    (ids, e, a), = shown_tokens(pe, pa, mask, k=2)  # fmt: skip
    assert ids == [0, 1, 2, 3]  # expert top 2 {0, 1}, amateur top 2 {3, 2}, the mask {0, 1, 2}; by p_expert
    assert e == pytest.approx([0.5, 0.3, 0.1, 0.06]) and a == pytest.approx([0.1, 0.05, 0.2, 0.6])


def test_markdown_html_renders_report_md_and_escapes():
    md = (
        "## Main <b>\n\n| A | B |\n|---|---|\n| `x` | **2** |\n\n- one\n- two\n\n![plot](p.png)\n\n```yaml\na: <1>\n```"
    )
    out = markdown_html(md, lambda src: "data:image/png;base64,AAAA" if src == "p.png" else None)
    assert "<h3>Main &lt;b&gt;</h3>" in out
    assert "<th>A</th><th>B</th>" in out and "<td><code>x</code></td><td><strong>2</strong></td>" in out
    assert "<ul><li>one</li><li>two</li></ul>" in out and 'src="data:image/png;base64,AAAA"' in out
    assert "<pre>a: &lt;1&gt;</pre>" in out and "---" not in out


def record(step: int, prefix: str, kl: float, **extra) -> dict:
    return {"prompt_id": "Q?", "step": step, "prefix": prefix, "tokens": ["x"], "token_ids": [7], "weights": [1.0],
            "kl_divergence": kl, **extra}  # fmt: skip


def test_trajectory_of_every_step_is_cut_into_tokens(tmp_path):
    top = {
        "top_ids": [5, 7],
        "top_tokens": [" c", "x"],
        "top_expert_probs": [0.6, 0.3],
        "top_amateur_probs": [0.1, 0.5],
    }
    rows = [
        record(1, "A", 0.1, problem_index=4, next_token_id=9, top_ids=[9], top_tokens=[" b"]),
        record(2, "A b", 0.9, problem_index=4, next_token_id=5, **top),
        record(3, "A b c", 0.2, problem_index=4, next_token_id=7, top_ids=[7], top_tokens=["x"]),
    ]
    pool = write_jsonl(tmp_path / "pool.jsonl", rows)
    (tmp_path / "pool.summary.json").write_text(json.dumps({"config": {"beta": "-inf", "alpha": 0.2}}))
    chosen = write_jsonl(tmp_path / "arm.jsonl", [rows[1]])
    (tmp_path / "arm.summary.json").write_text(json.dumps({"config": {"beta": 0.5}, "pool": str(pool)}))
    data = trajectory_set(chosen, "arm", pool)
    (p,) = data["problems"]
    assert data["every_step"] and data["beta"] == 0.5 and p["i"] == 4 and not p["more"]
    assert p["t"] == ["A", " b", " c", "x"] and p["st"] == [None, 1, 2, 3] and p["k"] == [None, 0.1, 0.9, 0.2]
    assert p["sel"] == [2] and list(p["d"]) == ["2"]
    d = p["d"]["2"]
    assert d["chosen"] == 0 and d["probs"]
    assert d["rows"] == [[" c", 0.6, 0.1, 0, None, None], ["x", 0.3, 0.5, 1, 1.0, None]]


def test_selected_steps_only_and_the_release_format(tmp_path):
    ours = [
        record(1, "A", 0.8, problem_index=0, next_token_id=9, top_ids=[9], top_tokens=[" b"]),
        record(4, "A b c d", 0.7, problem_index=0),
    ]
    p = trajectory_set(write_jsonl(tmp_path / "s.jsonl", ours), "s")["problems"][0]
    assert p["t"] == ["A", " b", " c d", "▯"] and p["st"] == [None, 1, None, 4] and p["sel"] == [1, 3] and p["more"]
    release = [record(2, "Let", 0.5), record(3, "Let x", 0.6)]  # no ids, the question is the prompt_id
    data = trajectory_set(write_jsonl(tmp_path / "r.jsonl", release), "r")
    (p,) = data["problems"]
    assert p["q"] == "Q?" and p["t"] == ["Let", " x", "▯"] and p["sel"] == [1, 2] and not data["every_step"]
    assert p["d"]["1"] == {"rows": [["x", None, None, 1, 1.0, None]], "chosen": None, "probs": False}


def test_records_keep_the_distributions_the_view_shows(pair, tmp_path):
    values = {"expert": str(pair[0]), "amateur": str(pair[1]), "data": "reasoning-gym:gsm_symbolic", "max_problems": 2,
              "max_new_tokens": 10, "dtype": "float32", "beta": "-inf", "out": str(tmp_path / "s.jsonl")}  # fmt: skip
    sample(build(SampleConfig, values, {}), show_progress=False)
    recs = read_records(tmp_path / "s.jsonl")
    for r, nxt in zip(recs, recs[1:]):
        if nxt.problem_index == r.problem_index:
            assert nxt.prefix_token_ids == r.prefix_token_ids + [r.next_token_id]
    for r in recs:
        pe, pa = r.top_expert_probs, r.top_amateur_probs
        assert pe == sorted(pe, reverse=True) and set(r.token_ids) <= set(r.top_ids)
        assert len(r.top_tokens) == len(r.top_ids) and min(pe[0], 1.0) <= 1.0
        # the soft label is softmax(log p_E - log p_A) over the mask: recomputed from the stored probabilities
        score = {t: math.log(pe[r.top_ids.index(t)]) - math.log(pa[r.top_ids.index(t)]) for t in r.token_ids}
        z = sum(math.exp(s) for s in score.values())
        assert r.weights == pytest.approx([math.exp(score[t]) / z for t in r.token_ids], rel=2e-3, abs=1e-6)
    out = view([tmp_path / "s.jsonl"])
    assert out == tmp_path / "s.html"
    (data,) = embedded(out.read_text(), "training")
    assert data["every_step"] and len(data["problems"]) == 2
    for p in data["problems"]:
        mine = [r for r in recs if r.problem_index == p["i"]]
        last = mine[-1]
        assert "".join(p["t"]) == last.prefix + last.top_tokens[last.top_ids.index(last.next_token_id)]
        assert len(p["sel"]) == len(mine) == len([k for k in p["k"] if k is not None])


def test_view_of_two_evaluations_is_self_contained(tmp_path):
    a = eval_folder(tmp_path, "A", [1, 0, 0, 1, 0, 1])
    b = eval_folder(tmp_path, "B", [1, 1, 1, 0, 0, 1])
    out = view([a, b])
    assert out == b / "compare-A.html"
    page = out.read_text()
    assert not re.findall(r'(?:src|href)="(?!data:|#)', page) and "<script src" not in page
    assert "GSM8K" in page and "p (McNemar)" in page
    test = embedded(page, "test")
    assert embedded(page, "training") is None
    assert [r[2] for r in test["rows"]["run1"]["gsm8k"]] == [1, 1, 1, 0, 0, 1]
    assert test["runs"] == [["run0", "A"], ["run1", "B"]] and test["problems"]["gsm8k"][1] == ["q1", "problem 1", "1"]


def test_view_errors_name_the_path_and_write_nothing(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["view", str(missing)]) == 2
    assert f"{missing}: no such file or folder" in capsys.readouterr().err
    rows = write_jsonl(tmp_path / "gsm8k.jsonl", [{"id": "1", "completion": "2"}])
    assert main(["view", str(rows)]) == 2
    assert f"{rows}:1: not a soft-label record" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["view", str(empty)]) == 2
    assert f"{empty}: not a samples file" in capsys.readouterr().err
    a = eval_folder(tmp_path, "A", [1, 0])
    assert main(["view", str(a), str(empty)]) == 2
    assert f"{empty}: not an evaluation folder" in capsys.readouterr().err
    assert main(["view", str(a), "--out", str(tmp_path / "no" / "x.html")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.html")) and not list(tmp_path.rglob("*.tmp"))
    assert main(["view", str(a)]) == 0 and (a / "report.html").is_file()
