"""report.html in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright, which is pointed at that executable (no browser download, no network)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from test_report_html import eval_folder

from lightreasoner import pipeline
from lightreasoner.config import RunConfig, build
from lightreasoner.report import view
from lightreasoner.stats import paired_difference

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (CI installs Debian's chromium package)")


def in_process(cfg, stage, stage_cfg, run, quiet):
    """A stage run in this process: the same stage functions without a fresh interpreter each."""
    from lightreasoner.evaluation.runner import evaluate
    from lightreasoner.sampling import sample
    from lightreasoner.training import train

    {"sample": sample, "train": train, "eval": evaluate}[stage.command](stage_cfg, show_progress=False)


@pytest.fixture(scope="module")
def tiny_run(pair, tmp_path_factory) -> Path:
    """A finished run of the tiny pair: every stage, the report and report.html."""
    out = tmp_path_factory.mktemp("run") / "r"
    values = {
        "expert": str(pair[0]),
        "amateur": str(pair[1]),
        "out": str(out),
        "dtype": "float32",
        "data": "reasoning-gym:gsm_symbolic",
        "max_problems": 3,
        "seed": 1,
        "benchmarks": "reasoning-gym:gsm_symbolic",
        "eval_limit": 4,
        "eval_seed": 2,
        "eval_max_new_tokens": 8,
        "effect_problems": 0,
        "sample": {"max_new_tokens": 16, "beta": 0.3},
        "train": {"max_steps": 1, "save_steps": 100},
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "run_stage", in_process)
        pipeline.run_experiment(build(RunConfig, values, {}), show_progress=False)
    return out


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


def open_page(browser, path: Path):
    """The page at ``path`` and the list its console errors and uncaught exceptions go to."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.resolve().as_uri())
    return page, errors


@pytest.mark.slow
def test_report_of_a_tiny_run_in_chromium(tiny_run, browser, tmp_path):
    report = json.loads((tiny_run / "report.json").read_text())
    page, errors = open_page(browser, tiny_run / "report.html")
    plots = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (tiny_run / "report.md").read_text())  # report.md's images
    assert page.locator("table.md").count() >= 3 and len(plots) >= 3
    srcs = [img.get_attribute("src") for img in page.locator("img.plot").all()]
    assert len(srcs) == len(plots) and all(s.startswith("data:image/png;base64,") for s in srcs)

    page.click("#tab-training")
    page.locator(".tok.sel").first.click()
    detail = page.locator("#step-detail")
    step = int(re.search(r"Step (\d+)", detail.locator(".head").inner_text()).group(1))
    problem = int(page.locator(".tok.active").get_attribute("data-problem"))
    heads = detail.locator("table.label-table thead th").all_inner_texts()
    assert heads == ["token", "expert p", "amateur p", "α-mask", "soft label", "w/o contrast"]
    if detail.locator("button.more-rows").count():
        detail.locator("button.more-rows").click()
    rows = [r.locator("td").all_inner_texts() for r in detail.locator("table.label-table tbody tr").all()]
    lines = (tiny_run / "arms/lightr/samples.jsonl").read_text().splitlines()
    (rec,) = [r for r in map(json.loads, lines) if r["problem_index"] == problem and r["step"] == step]
    assert sum(r[3] == "✓ in" for r in rows) == len(rec["token_ids"]) and len(rows) == len(rec["top_ids"])
    written = [r for r in rows if "written" in r[0]]
    assert len(written) == 1
    label = rec["weights"][rec["token_ids"].index(rec["next_token_id"])]
    assert float(written[0][4]) == pytest.approx(label, abs=6e-4)
    p_expert = rec["top_expert_probs"][rec["top_ids"].index(rec["next_token_id"])]
    assert float(written[0][1]) == pytest.approx(p_expert, rel=0.06, abs=6e-4)

    page.click("#tab-test")
    page.click("#te-filter-gained")
    bench = report["benchmarks"][0]
    gained = report["arms"]["lightr"]["results"][bench]["gained"]
    assert int(page.locator("#te-shown").get_attribute("data-count")) == gained
    assert page.locator("#te-list article").count() == min(gained, 25)
    assert page.locator("#te-filter-all").get_attribute("data-count") == str(report["baseline"]["results"][bench]["n"])
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert errors == []


@pytest.mark.slow
def test_comparison_of_two_evaluations_in_chromium(browser, tmp_path):
    first, second = [1, 0, 0, 1, 0, 1, 0], [1, 1, 1, 0, 0, 1, 0]
    a, b = eval_folder(tmp_path, "A", first), eval_folder(tmp_path, "B", second)
    page, errors = open_page(browser, view([a, b]))
    page.click("#tab-test")
    d = paired_difference([(first, second)], resamples=10)
    counts = {k: int(page.locator(f"#te-filter-{k}").get_attribute("data-count")) for k in ("gained", "lost")}
    assert counts == {"gained": d["only_second"], "lost": d["only_first"]} == {"gained": 2, "lost": 1}
    page.click("#te-filter-lost")
    assert page.locator("#te-list article").count() == 1
    assert "q3" in page.locator("#te-list article header").inner_text()
    assert page.locator("#te-count-table tbody td").all_inner_texts() == ["GSM8K", "7", "3", "4", "2", "1", "4", "14.3"]
    assert errors == []
