"""LightReasoner and its ablations: select the steps of the expert's trajectories where the
amateur disagrees most, label them, fine-tune. Without Select every step is trained on
(β = -inf); without Contrast the label is the expert's own renormalised distribution; with
neither, the amateur plays no part. LightReasoner itself (not its ablations) is also one
arm per extra amateur of the expertise-gap study (``lightr@<amateur>``).

Every variant selects from one pool per amateur, sampled once at β = -inf with both labels
(a shared stage), so the variants cost one pass over the trajectories."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..config import RunConfig, SampleConfig, TrainConfig, build
from ..errors import LightReasonerError
from ..files import TRAIN_SUMMARY
from .base import (
    Arm,
    ArmKind,
    Method,
    Shared,
    Stage,
    amateur_tag,
    check_global_batch,
    evaluation_stages,
    summary_exists,
)

PER_ARM_SAMPLE_KEYS = ("contrast", "expert_weights")
"""Sampling options each arm's method sets (Contrast; the pool's second label), not ``sample:``."""


def pool_stage_name(tag: str) -> str:
    """The stage that writes the amateur ``tag``'s pool of trajectories."""
    return f"trajectories ({tag})"


def pool_config(shared: Shared, amateur: str) -> SampleConfig:
    """The pool of one amateur: the expert's trajectories with every step scored (β = -inf)
    and both labels, in ``RUN/trajectories/<amateur>/``."""
    cfg = shared.cfg
    return build(
        SampleConfig,
        {
            **shared.common,
            "expert": cfg.expert,
            "amateur": amateur,
            "data": cfg.data,
            "out": str(shared.run / "trajectories" / amateur_tag(amateur) / "samples.jsonl"),
            "question_field": cfg.question_field,
            "max_problems": cfg.max_problems,
            "seed": cfg.seed,
            **{k: v for k, v in cfg.sample.items() if k != "beta"},
            "beta": -math.inf,
            "expert_weights": True,
        },
        {},
        source="run config, section 'sample'",
    )


class LightR(ArmKind):
    name = "lightr"
    methods = {
        "lightr": Method("+ LightR", "lightr", short="LightR", gap_study=True),
        "lightr-no-select": Method("+ LightR w/o Select", "lightr", {"select": False}, "w/o Select"),
        "lightr-no-contrast": Method("+ LightR w/o Contrast", "lightr", {"contrast": False}, "w/o Contrast"),
        "lightr-no-select-no-contrast": Method(
            "+ LightR w/o Select & Contrast", "lightr", {"select": False, "contrast": False}, "w/o Select & Contrast"
        ),
    }
    stage_colors = {"selection": "#8fb8de", "fine-tuning": "#e08e45"}

    def check(self, cfg: RunConfig) -> None:
        per_arm = sorted(set(PER_ARM_SAMPLE_KEYS) & set(cfg.sample))
        if per_arm:
            raise LightReasonerError(
                f"run config, section 'sample': {', '.join(per_arm)} is set by each arm's method; "
                "list the ablations under methods: instead (e.g. lightr-no-contrast)"
            )

    def configs(self, shared: Shared, arm: Arm) -> dict:
        """``pool`` (the amateur's tag), ``beta`` and ``contrast`` (the selection), ``train``,
        ``eval`` and ``effect``."""
        cfg, variant = shared.cfg, self.methods[arm.method].options
        entry: dict = {
            "arm": arm,
            "pool": amateur_tag(arm.amateur),
            "beta": cfg.beta if variant.get("select", True) else -math.inf,
            "contrast": variant.get("contrast", True),
            "train": build(
                TrainConfig,
                {
                    **shared.common,
                    "model": cfg.expert,
                    "samples": str(arm.samples),
                    "output_dir": str(arm.adapter),
                    "resume": True,  # continue from the last checkpoint of an interrupted run
                    **cfg.train,
                },
                {},
                source="run config, section 'train'",
            ),
        }
        merged = shared.run / "merged"
        if arm.legacy and (merged / "config.json").exists():  # a run made before arms merged its adapter
            entry["eval"] = shared.evaluation(arm.eval, arm.label, model=str(merged))
        else:
            entry.update(shared.tuned(arm))
        check_global_batch(cfg, "train", entry["train"])
        return entry

    def stages(self, entry: dict, configs: dict) -> list[tuple[Stage, object]]:
        """The amateur's pool (while the arm has no records), the selection (in the run's
        process), fine-tuning, evaluation, adapter effect."""
        arm: Arm = entry["arm"]
        pool: SampleConfig = configs["pools"][entry["pool"]]
        stages: list[tuple[Stage, object]] = []
        if not arm.samples.exists():
            stages.append((Stage(pool_stage_name(entry["pool"]), "sample", lambda: Path(pool.out).exists()), pool))
        name = "selection" if arm.legacy else f"{arm.id}: selection"
        stages.append((Stage(name, "", lambda: arm.samples.exists(), False, arm, lambda: select(pool, entry)), entry))
        name = "fine-tuning" if arm.legacy else f"{arm.id}: fine-tuning"
        stages.append((Stage(name, "train", summary_exists(arm.adapter, TRAIN_SUMMARY), arm=arm), entry["train"]))
        return stages + evaluation_stages(entry)

    def efficiency(self, entry: dict) -> dict:
        """Sampling is the pool's generation and scoring (every variant is charged it in full)."""
        from ..records import summary_path

        arm: Arm = entry["arm"]
        samples = json.loads(summary_path(arm.samples).read_text())
        train = json.loads((arm.adapter / TRAIN_SUMMARY).read_text())
        with arm.samples.open(encoding="utf-8") as lines:  # problems with at least one selected step
            trained_on = len({json.loads(line)["problem_index"] for line in lines if line.strip()})
        return {
            "sampling_seconds": samples["generation_seconds"] + samples["scoring_seconds"],
            "fine_tuning_seconds": train["seconds"],
            "sampled_problems": trained_on,
            "problems_attempted": samples["problems"],
            "tuned_tokens": train["tuned_tokens"],
            "optimizer_steps": train["optimizer_steps"],
            "train_loss": train["train_loss"],
            "sft_tokens_same_trajectories": samples["trajectory_tokens"],
        }

    def efficiency_note(self, label: str, e: dict) -> str:
        return (
            f"{label}: {e['optimizer_steps']} optimizer steps, mean loss {e['train_loss']:.4f}; SFT on "
            f"the same trajectories would tune all {e['sft_tokens_same_trajectories']:,} of their tokens."
        )


def select(pool: SampleConfig, entry: dict) -> None:
    """The selection stage: the arm's records, filtered from the pool (no model runs)."""
    from ..sampling import select_from_pool

    select_from_pool(pool.out, entry["arm"].samples, entry["beta"], entry["contrast"])
