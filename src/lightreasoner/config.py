"""One dataclass per stage, with documented defaults, and YAML loading/merging.

Precedence: dataclass default < YAML file (``--config``) < command-line flag.
A YAML file may hold one stage's keys at the top level, or sections named after
stages (``sample:``, ``train:``, ...) as a ``run`` config does.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import LightReasonerError
from .prompts import EVAL_SYSTEM_PROMPT, SAMPLING_SYSTEM_PROMPT

T = TypeVar("T")

GROUP_SIZE = 64
"""Problems per work unit of sample (see :mod:`distributed`); trajectories are decoded
``batch_size`` (16) at a time within a group, refilled as they finish."""
EVAL_GROUP_SIZE = 512
"""Problems per work unit of eval. A unit's batch empties while its longest completions
finish, and a decode step over a few sequences costs nearly as much as one over many, so
each unit pays that tail nearly in full (on a CPU, 136 questions in two units cost half as
much again as in one: docs/results.md). 512 makes most benchmark selections, the default's
400 questions among them, one unit: the same computation as one queue of every problem."""
SFT_GROUP_SIZE = 16
"""Problems per work unit of the SFT baseline's sampling (times its samples per problem)."""


def opt(default: Any, help: str, **kw) -> Any:
    """A dataclass field with its help text (shown by ``--help`` and in the docs)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelOptions:
    dtype: str = opt("auto", "auto|float32|bfloat16|float16 (auto: bf16 on GPUs that have it, else fp32)")
    device: str = opt("auto", "auto|cpu|cuda|cuda:N")
    allow_pickle: bool = opt(False, "allow loading pickle .bin weights (can run code)")
    trust_remote_code: bool = opt(False, "run model code shipped with the checkpoint")


@dataclass
class EngineOptions(ModelOptions):
    """Settings of a vLLM engine (``--backend vllm``)."""

    tensor_parallel_size: int = opt(1, "vLLM: GPUs per engine (tensor parallelism; one process)")
    gpu_memory_utilization: float = opt(None, "vLLM: share of each GPU's memory the engine may use (default: vLLM's)")
    batch_invariant: bool = opt(
        False,
        "vLLM: batch-invariant kernels (VLLM_BATCH_INVARIANT=1), so a completion does not depend on the other "
        "requests in the engine's batch (nor on the number of processes); costs throughput, needs a recent vLLM "
        "and a supported GPU",
    )


@dataclass
class SampleConfig(EngineOptions):
    expert: str = opt(None, "expert model: directory, .gguf file or hub id", required=True)
    amateur: str = opt(None, "amateur model (same tokenizer family)", required=True)
    data: str = opt(None, "problems: JSONL file, reasoning-gym:<task>, or hub dataset name[:config]", required=True)
    out: str = opt(None, "output JSONL of soft-label records", required=True)
    question_field: str = opt("question", "field holding the question in each JSONL line")
    split: str = opt("train", "dataset split (hub datasets)")
    max_problems: int = opt(None, "use only the first N problems")
    beta: float = opt(0.4, "keep steps with KL(expert||amateur) >= beta (nats); -inf keeps all")
    alpha: float = opt(0.2, "plausible tokens: p_E >= alpha * max p_E")
    max_new_tokens: int = opt(128, "trajectory length (prefix termination)")
    group_size: int = opt(
        GROUP_SIZE,
        "most problems per work unit (cut evenly): each group is generated, scored and committed on its own, "
        "so the records do not depend on the number of processes or on interruptions",
    )
    batch_size: int = opt(16, "most trajectories of a group generated together (0: the whole group, as fits in memory)")
    score_batch_size: int = opt(
        4,
        "finished trajectories of a group scored together in one teacher-forced pass (1: each alone)",
    )
    expert_scoring: str = opt(
        "generation",
        "generation: the expert's distributions are the raw logits of its own greedy decoding (it runs once); "
        "teacher-forced: a second forward pass over the finished trajectories",
    )
    backend: str = opt(
        "hf",
        "hf|vllm|auto: what decodes the expert's trajectories. vllm (GPU, optional) generates them all first, "
        "then both models score them in teacher-forced passes (vLLM gives no full-vocabulary logits); "
        "auto: vllm where it is installed, a GPU visible and it can serve the run, else hf",
    )
    skip_first_step: bool = opt(True, "skip the first generated position, as the original release does")
    contrast: bool = opt(True, "contrastive labels; --no-contrast uses the expert's own renormalised distribution")
    expert_weights: bool = opt(
        False, "records also carry the label without the contrast (expert_weights), for the ablations of a study"
    )
    system_prompt: str = opt(SAMPLING_SYSTEM_PROMPT, "system message of the chat template")
    reference_scoring: bool = opt(False, "slow validation path: one forward per prefix, as the release does")
    overwrite: bool = opt(False, "discard an existing output or unfinished run and start again")
    seed: int = opt(0, "seed for generated problem sources (reasoning-gym)")


@dataclass
class LoraOptions(ModelOptions):
    """LoRA fine-tuning settings shared by ``train`` and the ``sft`` baseline."""

    max_steps: int = opt(1000, "optimizer steps (ignored when --epochs is set)")
    epochs: float = opt(None, "train for this many epochs instead of --max-steps")
    learning_rate: float = opt(5e-5, "peak learning rate (linear decay)")
    batch_size: int = opt(8, "records per micro-batch (shared out among the processes of a launch)")
    grad_accum: int = opt(2, "gradient accumulation steps (global batch: batch size x steps, on any process count)")
    lora_r: int = opt(8, "LoRA rank")
    lora_alpha: int = opt(16, "LoRA alpha")
    lora_dropout: float = opt(0.05, "LoRA dropout")
    target_modules: str = opt("q_proj,v_proj", "comma-separated module names that get LoRA")
    save_steps: int = opt(200, "checkpoint every N steps")
    logging_steps: int = opt(10, "log every N steps")
    seed: int = opt(42, "training seed (also orders trajectories)")
    resume: bool = opt(False, "continue from the last checkpoint in --output-dir")
    trainer_args: dict = opt(
        {},
        "any other transformers.TrainingArguments field (warmup_steps, lr_scheduler_type, activation_checkpointing, "
        "deepspeed, fsdp, report_to, ...): as keys of this stage's YAML or as flags (--warmup-ratio 0.1)",
    )


@dataclass
class TrainConfig(LoraOptions):
    model: str = opt(None, "expert model to fine-tune", required=True)
    samples: str = opt(None, "soft-label records (ours or the release's JSONL)", required=True)
    output_dir: str = opt(None, "where checkpoints and the final adapter go", required=True)
    order: str = opt(
        "random",
        "random: records drawn at random each epoch, as the release does; "
        "trajectory: one trajectory's records together (faster, packed), trajectories reshuffled each epoch",
    )
    pack: bool = opt(True, "records of one trajectory in a micro-batch share one sequence (--no-pack: one each)")
    system_prompt: str = opt(SAMPLING_SYSTEM_PROMPT, "system message used to rebuild prompts of release records")


@dataclass
class SFTConfig(LoraOptions):
    """Rejection-sampling SFT: sample solutions, keep the correct ones, LoRA-tune on them."""

    model: str = opt(None, "expert model: samples the solutions and is fine-tuned", required=True)
    data: str = opt(None, "problems with gold answers: JSONL (GSM8K layout) or reasoning-gym:<task>", required=True)
    output_dir: str = opt(None, "solutions.jsonl, checkpoints, the adapter and sft_summary.json", required=True)
    question_field: str = opt("question", "field holding the question in each JSONL line")
    answer_field: str = opt("answer", "field holding the gold answer (GSM8K's '... #### N' keeps N)")
    split: str = opt("train", "dataset split (hub datasets)")
    max_problems: int = opt(None, "use only the first N problems")
    data_seed: int = opt(0, "seed for generated problem sources (reasoning-gym)")
    samples_per_problem: int = opt(4, "solutions sampled per problem")
    temperature: float = opt(0.7, "sampling temperature")
    top_p: float = opt(0.95, "nucleus sampling: smallest token set with this much probability")
    max_new_tokens: int = opt(512, "most tokens per sampled solution")
    keep_per_problem: int = opt(4, "most distinct correct solutions kept per problem")
    target_problems: int = opt(None, "stop sampling once this many problems have a kept solution")
    group_size: int = opt(
        SFT_GROUP_SIZE,
        "most problems per work unit of the sampling (each with --samples-per-problem solutions), decoded and "
        "committed on its own: the solutions do not depend on the number of processes or on interruptions",
    )
    sample_batch_size: int = opt(0, "most solutions of a group decoded together (0: the whole group, as fits)")
    system_prompt: str = opt(EVAL_SYSTEM_PROMPT, "system message: the evaluation's, so answers come boxed")
    overwrite: bool = opt(False, "discard solutions and checkpoints already in --output-dir and start again")


@dataclass
class MergeConfig(ModelOptions):
    base: str = opt(None, "base model", required=True)
    adapter: str = opt(None, "PEFT adapter directory", required=True)
    out: str = opt(None, "output model directory", required=True)


@dataclass
class EffectConfig(ModelOptions):
    """The adapter's effect on predictions against bf16 rounding (:mod:`lightreasoner.precision`)."""

    model: str = opt(None, "base model", required=True)
    adapter: str = opt(None, "PEFT adapter directory", required=True)
    completions: str = opt(
        None, "evaluation folder of the base model: its completions are teacher-forced", required=True
    )
    out: str = opt(None, "JSON file with the figures", required=True)
    problems: int = opt(24, "first N problems of the evaluation folder")
    positions: int = opt(96, "first N completion tokens of each problem")
    merged: str = opt(
        "auto",
        "the path under test: auto (the one eval --adapter takes, with either backend: merged in float32, "
        "the LoRA unmerged in bfloat16/float16), merged or unmerged",
    )
    system_prompt: str = opt(EVAL_SYSTEM_PROMPT, "system message the completions were made with")


