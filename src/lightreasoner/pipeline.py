"""``lightreasoner run``: the whole experiment in one run directory.

Shared stages: the baseline evaluation, each amateur's evaluation (expertise-gap study),
and per amateur one pool of expert trajectories scored at every step with both labels.
Then each arm (``methods``) in its own folder ``RUN/arms/<arm>``: LightReasoner and its
ablations select their records from the pool and fine-tune; SFT samples, grades and
fine-tunes; contrastive decoding only evaluates. Each stage is skipped when its output is
already complete, so an interrupted run resumes where it stopped (sampling and
evaluation also resume inside the stage), and arms added later redo nothing finished.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from . import provenance
from .config import (
    SMOKE_TEST_NOTE,
    EffectConfig,
    EvalConfig,
    LoraOptions,
    RunConfig,
    SampleConfig,
    SFTConfig,
    TrainConfig,
    build,
    default_config,
    read_yaml,
)
from .errors import LightReasonerError
from .io import OutputLock, atomic_write_json, atomic_write_text, friendly_os_errors, setting_changes
from .precision import EFFECT_FILE

log = logging.getLogger(__name__)

QUICK = {
    "smoke_test": True,
    "max_problems": 4,
    "eval_limit": 4,
    "eval_max_new_tokens": 96,
    "sample": {"max_new_tokens": 32},
    # two optimizer steps of one micro-batch each: a training step of the 1.5B expert on a CPU is
    # its forward and backward passes, the slowest part of a smoke test
    "train": {"max_steps": 2, "grad_accum": 1, "save_steps": 1000},
    "effect_problems": 2,
    "effect_positions": 16,
}
"""Overrides of ``--quick``: a smoke test of every stage in a few minutes."""



def merge_dicts(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_run_yaml(path: str | Path, seen: tuple[Path, ...] = ()) -> dict:
    """A run config file; ``extends: other.yaml`` (relative to the file; ``default``: the
    packaged default experiment) starts from another config and changes only the keys given
    (sections are merged key by key)."""
    path = Path(path)
    values = read_yaml(path)
    parent = values.pop("extends", None)
    if parent is None:
        return values
    if parent == "default":
        return merge_dicts(default_config(), values)
    base = (path.parent / str(parent)).resolve()
    if base in seen or base == path.resolve():
        raise LightReasonerError(f"{path}: 'extends: {parent}' makes a loop")
    if not base.is_file():
        raise LightReasonerError(f"{path}: 'extends: {parent}': no such file ({base})")
    return merge_dicts(read_run_yaml(base, (*seen, path.resolve())), values)


def load_run_config(path: str | None, flags: dict, quick: bool) -> RunConfig:
    """Defaults (the packaged default without ``path``) < file (and the files it extends) <
    ``--quick`` < flags."""
    values = read_run_yaml(path) if path else default_config()
    if quick:
        values = merge_dicts(values, QUICK)
        if flags.get("out") is None and "out" not in values:
            values["out"] = "runs/quick"
    return build(RunConfig, values, flags, source=path or "default config")


@dataclass
class Stage:
    name: str
    command: str  # the lightreasoner subcommand that runs it
    done: Callable[[], bool]
    distributed: bool = True  # started through accelerate when the run has several processes
    arm: Arm | None = None  # the arm it belongs to (None: shared by every arm)


def stage_command(cfg: RunConfig, stage: Stage, config_file: Path, quiet: bool) -> list[str]:
    """The command line of one stage: ``python -m lightreasoner CMD --config FILE``, through
    ``accelerate launch`` when the run asks for several processes or an accelerate config."""
    tail = ["-m", "lightreasoner", stage.command, "--config", str(config_file), *(["-q"] if quiet else [])]
    several = cfg.num_processes > 1 or cfg.accelerate_config or cfg.launch
    if not (stage.distributed and several):
        return [sys.executable, *tail]
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    if cfg.accelerate_config:
        launch += ["--config_file", cfg.accelerate_config]
    else:  # the torchrun launcher (NCCL on GPUs, gloo on CPUs), without accelerate's default-value warnings
        launch += ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
        launch += ["--num_machines", "1"] if "num_machines" not in cfg.launch else []
    if cfg.num_processes > 1 or not cfg.accelerate_config:
        launch += ["--num_processes", str(cfg.num_processes)]
    for k, v in cfg.launch.items():
        launch += [f"--{k}", str(v)] if v is not True else [f"--{k}"]
    return [*launch, *tail]


def _die_with_parent() -> None:
    """In the stage's process (Linux): receive SIGTERM when the run's process dies, so a
    killed run leaves no stage running on its own."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


