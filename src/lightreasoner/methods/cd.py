"""Contrastive decoding (O'Brien & Lewis, 2023): no training, the expert decodes the test
problems against the amateur (``cd:``: ``cd_alpha``, ``cd_beta``); one evaluation stage."""

from __future__ import annotations

from ..config import RunConfig
from ..errors import LightReasonerError
from .base import Arm, ArmKind, Method, Shared, Stage, evaluation_stages


class CD(ArmKind):
    name = "cd"
    methods = {"cd": Method("+ CD", "cd")}
    section = "cd"
    not_results = ("batch_size",)

    def check(self, cfg: RunConfig) -> None:
        own = sorted({"model", "contrastive_amateur", "adapter", "out", "name", "backend"} & set(cfg.cd))
        if own:
            raise LightReasonerError(f"run config, section 'cd': {', '.join(own)} is set by the run, not by 'cd'")

    def configs(self, shared: Shared, arm: Arm) -> dict:
        cd = {"backend": "hf", **shared.cfg.cd}  # contrastive decoding is an HF-backend decoder
        ev = shared.evaluation(arm.eval, arm.label, model=shared.cfg.expert, contrastive_amateur=arm.amateur, **cd)
        return {"arm": arm, "eval": ev}

    def stages(self, entry: dict, configs: dict) -> list[tuple[Stage, object]]:
        return evaluation_stages(entry)