@dataclass
class EvalConfig(EngineOptions):
    model: str = opt(None, "model to evaluate", required=True)
    adapter: str = opt(None, "optional PEFT adapter applied on top of --model")
    benchmarks: str = opt(
        "gsm8k,math,svamp,asdiv,minerva_math,olympiadbench,mmlu_stem", "comma-separated benchmark names"
    )
    data_dir: str = opt(None, "folder with <benchmark>/test.jsonl files (default: hub)")
    limit: int = opt(None, "first N problems of each benchmark")
    max_new_tokens: int = opt(1024, "generation budget per problem")
    group_size: int = opt(
        EVAL_GROUP_SIZE,
        "most problems per work unit (per benchmark, cut evenly): each group is decoded and committed on its "
        "own, so the rows do not depend on the number of processes or on interruptions",
    )
    batch_size: int = opt(
        0, "most problems of a group decoded together (0: the whole group, as fits in memory; halved on out-of-memory)"
    )
    backend: str = opt("auto", "auto|hf|vllm")
    out: str = opt(None, "output folder", required=True)
    name: str = opt(None, "row name in tables (default: the model's folder name)")
    system_prompt: str = opt(EVAL_SYSTEM_PROMPT, "system message of the chat template")
    seed: int = opt(0, "seed for generated benchmarks (reasoning-gym)")
    overwrite: bool = opt(False, "discard results already in --out (made with other settings) and start again")
    grader: str = opt(
        "toolkit",
        "toolkit: the Qwen2.5-Math toolkit's verdicts (comparable with the paper); strict: the same extraction, "
        "correct equivalence (no x100 percentages, exact integers, no article 'A' as a choice)",
    )
    max_lora_rank: int = opt(
        None, "vLLM: largest adapter rank the engine accepts (default: the adapter's r, rounded up)"
    )
    contrastive_amateur: str = opt(
        None, "decode with contrastive decoding against this amateur (O'Brien & Lewis 2023); hf backend only"
    )
    cd_alpha: float = opt(0.1, "contrastive decoding: only tokens with p_E >= cd_alpha * max p_E")
    cd_beta: float = opt(0.5, "contrastive decoding: scores (1 + cd_beta) * logit_E - cd_beta * logit_A")


