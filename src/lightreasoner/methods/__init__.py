"""The arms of a run: one builder per kind of arm, and the registry of kinds.

- :mod:`.lightr`: LightReasoner and its ablations (w/o Select, w/o Contrast, both), also
  with each extra amateur of the expertise-gap study;
- :mod:`.sft`: the rejection-sampling SFT baseline;
- :mod:`.cd`: contrastive decoding (evaluation only).

A builder (:class:`ArmKind`, in :mod:`.base`) says which ``methods:`` names it answers,
which stages an arm needs and their configs, which of its settings are results, and what
the report shows of it. A new kind is one new builder passed to :func:`register`.
"""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..errors import LightReasonerError
from .base import Arm, ArmKind, Method, Shared, Stage, all_amateurs, amateur_tag, evaluation_stages, split_list
from .cd import CD
from .lightr import LightR, pool_config
from .sft import SFT

__all__ = [
    "KINDS",
    "METHODS",
    "Arm",
    "ArmKind",
    "Method",
    "Shared",
    "Stage",
    "all_amateurs",
    "amateur_tag",
    "arm_settings",
    "evaluation_stages",
    "kind_of",
    "plan_arms",
    "register",
    "split_list",
    "stage_configs",
]

KINDS: dict[str, ArmKind] = {}
"""Kind name → its builder."""
METHODS: dict[str, Method] = {}
"""Every name ``methods:`` takes → its method (the names of every registered kind)."""


def register(kind: ArmKind) -> ArmKind:
    """Add a kind of arm: its builder and its methods' names (which must be new)."""
    taken = sorted(set(kind.methods) & set(METHODS))
    if kind.name in KINDS or taken:
        raise LightReasonerError(f"arm kind {kind.name!r}: {', '.join(taken) or kind.name} is already registered")
    KINDS[kind.name] = kind
    METHODS.update(kind.methods)
    return kind


register(LightR())
register(SFT())
register(CD())


def kind_of(method: str) -> ArmKind:
    """The builder of a method's kind (``method``: a name of ``methods:``)."""
    return KINDS[METHODS[method].kind]


LEGACY_FILES = ("samples.jsonl", "samples.jsonl.progress", "adapter", "eval/tuned")
"""LightReasoner's files in a run folder made before arms (its one arm, ``lightr``, stays there)."""


def plan_arms(cfg: RunConfig, run: Path) -> list[Arm]:
    """Every arm of the run, in the order of ``methods``. Every method runs with the run's
    amateur; a method of the gap study (LightReasoner) also runs with each extra amateur."""
    methods = split_list(cfg.methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise LightReasonerError(
            f"methods: unknown {', '.join(map(repr, unknown)) or '(none given)'} (known: {', '.join(METHODS)})"
        )
    legacy = any((run / p).exists() for p in LEGACY_FILES)
    amateurs = all_amateurs(cfg)
    arms = []
    for m in dict.fromkeys(methods):
        spec = METHODS[m]
        for i, a in enumerate(amateurs if spec.gap_study else [cfg.amateur]):
            arm_id = m if i == 0 else f"{m}@{amateur_tag(a)}"
            label = spec.label if i == 0 else f"{spec.label} ({amateur_tag(a)})"
            old = legacy and arm_id == "lightr"
            arms.append(Arm(arm_id, m, a, run if old else run / "arms" / arm_id, label, old))
    return arms


def stage_configs(cfg: RunConfig) -> dict:
    """The config of every stage: the shared ones, ``baseline``, ``amateurs`` (tag → eval:
    the expertise-gap study's) and ``pools`` (tag → sampling of every step), and ``arms``
    (id → the arm's ``entry``, built by its kind: ``{"arm", "eval", ...}``)."""
    for kind in KINDS.values():
        kind.check(cfg)
    shared = Shared(cfg)
    amateurs = all_amateurs(cfg)
    pools = {amateur_tag(a): pool_config(shared, a) for a in amateurs}
    amateur_evals = {}
    if len(pools) > 1:  # the expertise-gap study: each amateur on the same test problems
        amateur_evals = {
            tag: shared.evaluation(shared.run / "eval" / f"amateur-{tag}", f"Amateur {tag}", model=a)
            for tag, a in zip(pools, amateurs)
        }
    arms = {arm.id: kind_of(arm.method).configs(shared, arm) for arm in plan_arms(cfg, shared.run)}
    return {
        "baseline": shared.evaluation(shared.run / "eval" / "baseline", "Baseline", model=cfg.expert),
        "amateurs": amateur_evals,
        "pools": pools,
        "arms": arms,
    }


def arm_settings(cfg: RunConfig, arm: Arm) -> dict:
    """What an arm's results depend on beyond the run's shared settings (``arm.yaml``)."""
    return kind_of(arm.method).settings(cfg, arm)
