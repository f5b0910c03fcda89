"""A new kind of arm is one builder: registered, it runs end to end through `lightreasoner run`,
its stages resume like the others' and its row is in the report."""

import json
from dataclasses import asdict

import pytest
import yaml
from test_pipeline import tiny_run

from lightreasoner import methods
from lightreasoner.cli import main
from lightreasoner.errors import LightReasonerError
from lightreasoner.methods import ArmKind, Method, evaluation_stages, register

PROMPT = "Answer in one line."


class OtherPrompt(ArmKind):
    """The expert alone with another system prompt: one evaluation, nothing trained."""

    name = "prompt"
    methods = {"other-prompt": Method("+ other prompt", "prompt")}

    def configs(self, shared, arm):
        return {
            "arm": arm,
            "eval": shared.evaluation(arm.eval, arm.label, model=shared.cfg.expert, system_prompt=PROMPT),
        }

    def stages(self, entry, configs):
        return evaluation_stages(entry)


@pytest.fixture
def other_prompt():
    before = dict(methods.KINDS), dict(methods.METHODS)
    register(OtherPrompt())
    yield
    for registry, saved in zip((methods.KINDS, methods.METHODS), before):
        registry.clear()
        registry.update(saved)


def test_a_kind_registers_once(other_prompt):
    with pytest.raises(LightReasonerError, match="other-prompt is already registered"):
        register(OtherPrompt())


@pytest.mark.slow
def test_a_new_kind_runs_end_to_end(pair, tmp_path, other_prompt, caplog):
    run = tmp_path / "r"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(asdict(tiny_run(pair, run, methods="other-prompt"))))
    with caplog.at_level("INFO", logger="lightreasoner.pipeline"):
        assert main(["run", "--config", str(config), "--quiet"]) == 0
    started = [r.message for r in caplog.records if r.message.endswith("starting")]
    assert started == ["[baseline evaluation] starting", "[other-prompt: evaluation] starting"]
    stage = yaml.safe_load((run / "stages" / "eval-other-prompt-evaluation.yaml").read_text())["eval"]
    assert stage["system_prompt"] == PROMPT and stage["out"] == str(run / "arms/other-prompt/eval")
    summary = json.loads((run / "arms/other-prompt/eval/summary.json").read_text())
    assert summary["config"]["system_prompt"] == PROMPT and summary["name"] == "+ other prompt"
    arm = yaml.safe_load((run / "arms/other-prompt/arm.yaml").read_text())
    assert arm == {"method": "other-prompt", "amateur": str(pair[1]), "prompt": {}}
    report = json.loads((run / "report.json").read_text())
    assert list(report["arms"]) == ["other-prompt"] and report["arms"]["other-prompt"]["efficiency"] is None
    assert "other-prompt: evaluation" in report["stage_seconds"]
    assert "| + other prompt |" in (run / "report.md").read_text()
    # a second run redoes nothing
    caplog.clear()
    with caplog.at_level("INFO", logger="lightreasoner.pipeline"):
        assert main(["run", "--config", str(config), "--quiet"]) == 0
    assert not [r for r in caplog.records if r.message.endswith("starting")]
    assert (run / "report.html").exists()
