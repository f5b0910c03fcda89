"""What every kind of arm is built from: the arm and its folder, a stage of the run, the run's
settings every builder starts from (:class:`Shared`), and :class:`ArmKind`, the base of the
builders (lightr.py, sft.py, cd.py: one per kind)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import EffectConfig, EvalConfig, RunConfig, build
from ..errors import LightReasonerError
from ..files import EFFECT_FILE


@dataclass(frozen=True)
class Method:
    """One name of ``methods:``: the kind of arm it is, its label in the report, the kind's
    options for it (a variant: LightReasoner w/o Select is ``{"select": False}``), its name
    in plots beside the other variants of its kind, and whether it also runs with each extra
    amateur of the expertise-gap study (``amateurs:``)."""

    label: str
    kind: str
    options: dict = field(default_factory=dict)
    short: str = ""
    gap_study: bool = False


@dataclass
class Arm:
    """One method with one amateur, in its own folder (``RUN/arms/<id>``)."""

    id: str
    method: str
    amateur: str | None
    dir: Path
    label: str
    legacy: bool = False  # the lightr arm of a run made before arms: its files sit in the run folder

    @property
    def samples(self) -> Path:
        return self.dir / "samples.jsonl"

    @property
    def adapter(self) -> Path:
        return self.dir / "adapter"

    @property
    def eval(self) -> Path:
        return self.dir / ("eval/tuned" if self.legacy else "eval")


@dataclass
class Stage:
    name: str
    command: str  # the lightreasoner subcommand that runs it ("": it runs in the run's process, by ``work``)
    done: Callable[[], bool]
    distributed: bool = True  # started through accelerate when the run has several processes
    arm: Arm | None = None  # the arm it belongs to (None: shared by every arm)
    work: Callable[[], object] | None = None  # what a stage without a command does


def summary_exists(folder: str | Path, name: str = "summary.json") -> Callable[[], bool]:
    return lambda: (Path(folder) / name).exists()


def split_list(value: str | None) -> list[str]:
    return [] if not value else [v.strip() for v in str(value).split(",") if v.strip()]


def amateur_tag(model: str) -> str:
    """A folder-safe short name of a model: ``embedded:Qwen2.5-0.5B`` → ``Qwen2.5-0.5B``."""
    name = Path(model.split(":", 1)[-1].rstrip("/")).name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name) or "amateur"


def all_amateurs(cfg: RunConfig) -> list[str]:
    """The run's amateur, then the gap study's others; their short names must differ."""
    models = [cfg.amateur, *(a for a in split_list(cfg.amateurs) if a != cfg.amateur)]
    tags = [amateur_tag(m) for m in models]
    if len(set(tags)) != len(tags):
        raise LightReasonerError(f"amateurs: two amateurs share a folder name ({', '.join(tags)}); rename one")
    return models


class Shared:
    """The run's settings every builder starts from: the options every stage takes
    (:attr:`common`) and the evaluation every arm shares the settings of (:meth:`evaluation`)."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.run = Path(cfg.out)
        self.common = {
            "dtype": cfg.dtype,
            "device": cfg.device,
            "allow_pickle": cfg.allow_pickle,
            "trust_remote_code": cfg.trust_remote_code,
        }
        self.eval_common = {
            **self.common,
            "benchmarks": cfg.benchmarks,
            "data_dir": cfg.data_dir,
            "limit": cfg.eval_limit,
            "seed": cfg.eval_seed,
            "max_new_tokens": cfg.eval_max_new_tokens,
            "batch_size": cfg.eval_batch_size,
            **cfg.eval,
        }

    def evaluation(self, out: Path, name: str, **over) -> EvalConfig:
        """An evaluation on the run's test problems, written to ``out`` (``over``: what differs)."""
        return build(EvalConfig, {**self.eval_common, "out": str(out), "name": name, **over}, {}, "run config, 'eval'")

    def tuned(self, arm: Arm) -> dict:
        """``eval`` (the expert with the arm's adapter: merged in memory in float32, unmerged in
        bf16/fp16 as vLLM does) and, unless ``effect_problems: 0``, ``effect`` (the adapter's
        effect against rounding, on the baseline's completions)."""
        cfg = self.cfg
        out = {"eval": self.evaluation(arm.eval, arm.label, model=cfg.expert, adapter=str(arm.adapter))}
        if cfg.effect_problems and not arm.legacy:
            out["effect"] = build(
                EffectConfig,
                {
                    **self.common,
                    "model": cfg.expert,
                    "adapter": str(arm.adapter),
                    "completions": str(self.run / "eval" / "baseline"),
                    "out": str(arm.dir / EFFECT_FILE),
                    "problems": cfg.effect_problems,
                    "positions": cfg.effect_positions,
                    **({"system_prompt": cfg.eval["system_prompt"]} if "system_prompt" in cfg.eval else {}),
                },
                {},
                source="run config",
            )
        return out


