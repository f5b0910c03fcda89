"""``lightreasoner run``: the whole experiment in one run directory.

Shared stages: the baseline evaluation, each amateur's evaluation (expertise-gap study),
and per amateur one pool of expert trajectories scored at every step with both labels.
Then each arm (``methods``) in its own folder ``RUN/arms/<arm>``, with the stages its kind's
builder plans (:mod:`lightreasoner.methods`): LightReasoner and its ablations select their
records from the pool and fine-tune; SFT samples, grades and fine-tunes; contrastive
decoding only evaluates. Each stage is skipped when its output is
already complete, so an interrupted run resumes where it stopped (sampling and
evaluation also resume inside the stage), and arms added later redo nothing finished.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import yaml

from . import provenance
from .config import SMOKE_TEST_NOTE, RunConfig, build, default_config, read_yaml
from .errors import LightReasonerError
from .io import OutputLock, atomic_write_json, atomic_write_text, check_same_settings, friendly_os_errors
from .methods import KINDS, Arm, Stage, arm_settings, kind_of, stage_configs
from .methods.base import summary_exists
from .methods.lightr import PER_ARM_SAMPLE_KEYS, pool_stage_name

log = logging.getLogger(__name__)

QUICK = {
    "smoke_test": True,
    "max_problems": 4,
    "eval_limit": 4,
    "eval_max_new_tokens": 64,  # every answer is cut off either way: the decode is most of an eval stage
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


def stage_file(stage: Stage, stage_cfg) -> tuple[str, str]:
    """The name and the text of the config file a stage is given (in ``RUN/stages``)."""
    values = {k: v for k, v in asdict(stage_cfg).items() if v is not None}
    name = f"{stage.command}-{re.sub(r'[^A-Za-z0-9@._-]+', '-', stage.name)}.yaml"
    return name, yaml.safe_dump({stage.command: values}, sort_keys=False)


def run_stage(cfg: RunConfig, stage: Stage, stage_cfg, run: Path, quiet: bool) -> None:
    """Run one stage in its own process (so its memory, GPU memory and engines are gone
    when it ends); a failure stops the run with the stage's name and exit status."""
    name, text = stage_file(stage, stage_cfg)
    config_file = run / "stages" / name
    config_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(config_file, text)
    cmd = stage_command(cfg, stage, config_file, quiet)
    log.info("[%s] %s", stage.name, " ".join(cmd))
    code = subprocess.call(cmd, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    if code != 0:
        raise LightReasonerError(
            f"stage '{stage.name}' failed (exit status {code}; its message is above). "
            + (KILLED_HINT if code in (-9, 137) else "")
            + "Fix the cause and run the same command again: finished stages and finished work are kept."
        )


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
ARM_FIELDS = ("methods", "amateurs", *(k.section for k in KINDS.values() if k.section))
"""Run options that add arms: a finished run may take more arms later. The settings of one
arm (its method, amateur and its kind's section: ``sft``, ``cd``) are checked by the arm (``arm.yaml``)."""
ARM_FILE = "arm.yaml"


ENGINE_KEYS = ("tensor_parallel_size", "gpu_memory_utilization", "max_lora_rank")
NOT_RESULTS = {
    "": ("eval_batch_size", "estimate"),
    "sample": ("batch_size", "score_batch_size", *ENGINE_KEYS),
    "eval": ("batch_size", *ENGINE_KEYS),
    **{k.section: k.not_results for k in KINDS.values() if k.section},
}
"""Options (top level, or keys of a section) that change how fast a stage runs or how it uses
the hardware, not what it computes: a run resumes with other values. Training batch sizes are
not among them (they set the global batch). An arm kind's own section says its own (``ArmKind.not_results``)."""


def results_settings(settings: dict) -> dict:
    """A run's settings without the options in :data:`NOT_RESULTS`."""
    out = {k: v for k, v in settings.items() if k not in NOT_RESULTS[""]}
    for name, keys in NOT_RESULTS.items():
        if name and isinstance(out.get(name), dict):
            out[name] = {k: v for k, v in out[name].items() if k not in keys}
    return out


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
            check_same_settings(
                yaml.safe_load(path.read_text()),
                now,
                f"{arm.dir} holds the arm {arm.id!r} made with other settings",
                "delete that folder to run the arm again",
                values=True,
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
        check_same_settings(
            results_settings(before),
            results_settings(resolved),
            f"{run} holds a run with other settings",
            "use another --out, give the run's own settings (its config.yaml) with --config, "
            "or delete the folder to start again",
            ignore=LAUNCH_FIELDS + ARM_FIELDS,
            values=True,
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


def plan_stages(configs: dict) -> list[tuple[Stage, object]]:
    """Every stage in order, with its config: the baseline and the amateurs' evaluations,
    then each arm's stages as its kind plans them; a shared stage an arm needs (a pool of
    trajectories) comes once, before the first arm that needs it."""
    stages: list[tuple[Stage, object]] = [
        (Stage("baseline evaluation", "eval", summary_exists(configs["baseline"].out)), configs["baseline"])
    ]
    for tag, ev in configs["amateurs"].items():
        stages.append((Stage(f"amateur evaluation ({tag})", "eval", summary_exists(ev.out)), ev))
    planned = {stage.name for stage, _ in stages}
    for entry in configs["arms"].values():
        for stage, stage_cfg in kind_of(entry["arm"].method).stages(entry, configs):
            if stage.arm is None and stage.name in planned:
                continue
            planned.add(stage.name)
            stages.append((stage, stage_cfg))
    return stages


def _where(cfg: RunConfig) -> dict:
    """The device, the dtype ``--dtype`` resolves to there, and the process count."""
    from .models import dtype_name, resolve_device, resolve_dtype

    device = resolve_device(cfg.device)
    dtype = dtype_name(resolve_dtype(cfg.dtype, device))
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
    context = 200 + cfg.eval_max_new_tokens // 2
    wide = estimate.widened(pending + quick_stages)
    costs = estimate.measure_in_subprocess(models, context, cfg.dtype, cfg.device, budget, wide)
    ahead = estimate.estimate_run(cfg, configs, pending, costs)
    left = estimate.estimate_run(cfg, configs, pending, costs, left=True)  # a resumed stage's rest
    total = sum(left.values())
    log.info("expected time per stage on this machine:\n%s", estimate.table(ahead, left=left))
    if total > 3600 and not cfg.smoke_test:
        q = sum(estimate.estimate_run(quick, stage_configs(quick), quick_stages, costs).values())
        log.warning(
            "%s should take about %s here (more than an hour); `lightreasoner run --quick` checks "
            "every stage in about %s. Stop it with Ctrl-C at any time: the same command resumes it.",
            "this run" if total > sum(ahead.values()) - 0.5 else "what is left of this run",
            hms(total),
            hms(q),
        )
    path = run / estimate.ESTIMATES_FILE
    saved = json.loads(path.read_text()) if path.exists() else {}
    atomic_write_json(path, {**{k: round(v, 1) for k, v in ahead.items()}, **saved})  # a stage keeps its first
    return ahead


def _run_locked(cfg: RunConfig, run: Path, show_progress: bool) -> dict:
    from .report import write_report

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
    plan = plan_stages(configs)
    pending = [(s, c) for s, c in plan if not s.done()]
    if cfg.estimate and os.environ.get("LIGHTREASONER_ESTIMATE", "1") != "0" and any(s.command for s, _ in pending):
        _estimate(cfg, configs, pending, run)
    timings_path = run / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    where = None
    for stage, stage_cfg in plan:
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
            else:  # a stage of the run's own process (a selection: a filter over a pool's records)
                stage.work()
        except BaseException:
            record.finish(finished=False)
            raise
        record.finish()
        # a stage resumed across sessions (machines) takes the sum of its sessions
        timings[stage.name] = provenance.stage_seconds(provenance.read(run)[stage.name])
        atomic_write_json(timings_path, timings)
        log.info("[%s] done in %.1f s", stage.name, timings[stage.name])
    # the folder may hold other arms' stages too (a study run in it): the report keeps this run's
    # (a pool's stage is planned only while an arm lacks its records: its pools count too)
    own = {stage.name for stage, _ in plan} | {pool_stage_name(tag) for tag in configs["pools"]}
    return write_report(run, cfg, configs, {k: v for k, v in timings.items() if k in own}, disjoint)