SMOKE_TEST_NOTE = (
    "This is a smoke test (--quick): every stage of the run ran on its own models, on a few problems "
    "with short generations, to check that the whole pipeline works on this machine (loading, sampling, "
    "selection, fine-tuning, merging, evaluation, the adapter-effect check, the report). Its accuracies "
    "and differences are not results: a handful of problems, most answers cut off by the short budget. "
    "`lightreasoner run` (without --quick) runs the real experiment."
)
"""What a smoke test is (``--quick``): the console and the report say it first."""


@dataclass
class RunConfig(ModelOptions):
    """The whole experiment. Sections ``sample:``, ``train:`` and ``eval:`` take any option
    of that stage (paths are filled in by the run)."""

    out: str = opt("runs/default", "run directory (every stage's output, the report)")
    smoke_test: bool = opt(
        False, "a smoke test (set by --quick): every stage on a few problems; the report says it holds no results"
    )
    estimate: bool = opt(True, "before the first stage, measure this machine briefly and print each stage's time")
    expert: str = opt("embedded:Qwen2.5-Coder-1.5B-Instruct", "expert model")
    amateur: str = opt("embedded:Qwen2.5-Coder-0.5B-Instruct", "amateur model")
    data: str = opt("reasoning-gym:gsm_symbolic", "training problems (JSONL, reasoning-gym:<task>, hub dataset)")
    question_field: str = opt("question", "question field of JSONL training data")
    max_problems: int = opt(1000, "training problems sampled")
    seed: int = opt(1, "seed of generated training problems")
    benchmarks: str = opt(
        "gsm8k,math,svamp,asdiv,minerva_math,olympiadbench,mmlu_stem",
        "benchmarks for the before/after evaluation (reasoning-gym:<task> for generated test problems)",
    )
    data_dir: str = opt(None, "folder with <benchmark>/test.jsonl files")
    eval_limit: int = opt(None, "first N problems of each benchmark (generated ones: how many)")
    eval_seed: int = opt(3, "seed of generated test problems (must differ from --seed)")
    eval_max_new_tokens: int = opt(1024, "generation budget per test problem")
    eval_batch_size: int = opt(0, "most test problems decoded together (0: as many as fit in memory)")
    num_processes: int = opt(1, "processes per stage (sample, train, evaluations) started through accelerate launch")
    accelerate_config: str = opt(None, "accelerate config file for the stages (accelerate launch --config_file)")
    launch: dict = opt(
        {},
        "more `accelerate launch` options for the stages, e.g. gpu_ids, main_process_port (one node: a run "
        "across nodes is refused; configs/slurm/lightreasoner.sbatch runs the stages one by one instead)",
    )
    methods: str = opt(
        "lightr",
        "the arms: lightr, sft, lightr-no-select, lightr-no-contrast, lightr-no-select-no-contrast, cd "
        "(comma-separated or a YAML list); arms can be added to a finished run later",
    )
    amateurs: str = opt(
        None,
        "more amateurs for the expertise-gap study (comma-separated or a YAML list): each gets its own "
        "LightReasoner arm, and every amateur is evaluated on the test problems",
    )
    sample: dict = opt({}, "options for the sampling stage")
    train: dict = opt({}, "options for the fine-tuning stage (the sft arm's LoRA and optimizer settings too)")
    sft: dict = opt({}, "options of the sft arm (any option of `lightreasoner sft`)")
    cd: dict = opt({}, "options of the cd arm (cd_alpha, cd_beta)")
    eval: dict = opt({}, "options for every evaluation")
    effect_problems: int = opt(
        24, "adapter effect check: baseline completions teacher-forced per tuned arm, fp32 vs the eval dtype (0: off)"
    )
    effect_positions: int = opt(96, "adapter effect check: completion tokens per problem")

    @property
    def beta(self) -> float:
        """β of the LightReasoner arms' selection: ``sample: beta``, or sampling's default."""
        return _coerce(SampleConfig, "beta", self.sample.get("beta", SampleConfig.beta), "run config, section 'sample'")


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise LightReasonerError(f"{path}: cannot read config ({e.strerror})") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise LightReasonerError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LightReasonerError(f"{path}: expected a mapping of option: value")
    return data


