"""The report reads the files the stages wrote: importing it, or rendering a comparison page,
loads no stage module and none of torch, transformers or peft (checked in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

HEAVY = ("torch", "transformers", "peft")
STAGES = ("training", "sft", "sampling", "evaluation.runner", "precision", "models", "generation")

SCRIPT = """
import importlib, json, pkgutil, sys
from pathlib import Path

import lightreasoner.report as report

for info in pkgutil.walk_packages(report.__path__, "lightreasoner.report."):
    importlib.import_module(info.name)
imported = set(sys.modules)
report.view([Path(p) for p in sys.argv[1:]])
print(json.dumps({"imported": sorted(imported), "rendered": sorted(set(sys.modules))}))
"""


def eval_folder(root, name: str, outcomes: list[int]):
    """An evaluation folder of one GSM8K run with the given per-problem outcomes."""
    folder = root / name
    folder.mkdir()
    rows = [
        {"id": f"q{i}", "problem": f"problem {i}", "gold": str(i), "completion": f"{name} says {i if ok else -1}",
         "extracted": str(i if ok else -1), "correct": bool(ok), "cut_off": False}
        for i, ok in enumerate(outcomes)
    ]  # fmt: skip
    (folder / "gsm8k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    acc = 100 * sum(outcomes) / len(outcomes)
    results = {"gsm8k": {"n": len(outcomes), "correct": sum(outcomes), "accuracy": acc}}
    (folder / "summary.json").write_text(json.dumps({"name": name, "results": results, "average": acc}))
    return folder


def forbidden(modules: list[str]) -> list[str]:
    stages = {f"lightreasoner.{s}" for s in STAGES}
    return [m for m in modules if m.split(".")[0] in HEAVY or m in stages]


def test_the_report_imports_no_stage_and_no_torch(tmp_path):
    folders = [eval_folder(tmp_path, "A", [1, 0, 0, 1]), eval_folder(tmp_path, "B", [1, 1, 0, 1])]
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), *map(str, folders)], capture_output=True, text=True, check=True
    )
    seen = json.loads(out.stdout.splitlines()[-1])
    assert "lightreasoner.report.tables" in seen["imported"] and (folders[1] / "compare-A.html").is_file()
    assert forbidden(seen["imported"]) == [], "importing the report"
    assert forbidden(seen["rendered"]) == [], "rendering a comparison page"
