"""The ``lightreasoner`` command: one thin function per subcommand.

Every option comes from a stage's config dataclass (``config.py``); flags are generated
from its fields, so ``--help``, YAML keys and the docs always agree.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable

from . import __version__
from .config import (
    SMOKE_TEST_NOTE,
    EffectConfig,
    EvalConfig,
    MergeConfig,
    RunConfig,
    SampleConfig,
    SFTConfig,
    TrainConfig,
    build,
    read_yaml,
    section,
)
from .errors import LightReasonerError
from .io import friendly_os_errors

STAGES = ("sample", "train", "sft", "merge", "effect", "eval", "run")
TRAINER_STAGES = ("train", "sft")  # these also take any transformers.TrainingArguments field as a flag


def add_config_flags(parser: argparse.ArgumentParser, cls: type, shown: dict | None = None) -> None:
    """One flag per dataclass field (``--no-x`` for booleans); defaults shown, not applied
    (``shown``: defaults that replace the dataclass's in the help, as a default config's)."""
    parser.add_argument("--config", help="YAML file with options (flags override it)")
    for f in dataclasses.fields(cls):
        if f.type == "dict":
            continue  # sections: YAML only
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        default = (shown or {}).get(f.name, default)
        help_ = f.metadata.get("help", "")
        help_ += " (required)" if f.metadata.get("required") else f" (default: {default})"
        if f.type == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=help_)


def load_config(cls: type, args: argparse.Namespace, stage: str):
    names = {f.name for f in dataclasses.fields(cls)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    file_values = section(read_yaml(args.config), stage, STAGES) if args.config else None
    extra = getattr(args, "trainer_flags", [])
    return build(cls, file_values, flags, source=args.config or "config", extra_flags=extra)


def cmd_check_pair(args: argparse.Namespace) -> int:
    from .models import compare_tokenizers, load_tokenizer

    report = compare_tokenizers(
        load_tokenizer(args.expert, args.trust_remote_code), load_tokenizer(args.amateur, args.trust_remote_code)
    )
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def cmd_sample(args: argparse.Namespace) -> int:
    from .sampling import sample

    cfg = load_config(SampleConfig, args, "sample")
    summary = sample(cfg, show_progress=not args.quiet)
    if not _is_main():
        return 0
    _print_summary(
        summary,
        (
            "problems",
            "trajectory_tokens",
            "selected_steps",
            "selected_per_problem",
            "kl_quantiles",
            "generation_seconds",
            "scoring_seconds",
        ),
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    cfg = load_config(TrainConfig, args, "train")
    summary = train(cfg, show_progress=not args.quiet)
    if not _is_main():
        return 0
    _print_summary(summary, ("records", "tuned_tokens", "optimizer_steps", "train_loss", "seconds"))
    print(f"adapter saved in {cfg.output_dir}")
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from .sft import sft

    cfg = load_config(SFTConfig, args, "sft")
    summary = sft(cfg, show_progress=not args.quiet)
    if not _is_main():
        return 0
    keys = ("problems_attempted", "sampled_problems", "samples", "acceptance_rate", "kept_solutions")
    _print_summary(summary, (*keys, "tuned_tokens", "sampling_seconds", "fine_tuning_seconds"))
    print(f"solutions.jsonl, adapter and sft_summary.json in {cfg.output_dir}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .merge import merge

    out = merge(load_config(MergeConfig, args, "merge"))
    print(f"merged model saved in {out}")
    return 0


def cmd_effect(args: argparse.Namespace) -> int:
    from .precision import run_effect

    fig = run_effect(load_config(EffectConfig, args, "effect"))
    print(
        f"adapter changes the argmax at {fig['changed_fp32']} of {fig['positions']} positions in float32; "
        f"{fig['path']} base differs from float32 at {fig['floor']} (the noise floor); "
        f"{fig['path']} reproduces {fig['reproduced']} of the {fig['changed_fp32']} changes"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation.runner import evaluate
    from .report.summaries import markdown_table

    cfg = load_config(EvalConfig, args, "eval")
    summary = evaluate(cfg, show_progress=not args.quiet)
    if not _is_main():
        return 0
    print(markdown_table([summary]))
    print(f"per-problem results, summary.json and results.md in {cfg.out}")
    return 0


def cmd_grade(args: argparse.Namespace) -> int:
    from .evaluation.runner import grade_file

    r = grade_file(args.file, args.benchmark, args.out, args.grader)
    print(f"{args.benchmark}: {r['correct']}/{r['n']} correct ({r['accuracy']:.1f}%, {args.grader} grader)")
    print(f"graded lines written to {args.out or args.file}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .report.summaries import load_summary, markdown_table, significance_table

    summaries = [load_summary(r) for r in args.runs]
    print(markdown_table(summaries, deltas=True))
    if len(args.runs) > 1:
        print("\nPaired on the same problems; 95% CI: paired bootstrap, 10,000 resamples; p: exact McNemar.\n")
        print(significance_table(summaries, args.runs))
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from .report import view

    print(f"written: {view(args.paths, args.out)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import load_run_config, run_experiment

    names = {f.name for f in dataclasses.fields(RunConfig)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    cfg = load_run_config(args.config, flags, args.quick)
    fig = run_experiment(cfg, show_progress=not args.quiet)
    print(fig["tables"]["accuracy"])
    print("\n".join(["", *fig["verdicts"]]))
    print("\nstage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in fig["stage_seconds"].items()))
    print(f"report: {cfg.out}/report.md")
    if cfg.smoke_test:
        print(f"\n{SMOKE_TEST_NOTE}")
    return 0


def _is_main() -> bool:
    """Only the main process of a launched run prints results (the others return quietly)."""
    from .distributed import is_main

    return is_main()


def _print_summary(summary: dict, keys: tuple[str, ...]) -> None:
    for k in keys:
        v = summary.get(k)
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b:.4g}" for a, b in v.items())
        elif isinstance(v, float):
            v = f"{v:.4g}"
        print(f"{k}: {v}")


def _default_run_values() -> dict:
    """The top-level values of the packaged default experiment, for ``run --help``."""
    from .config import default_config

    return {k: v for k, v in default_config().items() if not isinstance(v, dict)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightreasoner", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"lightreasoner {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(
        name: str, fn: Callable, help_: str, cls: type | None = None, shown: dict | None = None
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        if cls is not None:
            add_config_flags(p, cls, shown)
        p.set_defaults(fn=fn)
        return p

    p = add("check-pair", cmd_check_pair, "compare the expert's and amateur's tokenizers")
    p.add_argument("--expert", required=True)
    p.add_argument("--amateur", required=True)
    p.add_argument("--trust-remote-code", action="store_true")
    add("sample", cmd_sample, "stage 1: expert trajectories -> contrastive soft-label records", SampleConfig)
    add("train", cmd_train, "stage 2: LoRA fine-tuning of the expert on soft labels", TrainConfig)
    add(
        "sft",
        cmd_sft,
        "baseline: rejection-sampling SFT (sample solutions, keep the correct ones, LoRA-tune on them)",
        SFTConfig,
    )
    add("merge", cmd_merge, "merge a LoRA adapter into its base model", MergeConfig)
    add(
        "effect",
        cmd_effect,
        "how many predictions an adapter changes in float32, against bf16 rounding (teacher-forced)",
        EffectConfig,
    )
    add("eval", cmd_eval, "zero-shot pass@1 on math benchmarks, graded like the Qwen2.5-Math toolkit", EvalConfig)
    p = add(
        "run",
        cmd_run,
        "the whole experiment or study: evaluate, sample, fine-tune, evaluate every arm, report "
        "(without --config: the offline default experiment, configs/default.yaml, whose values the "
        "defaults below show)",
        RunConfig,
        _default_run_values(),
    )
    p.add_argument("--quick", action="store_true", help="a few problems and short generations: a smoke test")
    p = add("grade", cmd_grade, "re-grade saved completions (lines with completion and gold)")
    p.add_argument("file", help="JSONL file, e.g. an earlier eval's <benchmark>.jsonl")
    p.add_argument("--benchmark", required=True, help="benchmark whose answer rules apply")
    p.add_argument("--out", help="write here instead of rewriting FILE")
    p.add_argument(
        "--grader",
        choices=("toolkit", "strict"),
        default="toolkit",
        help="toolkit: the Qwen2.5-Math toolkit's verdicts (comparable with the paper); strict: the same "
        "extraction, correct equivalence (see eval --grader)",
    )
    p = add("compare", cmd_compare, "side-by-side table of evaluation runs, with deltas against the first")
    p.add_argument("runs", nargs="+", help="eval output folders (or their summary.json)")
    p = add(
        "view",
        cmd_view,
        "write a self-contained HTML page of a run folder, a samples file, an evaluation folder or two of them",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="run folder, samples .jsonl, or one or two eval folders")
    p.add_argument("--out", help="where to write the page (default: report.html in the folder, X.html beside X.jsonl)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in TRAINER_STAGES:
        parser.parse_args(argv)  # the usual "unrecognized arguments" message and exit
    args.trainer_flags = extra  # other TrainingArguments fields (train, sft)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        with friendly_os_errors(args.command):
            return args.fn(args)
    except LightReasonerError as e:
        print(f"lightreasoner {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