def _coerce(cls: type, name: str, value: Any, where: str) -> Any:
    if value is None:
        return None
    ftype = {f.name: f.type for f in dataclasses.fields(cls)}[name]
    try:
        if "bool" in ftype:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if "int" in ftype:
            if isinstance(value, bool) or float(value) != int(value):
                raise TypeError
            return int(value)
        if "float" in ftype:
            return -math.inf if str(value).strip().lower() in ("-inf", "-infinity") else float(value)
        if "dict" in ftype:
            if not isinstance(value, dict):
                raise TypeError
            return value
        if isinstance(value, list) and "str" in ftype:
            return ",".join(str(v) for v in value)
        if isinstance(value, dict):
            raise TypeError
        return str(value)
    except (TypeError, ValueError):
        raise LightReasonerError(f"{where}: option {name!r} expects {ftype}, got {value!r}") from None


TRAINER_ARGS_OURS = {
    "output_dir": "--output-dir",
    "per_device_train_batch_size": "--batch-size",
    "gradient_accumulation_steps": "--grad-accum",
    "num_train_epochs": "--epochs",
    "bf16": "--dtype",
    "fp16": "--dtype",
    "use_cpu": "--device",
    "remove_unused_columns": None,
    "ddp_timeout": "the environment variable LIGHTREASONER_DIST_TIMEOUT (seconds; every stage's process group)",
}
"""TrainingArguments fields set from our own options (or fixed): not accepted as pass-through."""