KILLED_HINT = (
    "It was killed (SIGKILL), most often by the system running out of memory: lower the stage's batch_size "
    "(raise grad_accum to keep a training stage's global batch) or set gradient_checkpointing: true. "
)


def run_stage(cfg: RunConfig, stage: Stage, stage_cfg, run: Path, quiet: bool) -> None:
    """Run one stage in its own process (so its memory, GPU memory and engines are gone
    when it ends); a failure stops the run with the stage's name and exit status."""
    config_file = run / "stages" / f"{stage.command}-{re.sub(r'[^A-Za-z0-9@._-]+', '-', stage.name)}.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    values = {k: v for k, v in asdict(stage_cfg).items() if v is not None}
    atomic_write_text(config_file, yaml.safe_dump({stage.command: values}, sort_keys=False))
    cmd = stage_command(cfg, stage, config_file, quiet)
    log.info("[%s] %s", stage.name, " ".join(cmd))
    code = subprocess.call(cmd, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    if code != 0:
        raise LightReasonerError(
            f"stage '{stage.name}' failed (exit status {code}; its message is above). "
            + (KILLED_HINT if code in (-9, 137) else "")
            + "Fix the cause and run the same command again: finished stages and finished work are kept."
        )


@dataclass(frozen=True)
class Method:
    """One arm's recipe: ``kind`` lightr (sample, select, train), sft or cd (decoding only)."""

    label: str
    kind: str
    select: bool = True
    contrast: bool = True


METHODS = {
    "lightr": Method("+ LightR", "lightr"),
    "lightr-no-select": Method("+ LightR w/o Select", "lightr", select=False),
    "lightr-no-contrast": Method("+ LightR w/o Contrast", "lightr", contrast=False),
    "lightr-no-select-no-contrast": Method("+ LightR w/o Select & Contrast", "lightr", select=False, contrast=False),
    "sft": Method("+ SFT", "sft"),
    "cd": Method("+ CD", "cd"),
}
"""The arms a run can have. Without Select every step is trained on (β = -inf); without
Contrast the label is the expert's own renormalised distribution; with neither, the
amateur plays no part. Extra amateurs get LightReasoner arms only."""


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


def plan_arms(cfg: RunConfig, run: Path) -> list[Arm]:
    """Every arm of the run, in the order of ``methods``. Every method runs with the run's
    amateur; LightReasoner also runs with each extra amateur (the expertise-gap study)."""
    methods = split_list(cfg.methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise LightReasonerError(
            f"methods: unknown {', '.join(map(repr, unknown)) or '(none given)'} (known: {', '.join(METHODS)})"
        )
    legacy = any((run / p).exists() for p in ("samples.jsonl", "samples.jsonl.progress", "adapter", "eval/tuned"))
    amateurs = all_amateurs(cfg)
    arms = []
    for m in dict.fromkeys(methods):
        spec = METHODS[m]
        for i, a in enumerate(amateurs if m == "lightr" else [cfg.amateur]):
            arm_id = m if i == 0 else f"{m}@{amateur_tag(a)}"
            label = spec.label if i == 0 else f"{spec.label} ({amateur_tag(a)})"
            old = legacy and arm_id == "lightr"
            arms.append(Arm(arm_id, m, a, run if old else run / "arms" / arm_id, label, old))
    return arms


def stage_configs(cfg: RunConfig) -> dict:
    """The config of every stage, built from the run config and its sections: ``baseline``,
    ``amateurs`` (tag → eval), ``pools`` (tag → sampling of every step), and ``arms``
    (id → {"arm", "train"/"sft", "eval"})."""
    run = Path(cfg.out)
    common = {
        "dtype": cfg.dtype,
        "device": cfg.device,
        "allow_pickle": cfg.allow_pickle,
        "trust_remote_code": cfg.trust_remote_code,
    }
    eval_common = {
        **common,
        "benchmarks": cfg.benchmarks,
        "data_dir": cfg.data_dir,
        "limit": cfg.eval_limit,
        "seed": cfg.eval_seed,
        "max_new_tokens": cfg.eval_max_new_tokens,
        "batch_size": cfg.eval_batch_size,
        **cfg.eval,
    }

    def evaluation(out: Path, name: str, **over) -> EvalConfig:
        return build(EvalConfig, {**eval_common, "out": str(out), "name": name, **over}, {}, "run config, 'eval'")

    per_arm = sorted(set(PER_ARM_SAMPLE_KEYS) & set(cfg.sample))
    if per_arm:
        raise LightReasonerError(
            f"run config, section 'sample': {', '.join(per_arm)} is set by each arm's method; "
            "list the ablations under methods: instead (e.g. lightr-no-contrast)"
        )
    own = sorted({"model", "contrastive_amateur", "adapter", "out", "name", "backend"} & set(cfg.cd))
    if own:
        raise LightReasonerError(f"run config, section 'cd': {', '.join(own)} is set by the run, not by 'cd'")
    sample_section = {k: v for k, v in cfg.sample.items() if k != "beta"}
    beta = build(SampleConfig, {**cfg.sample, "expert": "-", "amateur": "-", "data": "-", "out": "-"}, {}).beta
    pools = {
        amateur_tag(a): build(
            SampleConfig,
            {
                **common,
                "expert": cfg.expert,
                "amateur": a,
                "data": cfg.data,
                "out": str(run / "trajectories" / amateur_tag(a) / "samples.jsonl"),
                "question_field": cfg.question_field,
                "max_problems": cfg.max_problems,
                "seed": cfg.seed,
                **sample_section,
                "beta": -math.inf,
                "expert_weights": True,
            },
            {},
            source="run config, section 'sample'",
        )
        for a in all_amateurs(cfg)
    }
    amateur_evals = {}
    if len(pools) > 1:  # the expertise-gap study: each amateur on the same test problems
        amateur_evals = {
            tag: evaluation(run / "eval" / f"amateur-{tag}", f"Amateur {tag}", model=a)
            for tag, a in zip(pools, all_amateurs(cfg))
        }
    train_only = {f.name for f in fields(TrainConfig)} - {f.name for f in fields(LoraOptions)}
    sft_inherits = {k: v for k, v in cfg.train.items() if k not in train_only}
    if {"epochs", "max_steps"} & set(cfg.sft):  # SFT's own length replaces LightReasoner's
        sft_inherits = {k: v for k, v in sft_inherits.items() if k not in ("epochs", "max_steps")}
    arms = {}
    for arm in plan_arms(cfg, run):
        spec = METHODS[arm.method]
        entry: dict = {"arm": arm}
        if spec.kind == "lightr":
            entry["pool"] = amateur_tag(arm.amateur)
            entry["beta"] = beta if spec.select else -math.inf
            entry["contrast"] = spec.contrast
            entry["train"] = build(
                TrainConfig,
                {
                    **common,
                    "model": cfg.expert,
                    "samples": str(arm.samples),
                    "output_dir": str(arm.adapter),
                    "resume": True,  # continue from the last checkpoint of an interrupted run
                    **cfg.train,
                },
                {},
                source="run config, section 'train'",
            )
        elif spec.kind == "sft":
            entry["sft"] = build(
                SFTConfig,
                {
                    **common,
                    "model": cfg.expert,
                    "data": cfg.data,
                    "question_field": cfg.question_field,
                    "max_problems": cfg.max_problems,
                    "data_seed": cfg.seed,
                    "output_dir": str(arm.adapter),
                    "resume": True,
                    **sft_inherits,
                    **cfg.sft,
                },
                {},
                source="run config, section 'sft'",
            )
        if spec.kind == "cd":
            cd = {"backend": "hf", **cfg.cd}  # contrastive decoding is an HF-backend decoder
            entry["eval"] = evaluation(arm.eval, arm.label, model=cfg.expert, contrastive_amateur=arm.amateur, **cd)
        elif arm.legacy and (run / "merged" / "config.json").exists():
            entry["eval"] = evaluation(arm.eval, arm.label, model=str(run / "merged"))
        else:  # base + adapter: merged in memory in float32, unmerged in bf16/fp16 (as vLLM)
            entry["eval"] = evaluation(arm.eval, arm.label, model=cfg.expert, adapter=str(arm.adapter))
            if cfg.effect_problems and not arm.legacy:
                entry["effect"] = build(
                    EffectConfig,
                    {
                        **common,
                        "model": cfg.expert,
                        "adapter": str(arm.adapter),
                        "completions": str(run / "eval" / "baseline"),
                        "out": str(arm.dir / EFFECT_FILE),
                        "problems": cfg.effect_problems,
                        "positions": cfg.effect_positions,
                        **({"system_prompt": cfg.eval["system_prompt"]} if "system_prompt" in cfg.eval else {}),
                    },
                    {},
                    source="run config",
                )
        for kind in ("train", "sft"):  # refused before the first stage, not at fine-tuning
            if kind in entry and cfg.num_processes > 1:
                from .training import split_global_batch

                try:
                    split_global_batch(entry[kind].batch_size, entry[kind].grad_accum, cfg.num_processes)
                except LightReasonerError as e:
                    raise LightReasonerError(f"run config, section '{kind}', --num-processes: {e}") from None
        arms[arm.id] = entry
    return {
        "baseline": evaluation(run / "eval" / "baseline", "Baseline", model=cfg.expert),
        "amateurs": amateur_evals,
        "pools": pools,
        "arms": arms,
    }


def check_disjoint(cfg: RunConfig) -> int:
    """Training and test problems that load offline (generated, or the packaged GSM8K) must
    not share a question; returns the test problems checked."""
    from .data import PACKAGED, REASONING_GYM_PREFIX, load_problems
    from .evaluation.benchmarks import get_benchmark, load_items

    def offline(name: str) -> bool:
        return name.startswith(REASONING_GYM_PREFIX) or (cfg.data_dir is None and bool(get_benchmark(name).packaged))

    tests = [b.strip() for b in cfg.benchmarks.split(",") if b.strip() and offline(b.strip())]
    if not tests or not (cfg.data.startswith(REASONING_GYM_PREFIX) or cfg.data in PACKAGED):
        return 0
    train_q = {p.question for p in load_problems(cfg.data, max_problems=cfg.max_problems, seed=cfg.seed)}
    checked = 0
    for b in tests:
        test_q = [it.question for it in load_items(b, None, cfg.eval_limit, cfg.eval_seed)]
        overlap = train_q.intersection(test_q)
        if overlap:
            raise LightReasonerError(
                f"{len(overlap)} of the {b} test problems are also training problems ({cfg.data}); "
                + ("choose other seeds" if b.startswith(REASONING_GYM_PREFIX) else "choose other training data")
            )
        checked += len(test_q)
    return checked


LAUNCH_FIELDS = ("num_processes", "accelerate_config", "launch")
"""Run options that change how stages start, not what they compute: a run may resume with others."""
ARM_FIELDS = ("methods", "amateurs", "sft", "cd")
"""Run options that add arms: a finished run may take more arms later. The settings of one
arm (its method, amateur and ``sft``/``cd`` section) are checked by the arm (``arm.yaml``)."""
ARM_FILE = "arm.yaml"
PER_ARM_SAMPLE_KEYS = ("contrast", "expert_weights")
"""Sampling options each arm's method sets (Contrast; the pool's second label), not ``sample:``."""


ENGINE_KEYS = ("tensor_parallel_size", "gpu_memory_utilization", "max_lora_rank")
NOT_RESULTS = {
    "": ("eval_batch_size", "estimate"),
    "sample": ("batch_size", "score_batch_size", *ENGINE_KEYS),
    "eval": ("batch_size", *ENGINE_KEYS),
    "sft": ("sample_batch_size",),
    "cd": ("batch_size",),
}
"""Options (top level, or keys of a section) that change how fast a stage runs or how it uses
the hardware, not what it computes: a run resumes with other values. Training batch sizes are
not among them (they set the global batch)."""


def results_settings(settings: dict) -> dict:
    """A run's settings without the options in :data:`NOT_RESULTS`."""
    out = {k: v for k, v in settings.items() if k not in NOT_RESULTS[""]}
    for name, keys in NOT_RESULTS.items():
        if name and isinstance(out.get(name), dict):
            out[name] = {k: v for k, v in out[name].items() if k not in keys}
    return out


def arm_settings(cfg: RunConfig, arm: Arm) -> dict:
    """What an arm's results depend on beyond the run's shared settings."""
    kind = METHODS[arm.method].kind
    section = cfg.sft if kind == "sft" else cfg.cd if kind == "cd" else {}
    own = {k: v for k, v in section.items() if k not in NOT_RESULTS.get(kind, ())}
    return {"method": arm.method, "amateur": arm.amateur, kind: own}


def _check_arm_settings(cfg: RunConfig, arms: list[Arm]) -> None:
    """Refuse to reuse an arm made with other settings (an arm with no output yet may change);
    warn about arm folders the run does not plan."""
    for arm in arms:
        if arm.legacy or not _has_output(arm):
            continue
        path, now = arm.dir / ARM_FILE, arm_settings(cfg, arm)
        if not path.exists():
            log.warning("%s has no %s (made by an earlier version): its settings cannot be checked", arm.dir, ARM_FILE)
        else:
            before = yaml.safe_load(path.read_text())
            if before != now:
                raise LightReasonerError(
                    f"{arm.dir} holds the arm {arm.id!r} made with other settings "
                    f"({'; '.join(setting_changes(before, now))}); delete that folder to run the arm again"
                )
    folder, planned = Path(cfg.out) / "arms", {arm.dir for arm in arms}
    for extra in sorted(folder.iterdir()) if folder.is_dir() else []:
        if extra not in planned:
            log.warning("%s is not an arm of this run's methods and amateurs: left out of the report", extra)


def _has_output(arm: Arm) -> bool:
    """Whether the arm's folder holds anything besides ``arm.yaml``."""
    return arm.dir.is_dir() and any(p.name != ARM_FILE for p in arm.dir.iterdir())


def _record_arm_settings(cfg: RunConfig, arm: Arm) -> None:
    """Write ``arm.yaml`` when an arm starts a stage (an arm with no output yet takes the new settings)."""
    path = arm.dir / ARM_FILE
    if not arm.legacy and (not path.exists() or not _has_output(arm)):
        arm.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, yaml.safe_dump(arm_settings(cfg, arm), sort_keys=False))


def _check_same_settings(run: Path, resolved: dict) -> None:
    path = run / "config.yaml"
    if path.exists():
        before = yaml.safe_load(path.read_text())
        defaults = asdict(RunConfig())
        # options added to RunConfig after the run was made count as their defaults
        before = {**{k: v for k, v in defaults.items() if k not in before}, **before}
        if isinstance(before.get("sample"), dict):  # earlier versions ignored these keys there
            before["sample"] = {k: v for k, v in before["sample"].items() if k not in PER_ARM_SAMPLE_KEYS}
        before, now = (
            {k: v for k, v in results_settings(d).items() if k not in LAUNCH_FIELDS + ARM_FIELDS}
            for d in (before, resolved)
        )
        if before != now:
            raise LightReasonerError(
                f"{run} holds a run with other settings ({'; '.join(setting_changes(before, now))}); "
                "use another --out, give the run's own settings (its config.yaml) with --config, "
                "or delete the folder to start again"
            )


MULTI_NODE_RECIPE = (
    "`lightreasoner run` starts its stages on this node only (a run started on another node would "
    "be refused by the run's lock), so it cannot span several nodes. Run the stages one by one instead, "
    "each through one `accelerate launch` per node: configs/slurm/lightreasoner.sbatch does this with "
    "srun (eval, sample, train, merge on one process, eval, compare); or drop num_machines to use the GPUs "
    "of this node (--num-processes N)."
)


def launch_machines(cfg: RunConfig) -> int:
    """How many nodes the stages' ``accelerate launch`` would span (``launch:`` or the accelerate config)."""
    file_values: dict = {}
    if cfg.accelerate_config:
        loaded = yaml.safe_load(Path(cfg.accelerate_config).read_text(encoding="utf-8"))  # YAML or JSON
        file_values = loaded if isinstance(loaded, dict) else {}
    value = cfg.launch.get("num_machines", file_values.get("num_machines", 1))
    try:
        return int(value)
    except (TypeError, ValueError):
        raise LightReasonerError(f"launch: num_machines {value!r}: expected a number") from None


def check_one_node(cfg: RunConfig) -> None:
    """Refuse a run whose stages would span several nodes, with the per-stage recipe."""
    machines = launch_machines(cfg)
    if machines > 1:
        where = "launch: num_machines" if "num_machines" in cfg.launch else f"{cfg.accelerate_config}: num_machines"
        raise LightReasonerError(f"{where} is {machines}. {MULTI_NODE_RECIPE}")


def run_experiment(cfg: RunConfig, show_progress: bool = True) -> dict:
    """Run (or resume) every stage of every arm, each in its own process, then write the
    report; returns the report's figures."""
    if cfg.num_processes < 1:
        raise LightReasonerError("--num-processes: must be at least 1")
    if cfg.accelerate_config and not Path(cfg.accelerate_config).is_file():
        raise LightReasonerError(f"--accelerate-config {cfg.accelerate_config}: no such file")
    check_one_node(cfg)
    run = Path(cfg.out)
    run.parent.mkdir(parents=True, exist_ok=True)
    with OutputLock(run), friendly_os_errors(run):
        return _run_locked(cfg, run, show_progress)


def _summary_exists(folder: str | Path, name: str = "summary.json") -> Callable[[], bool]:
    return lambda: (Path(folder) / name).exists()


def plan_stages(configs: dict) -> list[tuple[Stage, object]]:
    """Every stage in order, with its config: the shared ones (baseline, amateurs, a pool
    of trajectories per amateur, only while an arm still needs it) before each arm's."""
    from .sft import SFT_SUMMARY
    from .training import TRAIN_SUMMARY

    stages: list[tuple[Stage, object]] = [
        (Stage("baseline evaluation", "eval", _summary_exists(configs["baseline"].out)), configs["baseline"])
    ]
    for tag, ev in configs["amateurs"].items():
        stages.append((Stage(f"amateur evaluation ({tag})", "eval", _summary_exists(ev.out)), ev))
    pooled: set[str] = set()
    for arm_id, entry in configs["arms"].items():
        arm: Arm = entry["arm"]
        legacy = arm.legacy
        if "pool" in entry:
            pool = configs["pools"][entry["pool"]]
            if not arm.samples.exists() and entry["pool"] not in pooled:
                pooled.add(entry["pool"])
                name = f"trajectories ({entry['pool']})"
                stages.append((Stage(name, "sample", lambda p=pool: Path(p.out).exists()), pool))
            name = "selection" if legacy else f"{arm_id}: selection"
            stages.append((Stage(name, "", lambda a=arm: a.samples.exists(), False, arm), entry))
            name = "fine-tuning" if legacy else f"{arm_id}: fine-tuning"
            done = _summary_exists(arm.adapter, TRAIN_SUMMARY)
            stages.append((Stage(name, "train", done, arm=arm), entry["train"]))
        if "sft" in entry:
            name = f"{arm_id}: sampling and fine-tuning"
            stages.append((Stage(name, "sft", _summary_exists(arm.adapter, SFT_SUMMARY), arm=arm), entry["sft"]))
        name = "tuned evaluation" if legacy else f"{arm_id}: evaluation"
        stages.append((Stage(name, "eval", _summary_exists(arm.eval), arm=arm), entry["eval"]))
        if "effect" in entry:
            done = lambda p=entry["effect"].out: Path(p).exists()  # noqa: E731
            stages.append((Stage(f"{arm_id}: adapter effect", "effect", done, False, arm), entry["effect"]))
    return stages


def _where(cfg: RunConfig) -> dict:
    """The device, the dtype ``--dtype`` resolves to there, and the process count."""
    from .models import resolve_device, resolve_dtype

    device = resolve_device(cfg.device)
    dtype = str(resolve_dtype(cfg.dtype, device)).removeprefix("torch.")
    return {"device": str(device), "dtype": dtype, "processes": cfg.num_processes}


def _estimate(cfg: RunConfig, configs: dict, pending: list, run: Path) -> dict[str, float]:
    """Measure this machine briefly, print what each pending stage should take (and, for a
    run of over an hour, what ``--quick`` takes), and keep the figures in ``estimates.json``."""
    from . import estimate
    from .report.tables import hms

    log.info("estimating the run's time on this machine (a short measurement of its models)...")
    quick = build(RunConfig, merge_dicts({k: v for k, v in asdict(cfg).items() if k != "out"}, QUICK), {})
    quick_stages = plan_stages(stage_configs(quick))
    models = estimate.decoders(pending + quick_stages)
    budget = cfg.eval_max_new_tokens + 256
    costs = estimate.measure_in_subprocess(models, 200 + cfg.eval_max_new_tokens // 2, cfg.dtype, cfg.device, budget)
    ahead = estimate.estimate_run(cfg, configs, pending, costs)
    total = sum(ahead.values())
    log.info("expected time per stage on this machine:\n%s", estimate.table(ahead))
    if total > 3600 and not cfg.smoke_test:
        q = sum(estimate.estimate_run(quick, stage_configs(quick), quick_stages, costs).values())
        log.warning(
            "this run should take about %s here (more than an hour); `lightreasoner run --quick` checks "
            "every stage in about %s. Stop it with Ctrl-C at any time: the same command resumes it.",
            hms(total),
            hms(q),
        )
    path = run / estimate.ESTIMATES_FILE
    saved = json.loads(path.read_text()) if path.exists() else {}
    atomic_write_json(path, {**{k: round(v, 1) for k, v in ahead.items()}, **saved})  # a stage keeps its first
    return ahead


def _run_locked(cfg: RunConfig, run: Path, show_progress: bool) -> dict:
    from .report import write_report
    from .sampling import select_from_pool

    resolved = asdict(cfg)
    _check_same_settings(run, resolved)
    configs = stage_configs(cfg)
    disjoint = check_disjoint(cfg)
    run.mkdir(parents=True, exist_ok=True)
    _check_arm_settings(cfg, [entry["arm"] for entry in configs["arms"].values()])
    atomic_write_text(run / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    provenance.write_run_gitignore(run)

    if cfg.smoke_test:
        log.info(SMOKE_TEST_NOTE)
    pending = [(s, c) for s, c in plan_stages(configs) if not s.done()]
    if cfg.estimate and os.environ.get("LIGHTREASONER_ESTIMATE", "1") != "0" and any(s.command for s, _ in pending):
        _estimate(cfg, configs, pending, run)
    timings_path = run / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    where = None
    for stage, stage_cfg in plan_stages(configs):
        if stage.done():
            log.info("[%s] already complete, skipped", stage.name)
            continue
        log.info("[%s] starting", stage.name)
        if stage.arm is not None:
            _record_arm_settings(cfg, stage.arm)
        where = where or _where(cfg)
        record = provenance.StageRecord(run, stage.name, provenance.session(**where))
        try:
            if stage.command:
                run_stage(cfg, stage, stage_cfg, run, quiet=not show_progress)
            else:  # selection: a filter over the pool's records, in this process
                arm = stage_cfg["arm"]
                pool = configs["pools"][stage_cfg["pool"]].out
                select_from_pool(pool, arm.samples, stage_cfg["beta"], stage_cfg["contrast"])
        except BaseException:
            record.finish(finished=False)
            raise
        record.finish()
        # a stage resumed across sessions (machines) takes the sum of its sessions
        timings[stage.name] = provenance.stage_seconds(provenance.read(run)[stage.name])
        atomic_write_json(timings_path, timings)
        log.info("[%s] done in %.1f s", stage.name, timings[stage.name])
    return write_report(run, cfg, configs, timings, disjoint)
