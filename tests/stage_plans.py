"""The stages a run plans for a set of configs, as data: what ``tests/golden/stage_plans.json``
pins (stage names, commands, the config file each stage is given, by its hash, and each
arm's recorded settings), so that a refactor of how arms are built changes none of it.

    PYTHONPATH=src python tests/stage_plans.py   # rewrite the golden file (only on purpose)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import yaml

from lightreasoner.config import RunConfig, build
from lightreasoner.pipeline import arm_settings, load_run_config, plan_stages, stage_configs, stage_file

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden" / "stage_plans.json"

SYNTHETIC = {
    "expert": "x/expert",
    "amateur": "x/amateur",
    "out": "runs/all",
    "dtype": "float32",
    "methods": "lightr,lightr-no-select,lightr-no-contrast,lightr-no-select-no-contrast,sft,cd",
    "amateurs": "y/a2,z/a3",
    "num_processes": 2,
    "sample": {"beta": 0.25, "batch_size": 3},
    "train": {"max_steps": 4, "lora_r": 4, "batch_size": 2, "grad_accum": 2},
    "sft": {"epochs": 1, "sample_batch_size": 5, "keep_per_problem": 2},
    "cd": {"cd_alpha": 0.2, "batch_size": 7},
    "eval": {"system_prompt": "Think.", "batch_size": 2},
}


def configs() -> dict[str, RunConfig]:
    """The run configs pinned, by name (paths relative to the working directory)."""
    out = {
        "default": load_run_config(None, {}, quick=False),
        "default --quick": load_run_config(None, {}, quick=True),
        "docs/default-run": build(RunConfig, default_run_config(), {}),
    }
    paper = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs/paper").glob("*.yaml"))
    for p in ["configs/default-study.yaml", "configs/study-cpu.yaml", *paper]:
        out[p] = load_run_config(str(REPO / p), {}, quick=False)
    out["synthetic"] = build(RunConfig, SYNTHETIC, {})
    out["synthetic, no effect"] = build(RunConfig, {**SYNTHETIC, "out": "runs/no-effect", "effect_problems": 0}, {})
    out["legacy"] = build(RunConfig, {**SYNTHETIC, "out": "runs/legacy", "methods": "lightr,cd"}, {})
    return out


def default_run_config() -> dict:
    """The committed default run's settings, with the study's arms in the study's order: a session
    may resume the folder with ``--methods`` naming some arms, or the same arms in another order,
    which rewrites ``config.yaml``'s ``methods`` and nothing else that plans a stage."""
    raw = yaml.safe_load((REPO / "docs/default-run/config.yaml").read_text())
    study = yaml.safe_load((REPO / "configs/default-study.yaml").read_text())
    return {**raw, "methods": ",".join(study["methods"])}


def make_legacy(root: Path) -> None:
    """A run folder made before arms: LightReasoner's files in the run folder, a merged model."""
    (root / "runs/legacy/merged").mkdir(parents=True, exist_ok=True)
    (root / "runs/legacy/merged/config.json").write_text("{}")
    (root / "runs/legacy/samples.jsonl").write_text("")


def _value(v):
    """``v`` with infinite floats as their repr (JSON has none)."""
    if isinstance(v, dict):
        return {k: _value(x) for k, x in v.items()}
    return repr(v) if isinstance(v, float) and not math.isfinite(v) else v


def plan(cfg: RunConfig) -> dict:
    """Every stage of ``cfg`` (command, config file name and a hash of its text) and every arm's settings."""
    stages, arms = [], {}
    configs = stage_configs(cfg)
    for stage, sc in plan_stages(configs):
        row = {"name": stage.name, "command": stage.command, "distributed": stage.distributed}
        row["arm"] = stage.arm.id if stage.arm else None
        if stage.command:
            row["file"], text = stage_file(stage, sc)
            row["sha256"] = hashlib.sha256(text.encode()).hexdigest()
        else:  # the selection: a filter over a pool
            row["selection"] = selection(sc, configs)
        stages.append(row)
        if stage.arm is not None and stage.arm.id not in arms:
            a = stage.arm
            arms[a.id] = {
                "method": a.method,
                "amateur": a.amateur,
                "dir": str(a.dir),
                "label": a.label,
                "legacy": a.legacy,
                "settings": _value(arm_settings(cfg, a)),
            }
    return {"stages": stages, "arms": arms}


def selection(entry, configs: dict) -> dict:
    """What the selection stage filters: pool file, records file, β, the label."""
    return {
        "pool": configs["pools"][entry["pool"]].out,
        "samples": str(entry["arm"].samples),
        "beta": _value(entry["beta"]),
        "contrast": entry["contrast"],
    }


def all_plans() -> dict:
    with tempfile.TemporaryDirectory() as d:
        here = os.getcwd()
        os.chdir(d)
        try:
            make_legacy(Path(d))
            return {name: plan(cfg) for name, cfg in configs().items()}
        finally:
            os.chdir(here)


def dumps(plans: dict) -> str:
    """``plans`` as JSON with one stage or arm per line (small diffs)."""
    out = []
    for name, p in plans.items():
        stages = ",\n".join("   " + json.dumps(s) for s in p["stages"])
        arms = ",\n".join(f"   {json.dumps(a)}: {json.dumps(v)}" for a, v in p["arms"].items())
        out.append(f' {json.dumps(name)}: {{\n  "stages": [\n{stages}\n  ],\n  "arms": {{\n{arms}\n  }}\n }}')
    return "{\n" + ",\n".join(out) + "\n}\n"


if __name__ == "__main__":
    GOLDEN.write_text(dumps(all_plans()))
    print(f"wrote {GOLDEN}", file=sys.stderr)