def check_global_batch(cfg: RunConfig, section: str, stage_cfg) -> None:
    """A training stage's global batch must split over the run's processes: refused before the
    first stage, not at fine-tuning."""
    if cfg.num_processes > 1:
        from ..training import split_global_batch

        try:
            split_global_batch(stage_cfg.batch_size, stage_cfg.grad_accum, cfg.num_processes)
        except LightReasonerError as e:
            raise LightReasonerError(f"run config, section '{section}', --num-processes: {e}") from None


def evaluation_stages(entry: dict) -> list[tuple[Stage, object]]:
    """An arm's evaluation (``entry["eval"]``), then its adapter-effect check where it has one."""
    arm: Arm = entry["arm"]
    name = "tuned evaluation" if arm.legacy else f"{arm.id}: evaluation"
    stages: list[tuple[Stage, object]] = [(Stage(name, "eval", summary_exists(arm.eval), arm=arm), entry["eval"])]
    if "effect" in entry:
        done = lambda p=entry["effect"].out: Path(p).exists()  # noqa: E731
        stages.append((Stage(f"{arm.id}: adapter effect", "effect", done, False, arm), entry["effect"]))
    return stages


class ArmKind:
    """The builder of one kind of arm; a subclass per kind, registered by name in
    :data:`lightreasoner.methods.KINDS`.

    ``entry``, what :meth:`configs` returns, is the arm's stage configs by role: ``arm`` (the
    :class:`Arm`), and those it has of ``eval`` (every arm: what the report reads), ``train``
    (LightReasoner records), ``sft``, ``effect``, and whatever its own stages need."""

    name: str = ""
    """The kind's name (``Method.kind`` of its methods)."""
    methods: dict[str, Method] = {}
    """The names of ``methods:`` this kind answers, in the order the report lists them."""
    section: str | None = None
    """The run config's section of this kind's own options (``cfg.<section>``): checked per arm (``arm.yaml``)."""
    not_results: tuple[str, ...] = ()
    """Keys of that section that change how fast the arm runs, not what it computes."""
    stage_colors: dict[str, str] = {}
    """The time plot's colour of each of its stages, by what the stage does (``<arm>: <what>``)."""

    def check(self, cfg: RunConfig) -> None:
        """Refuse run options this kind cannot take, before any stage (every kind checks every run)."""

    def configs(self, shared: Shared, arm: Arm) -> dict:
        """The arm's ``entry``: its stage configs by role."""
        raise NotImplementedError

    def stages(self, entry: dict, configs: dict) -> list[tuple[Stage, object]]:
        """The arm's stages in order, with their configs (``configs``: the run's, for shared
        stages: one with ``arm=None`` is planned once, before the first arm that needs it)."""
        raise NotImplementedError

    def settings(self, cfg: RunConfig, arm: Arm) -> dict:
        """What the arm's results depend on beyond the run's shared settings (``arm.yaml``)."""
        section = getattr(cfg, self.section) if self.section else {}
        own = {k: v for k, v in section.items() if k not in self.not_results}
        return {"method": arm.method, "amateur": arm.amateur, self.name: own}

    def efficiency(self, entry: dict) -> dict | None:
        """A trained arm's cost for the report's efficiency table, from the files its stages
        wrote: ``sampling_seconds`` and ``fine_tuning_seconds`` first, then ``sampled_problems``,
        ``problems_attempted``, ``tuned_tokens`` and its own figures; ``None``: not trained."""
        return None

    def efficiency_note(self, label: str, e: dict) -> str | None:
        """A sentence under the efficiency table about the arm's figures ``e``."""
        return None