def trainer_arg_names() -> set[str]:
    """Fields of ``transformers.TrainingArguments`` a user may set."""
    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments) if f.init}


TRAINER_ARG_ALIASES = {
    "activation_checkpointing": "gradient_checkpointing",
    "activation_checkpointing_kwargs": "gradient_checkpointing_kwargs",
}
"""New name -> old name of TrainingArguments fields renamed across the transformers versions we
support (``activation_checkpointing`` is new in 5.21; 5.21+ keep ``gradient_checkpointing`` as
a deprecated alias). Either name is accepted and the installed one is passed."""


def installed_name(name: str, known: set[str]) -> str:
    """``name`` or its alias (:data:`TRAINER_ARG_ALIASES`, either direction), whichever the
    installed ``TrainingArguments`` has; the newer name when both exist."""
    pairs = {**TRAINER_ARG_ALIASES, **{old: new for new, old in TRAINER_ARG_ALIASES.items()}}
    other = pairs.get(name)
    if other is None:
        return name
    new = name if name in TRAINER_ARG_ALIASES else other
    return new if new in known else (name if name in known else other)


def _rename_flag(token: str, known: set[str]) -> str:
    """``--activation-checkpointing[=v]`` as the installed field's flag (other tokens unchanged)."""
    if not token.startswith("--"):
        return token
    name, eq, value = token[2:].partition("=")
    field_name = installed_name(name.replace("-", "_"), known)
    if field_name == name.replace("-", "_"):
        return token
    return "--" + field_name.replace("_", "-") + eq + value


REPORT_TO_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}
"""pip packages of common ``report_to`` integrations (for the error message)."""


def check_report_to(value: Any, where: str) -> None:
    """Refuse ``report_to`` integrations whose package is missing now, not when the Trainer starts."""
    from transformers.integrations import get_available_reporting_integrations

    names = [value] if isinstance(value, str) else list(value or [])
    missing = [n for n in names if n not in ("none", "all") and n not in get_available_reporting_integrations()]
    if missing:
        install = " ".join(REPORT_TO_PACKAGES.get(n, n) for n in missing)
        raise LightReasonerError(
            f"{where}: report_to {', '.join(missing)}: not installed (pip install {install}), "
            "or remove report_to"
        )


