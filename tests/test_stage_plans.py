"""The stages every pinned config plans, and the config file each is given, are those of
``tests/golden/stage_plans.json`` (made before the arms moved to ``methods/``): a run folder
made earlier resumes with its finished stages skipped."""

import json
from pathlib import Path

import yaml
from stage_plans import GOLDEN, REPO, all_plans

from lightreasoner.config import RunConfig, build
from lightreasoner.pipeline import plan_stages, stage_configs, stage_file


def test_every_pinned_config_plans_the_same_stages():
    golden = json.loads(GOLDEN.read_text())
    now = all_plans()
    assert list(now) == list(golden)
    for name in golden:
        assert now[name]["arms"] == golden[name]["arms"], name
        assert now[name]["stages"] == golden[name]["stages"], name


def test_the_default_run_gets_the_stage_files_it_holds(monkeypatch):
    """The committed default run's stage files, word for word (read, never written)."""
    monkeypatch.chdir(REPO)
    run = Path("docs/default-run")
    cfg = build(RunConfig, yaml.safe_load((run / "config.yaml").read_text()), {})
    held = {p.name: p.read_text() for p in (run / "stages").glob("*.yaml")}
    assert held
    made = dict(stage_file(stage, sc) for stage, sc in plan_stages(stage_configs(cfg)) if stage.command)
    # a pool whose selection is done is no longer planned (the trajectories stage drops out)
    common = made.keys() & held.keys()
    assert "eval-baseline-evaluation.yaml" in common
    assert {k: made[k] for k in common} == {k: held[k] for k in common}
