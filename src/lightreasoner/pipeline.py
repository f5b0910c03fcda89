"""``lightreasoner run``: the whole experiment in one run directory.

Stages: baseline evaluation → sampling → fine-tuning → merge → evaluation → report.
Each stage is skipped when its output is already complete, so an interrupted run
resumes where it stopped (sampling and evaluation also resume inside the stage).
"""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import yaml

from .config import EvalConfig, MergeConfig, RunConfig, SampleConfig, TrainConfig, build, read_yaml
from .errors import LightReasonerError
from .io import OutputLock, atomic_write_json, atomic_write_text, friendly_os_errors

log = logging.getLogger(__name__)

QUICK = {
    "max_problems": 4,
    "eval_limit": 4,
    "eval_max_new_tokens": 96,
    "sample": {"max_new_tokens": 32},
    "train": {"max_steps": 4, "save_steps": 1000},
}
"""Overrides of ``--quick``: a smoke test of every stage in a few minutes."""


def default_config() -> dict:
    """The packaged offline default experiment (``configs/default.yaml``)."""
    text = resources.files("lightreasoner").joinpath("configs/default.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def merge_dicts(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_run_config(path: str | None, flags: dict, quick: bool) -> RunConfig:
    """Defaults (the packaged default without ``path``) < file < ``--quick`` < flags."""
    values = read_yaml(path) if path else default_config()
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


def run_stage(cfg: RunConfig, stage: Stage, stage_cfg, run: Path, quiet: bool) -> None:
    """Run one stage in its own process (so its memory, GPU memory and engines are gone
    when it ends); a failure stops the run with the stage's name and exit status."""
    config_file = run / "stages" / f"{stage.command}-{stage.name.split()[0]}.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    values = {k: v for k, v in asdict(stage_cfg).items() if v is not None}
    atomic_write_text(config_file, yaml.safe_dump({stage.command: values}, sort_keys=False))
    cmd = stage_command(cfg, stage, config_file, quiet)
    log.info("[%s] %s", stage.name, " ".join(cmd))
    code = subprocess.call(cmd, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    if code != 0:
        raise LightReasonerError(
            f"stage '{stage.name}' failed (exit status {code}; its message is above). "
            "Fix the cause and run the same command again: finished stages and finished work are kept."
        )


def stage_configs(cfg: RunConfig) -> dict:
    """The config of every stage, built from the run config and its sections."""
    run = Path(cfg.out)
    common = {
        "dtype": cfg.dtype,
        "device": cfg.device,
        "allow_pickle": cfg.allow_pickle,
        "trust_remote_code": cfg.trust_remote_code,
    }
    sample = build(
        SampleConfig,
        {
            **common,
            "expert": cfg.expert,
            "amateur": cfg.amateur,
            "data": cfg.data,
            "out": str(run / "samples.jsonl"),
            "question_field": cfg.question_field,
            "max_problems": cfg.max_problems,
            "seed": cfg.seed,
            **cfg.sample,
        },
        {},
        source="run config, section 'sample'",
    )
    train = build(
        TrainConfig,
        {
            **common,
            "model": cfg.expert,
            "samples": sample.out,
            "output_dir": str(run / "adapter"),
            "resume": True,  # continue from the last checkpoint of an interrupted run
            **cfg.train,
        },
        {},
        source="run config, section 'train'",
    )
    merge = build(
        MergeConfig,
        {**common, "base": cfg.expert, "adapter": train.output_dir, "out": str(run / "merged")},
        {},
        source="run config",
    )
    evals = {}
    for which, model, name in (("baseline", cfg.expert, "Baseline"), ("tuned", merge.out, "+ LightR")):
        evals[which] = build(
            EvalConfig,
            {
                **common,
                "model": model,
                "out": str(run / "eval" / which),
                "name": name,
                "benchmarks": cfg.benchmarks,
                "data_dir": cfg.data_dir,
                "limit": cfg.eval_limit,
                "seed": cfg.eval_seed,
                "max_new_tokens": cfg.eval_max_new_tokens,
                "batch_size": cfg.eval_batch_size,
                **cfg.eval,
            },
            {},
            source="run config, section 'eval'",
        )
    return {"sample": sample, "train": train, "merge": merge, "baseline": evals["baseline"], "tuned": evals["tuned"]}


def check_disjoint(cfg: RunConfig) -> int:
    """Generated training and test problems must not overlap; returns the test problems checked."""
    from .data import REASONING_GYM_PREFIX, load_problems
    from .evaluation.benchmarks import load_items

    generated = [b for b in cfg.benchmarks.split(",") if b.strip().startswith(REASONING_GYM_PREFIX)]
    if not generated or not cfg.data.startswith(REASONING_GYM_PREFIX):
        return 0
    train_q = {p.question for p in load_problems(cfg.data, max_problems=cfg.max_problems, seed=cfg.seed)}
    checked = 0
    for b in generated:
        test_q = [it.question for it in load_items(b.strip(), None, cfg.eval_limit, cfg.eval_seed)]
        overlap = train_q.intersection(test_q)
        if overlap:
            raise LightReasonerError(
                f"{len(overlap)} of the {b} test problems (seed {cfg.eval_seed}) are also training problems "
                f"(seed {cfg.seed}); choose other seeds"
            )
        checked += len(test_q)
    return checked


LAUNCH_FIELDS = ("num_processes", "accelerate_config", "launch")
"""Run options that change how stages start, not what they compute: a run may resume with others."""


def _check_same_settings(run: Path, resolved: dict) -> None:
    path = run / "config.yaml"
    if path.exists():
        before = yaml.safe_load(path.read_text())
        defaults = asdict(RunConfig())
        # options added to RunConfig after the run was made count as their defaults
        before = {**{k: v for k, v in defaults.items() if k not in before}, **before}
        before, now = ({k: v for k, v in d.items() if k not in LAUNCH_FIELDS} for d in (before, resolved))
        if before != now:
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise LightReasonerError(
                f"{run} holds a run with other settings (changed: {', '.join(changed)}); "
                "use another --out, or delete the folder to start again"
            )


def run_experiment(cfg: RunConfig, show_progress: bool = True) -> dict:
    """Run (or resume) every stage, each in its own process, then write the report;
    returns the report's figures."""
    if cfg.num_processes < 1:
        raise LightReasonerError("--num-processes: must be at least 1")
    if cfg.accelerate_config and not Path(cfg.accelerate_config).is_file():
        raise LightReasonerError(f"--accelerate-config {cfg.accelerate_config}: no such file")
    run = Path(cfg.out)
    run.parent.mkdir(parents=True, exist_ok=True)
    with OutputLock(run), friendly_os_errors(run):
        return _run_locked(cfg, run, show_progress)


def _run_locked(cfg: RunConfig, run: Path, show_progress: bool) -> dict:
    from .report import write_report
    from .training import TRAIN_SUMMARY

    resolved = asdict(cfg)
    _check_same_settings(run, resolved)
    configs = stage_configs(cfg)
    disjoint = check_disjoint(cfg)
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))

    stages = [
        (
            Stage("baseline evaluation", "eval", lambda: (Path(configs["baseline"].out) / "summary.json").exists()),
            "baseline",
        ),
        (Stage("sampling", "sample", lambda: Path(configs["sample"].out).exists()), "sample"),
        (Stage("fine-tuning", "train", lambda: (Path(configs["train"].output_dir) / TRAIN_SUMMARY).exists()), "train"),
        (Stage("merge", "merge", lambda: (Path(configs["merge"].out) / "config.json").exists(), False), "merge"),
        (Stage("tuned evaluation", "eval", lambda: (Path(configs["tuned"].out) / "summary.json").exists()), "tuned"),
    ]
    timings_path = run / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    for stage, key in stages:
        if stage.done():
            log.info("[%s] already complete, skipped", stage.name)
            continue
        log.info("[%s] starting", stage.name)
        t0 = time.perf_counter()
        run_stage(cfg, stage, configs[key], run, quiet=not show_progress)
        timings[stage.name] = time.perf_counter() - t0
        atomic_write_json(timings_path, timings)
        log.info("[%s] done in %.1f s", stage.name, timings[stage.name])
    return write_report(run, cfg, configs, timings, disjoint)