@contextlib.contextmanager
def _environ_kept() -> Iterator[None]:
    """Undo the environment variables a ``TrainingArguments`` sets (e.g. for torch_compile)."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def parse_only_arguments() -> type:
    """A ``TrainingArguments`` that checks its fields without setting up devices: no CUDA
    context, no process group, no accelerate state (``TrainingArguments.__post_init__`` reads
    ``self.device``, whose setup calls ``torch.cuda.set_device`` and builds a ``PartialState``)."""
    import torch
    from transformers import TrainingArguments

    class ParseOnlyArguments(TrainingArguments):
        @property
        def _setup_devices(self) -> torch.device:
            self._n_gpu, self.distributed_state = 0, None
            return torch.device("cpu")

    return ParseOnlyArguments


def trainer_args(file_values: dict, flag_values: list[str], source: str, ours: Iterable[str] = ()) -> dict:
    """Typed ``TrainingArguments`` fields from YAML keys and ``--name value`` flags, checked
    by the Trainer's own parser; an unknown or reserved name is an error that names it."""
    from transformers import HfArgumentParser

    known = trainer_arg_names()
    from_file = {installed_name(k.replace("-", "_"), known): v for k, v in file_values.items()}
    flag_values = [_rename_flag(t, known) for t in flag_values]
    from_flags = [t[2:].split("=", 1)[0].replace("-", "_") for t in flag_values if t.startswith("--")]
    if flag_values and not from_flags:
        raise LightReasonerError(f"unexpected argument(s): {' '.join(flag_values)}")
    for name, where in [*((k, source) for k in from_file), *((k, "--" + k.replace("_", "-")) for k in from_flags)]:
        if name in TRAINER_ARGS_OURS:
            instead = TRAINER_ARGS_OURS[name]
            hint = f"use {instead}" if instead else "lightreasoner sets it"
            raise LightReasonerError(f"{where}: TrainingArguments field {name!r} is set by this stage ({hint})")
        if name not in known:
            close = difflib.get_close_matches(name, known | set(ours), n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise LightReasonerError(
                f"{where}: unknown option {name!r} (not an option of this stage nor a TrainingArguments field{hint})"
            )
    parser = HfArgumentParser(parse_only_arguments())
    try:
        with _environ_kept():
            if from_file:
                parser.parse_dict({"output_dir": "unused", **copy.deepcopy(from_file)})  # it fills dicts in place
            parsed = {}
            if from_flags:
                (args,) = parser.parse_args_into_dataclasses(args=["--output_dir", "unused", *flag_values])
                parsed = {k: getattr(args, k) for k in from_flags}
                parsed = {k: v.value if isinstance(v, Enum) else v for k, v in parsed.items()}  # plain YAML/JSON
    except (ValueError, TypeError, ImportError, SystemExit) as e:  # ImportError: e.g. deepspeed not installed
        where = " ".join(flag_values) if from_flags else source
        raise LightReasonerError(f"{where}: not valid TrainingArguments ({e})") from None
    values = {**from_file, **parsed}
    if "report_to" in values:
        check_report_to(values["report_to"], "--report-to" if "report_to" in from_flags else source)
    return values


def build(
    cls: type[T], file_values: dict | None, flag_values: dict, source: str = "config", extra_flags: list[str] = ()
) -> T:
    """Instantiate ``cls`` from file values overridden by flags; checks names, types, required.
    For training stages, other ``TrainingArguments`` fields (file keys or ``extra_flags``)
    go to ``trainer_args``."""
    names = {f.name for f in dataclasses.fields(cls)}
    merged: dict[str, Any] = {}
    passthrough: dict[str, Any] = {}
    for k, v in (file_values or {}).items():
        key = k.replace("-", "_")
        if key not in names and "trainer_args" in names:  # checked against TrainingArguments below
            passthrough[key] = v
            continue
        if key not in names:
            raise LightReasonerError(f"{source}: unknown option {k!r} (known: {', '.join(sorted(names))})")
        merged[key] = _coerce(cls, key, v, source)
    for k, v in flag_values.items():
        if v is not None:
            merged[k] = _coerce(cls, k, v, f"--{k.replace('_', '-')}")
    passthrough = {**merged.pop("trainer_args", {}), **passthrough}
    if passthrough or extra_flags:
        if "trainer_args" not in names:
            raise LightReasonerError(f"unknown option(s): {' '.join(extra_flags)}")
        merged["trainer_args"] = trainer_args(passthrough, list(extra_flags), source, names)
    cfg = cls(**merged)
    missing = [f.name for f in dataclasses.fields(cls) if f.metadata.get("required") and getattr(cfg, f.name) is None]
    if missing:
        flags = ", ".join("--" + m.replace("_", "-") for m in missing)
        raise LightReasonerError(f"missing required option(s): {flags} (give them as flags or in --config)")
    return cfg


def section(data: dict, stage: str, stages: tuple[str, ...]) -> dict:
    """The part of a YAML mapping meant for ``stage`` (its section, or the whole flat file)."""
    if any(s in data for s in stages):
        sec = data.get(stage) or {}
        if not isinstance(sec, dict):
            raise LightReasonerError(f"config section {stage!r} must be a mapping")
        return sec
    return data


def default_config() -> dict:
    """The packaged offline default experiment (``configs/default.yaml``)."""
    from importlib import resources

    text = resources.files("lightreasoner").joinpath("configs/default.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)
