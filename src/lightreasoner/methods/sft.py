"""The rejection-sampling SFT baseline: the expert samples solutions, the correct ones are
kept and it is fine-tuned on them (one stage, ``lightreasoner sft``), with the LoRA and
optimizer settings of ``train:``; then it is evaluated like every tuned arm."""

from __future__ import annotations

import json
from dataclasses import fields

from ..config import LoraOptions, SFTConfig, TrainConfig, build
from ..files import SFT_SUMMARY
from .base import Arm, ArmKind, Method, Shared, Stage, check_global_batch, evaluation_stages, summary_exists

FIGURES = (
    "sampled_problems",
    "problems_attempted",
    "tuned_tokens",
    "optimizer_steps",
    "train_loss",
    "samples",
    "correct",
    "acceptance_rate",
    "kept_solutions",
)
"""The figures of the SFT stage's summary the efficiency table shows."""


class SFT(ArmKind):
    name = "sft"
    methods = {"sft": Method("+ SFT", "sft")}
    section = "sft"
    not_results = ("sample_batch_size",)
    stage_colors = {"sampling and fine-tuning": "#b5651d"}

    def configs(self, shared: Shared, arm: Arm) -> dict:
        """``sft`` (``train:``'s LoRA and optimizer settings, then ``sft:``), ``eval``, ``effect``."""
        cfg = shared.cfg
        train_only = {f.name for f in fields(TrainConfig)} - {f.name for f in fields(LoraOptions)}
        inherits = {k: v for k, v in cfg.train.items() if k not in train_only}
        if {"epochs", "max_steps"} & set(cfg.sft):  # SFT's own length replaces LightReasoner's
            inherits = {k: v for k, v in inherits.items() if k not in ("epochs", "max_steps")}
        entry: dict = {
            "arm": arm,
            "sft": build(
                SFTConfig,
                {
                    **shared.common,
                    "model": cfg.expert,
                    "data": cfg.data,
                    "question_field": cfg.question_field,
                    "max_problems": cfg.max_problems,
                    "data_seed": cfg.seed,
                    "output_dir": str(arm.adapter),
                    "resume": True,
                    **inherits,
                    **cfg.sft,
                },
                {},
                source="run config, section 'sft'",
            ),
            **shared.tuned(arm),
        }
        check_global_batch(cfg, "sft", entry["sft"])
        return entry

    def stages(self, entry: dict, configs: dict) -> list[tuple[Stage, object]]:
        arm: Arm = entry["arm"]
        done = summary_exists(arm.adapter, SFT_SUMMARY)
        return [(Stage(f"{arm.id}: sampling and fine-tuning", "sft", done, arm=arm), entry["sft"])] + evaluation_stages(
            entry
        )

    def efficiency(self, entry: dict) -> dict:
        s = json.loads((entry["arm"].adapter / SFT_SUMMARY).read_text())
        return {
            "sampling_seconds": s["sampling_seconds"],
            "fine_tuning_seconds": s["fine_tuning_seconds"],
            **{k: s[k] for k in FIGURES},
        }

    def efficiency_note(self, label: str, e: dict) -> str:
        return (
            f"{label}: {e['samples']} solutions sampled, {e['correct']} correct "
            f"(acceptance {100 * e['acceptance_rate']:.1f}%), {e['kept_solutions']} kept."
        )
