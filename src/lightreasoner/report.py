"""The run report: ``report.md``, ``report.json`` and PNG plots in the run directory."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import yaml

from .config import RunConfig
from .evaluation.runner import display_name, load_summary, markdown_table, paired_outcomes
from .io import atomic_write_json, atomic_write_text
from .records import summary_path
from .stats import paired_difference, verdict
from .training import TRAIN_SUMMARY

PACKAGES = (
    "lightreasoner",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "math-verify",
    "reasoning-gym",
    "safetensors",
    "gguf",
)
STAGE_ORDER = ("baseline evaluation", "sampling", "fine-tuning", "merge", "tuned evaluation")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def _hms(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def _share(count: int | None, n: int) -> str:
    return "n/a" if count is None else f"{count} of {n} ({100 * count / max(1, n):.1f}%)"


def gather(run: Path, cfg: RunConfig, configs: dict, timings: dict, disjoint_checked: int) -> dict:
    """Every figure of the report, from the stages' own summaries."""
    base, tuned = load_summary(configs["baseline"].out), load_summary(configs["tuned"].out)
    samples = json.loads(summary_path(configs["sample"].out).read_text())
    train = json.loads((Path(configs["train"].output_dir) / TRAIN_SUMMARY).read_text())
    sampling_s, tuning_s = timings.get("sampling", 0.0), timings.get("fine-tuning", 0.0)
    accuracy = {
        name: {
            "baseline": base["results"][name]["accuracy"],
            "tuned": tuned["results"][name]["accuracy"],
            "delta": tuned["results"][name]["accuracy"] - base["results"][name]["accuracy"],
            "n": base["results"][name]["n"],
            "correct": {"baseline": base["results"][name]["correct"], "tuned": tuned["results"][name]["correct"]},
            "cut_off": {
                "baseline": base["results"][name].get("cut_off"),
                "tuned": tuned["results"][name].get("cut_off"),
            },
            "strict": {
                "baseline": base["results"][name].get("accuracy_strict"),
                "tuned": tuned["results"][name].get("accuracy_strict"),
            },
        }
        for name in base["results"]
        if name in tuned["results"]
    }
    pairs = paired_outcomes(configs["baseline"].out, configs["tuned"].out, list(accuracy))
    for name, a in accuracy.items():
        d = paired_difference([pairs[name]])
        a.update(ci95=d["ci95"], p_value=d["p_value"])
    avg = paired_difference(list(pairs.values()))
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_dir": str(run),
        "accuracy": accuracy,
        "average": {
            "baseline": base["average"],
            "tuned": tuned["average"],
            "delta": tuned["average"] - base["average"],
            "ci95": avg["ci95"],
            "p_value": avg["p_value"],
        },
        "efficiency": {
            "total_seconds": sampling_s + tuning_s,
            "sampling_seconds": sampling_s,
            "fine_tuning_seconds": tuning_s,
            "sampled_problems": samples["problems"],
            "tuned_tokens": train["tuned_tokens"],
            "sft_tokens_same_trajectories": samples["trajectory_tokens"],
            "optimizer_steps": train["optimizer_steps"],
            "train_loss": train["train_loss"],
        },
        "selection": {
            k: samples[k]
            for k in (
                "problems",
                "trajectory_tokens",
                "scored_steps",
                "selected_steps",
                "selected_per_problem",
                "selected_share",
                "kl_quantiles",
            )
        },
        "kl_histogram": samples["kl_histogram"],
        "beta": samples["config"]["beta"],
        "eval_max_new_tokens": configs["baseline"].max_new_tokens,
        "stage_seconds": {s: timings[s] for s in STAGE_ORDER if s in timings},
        "generated_test_problems_checked_disjoint": disjoint_checked,
        "config": asdict(cfg),
        "versions": versions(),
        "tables": {"accuracy": markdown_table([base, tuned], deltas=True)},
    }


def plot(run: Path, fig: dict) -> list[str]:
    """accuracy.png, kl_histogram.png, stage_times.png; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(fig["accuracy"])
    labels = [display_name(n) for n in names] + ["AVG."]
    before = [fig["accuracy"][n]["baseline"] for n in names] + [fig["average"]["baseline"]]
    after = [fig["accuracy"][n]["tuned"] for n in names] + [fig["average"]["tuned"]]
    f, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(labels) + 2), 4))
    x = range(len(labels))
    w = 0.38
    b1 = ax.bar([i - w / 2 for i in x], before, w, label="Baseline", color="#9aa5b1")
    b2 = ax.bar([i + w / 2 for i in x], after, w, label="+ LightR", color="#2f6fb0")
    ax.bar_label(b1, fmt="%.1f", fontsize=8)
    ax.bar_label(b2, fmt="%.1f", fontsize=8)
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("zero-shot pass@1 (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Accuracy before and after LightReasoner")
    ax.legend(frameon=False)
    f.tight_layout()
    f.savefig(run / "accuracy.png", dpi=150)
    plt.close(f)

    hist, beta = fig["kl_histogram"], fig["beta"]
    f, ax = plt.subplots(figsize=(6, 3.8))
    if hist["counts"]:
        edges = hist["edges"]
        ax.bar(
            edges[:-1],
            hist["counts"],
            width=[b - a for a, b in zip(edges[:-1], edges[1:])],
            align="edge",
            color="#2f6fb0",
            edgecolor="white",
            linewidth=0.3,
        )
    if isinstance(beta, (int, float)) and beta > float("-inf"):
        ax.axvline(beta, color="#c0392b", linestyle="--", label=f"β = {beta:g}")
    share = fig["selection"]["selected_share"]
    ax.set_title(f"Per-step KL(expert ‖ amateur): {100 * share:.1f}% of steps selected")
    ax.set_xlabel("KL divergence (nats)")
    ax.set_yscale("log")
    ax.set_ylabel("steps (log scale)")
    ax.legend(frameon=False)
    f.tight_layout()
    f.savefig(run / "kl_histogram.png", dpi=150)
    plt.close(f)

    stages = list(fig["stage_seconds"])
    f, ax = plt.subplots(figsize=(6, 0.45 * len(stages) + 1.2))
    secs = [fig["stage_seconds"][s] / 60 for s in stages]
    bars = ax.barh(stages, secs, color="#2f6fb0")
    ax.bar_label(bars, labels=[_hms(60 * s) for s in secs], fontsize=8, padding=3)
    ax.invert_yaxis()
    ax.set_xlabel("minutes")
    ax.set_xlim(0, max(secs + [0.1]) * 1.3)
    ax.set_title("Time per stage")
    f.tight_layout()
    f.savefig(run / "stage_times.png", dpi=150)
    plt.close(f)
    return ["accuracy.png", "kl_histogram.png", "stage_times.png"]


def _strict_lines(fig: dict) -> list[str]:
    """Accuracy by the strict grader, where it differs from the table's (toolkit) figures."""
    differ = [
        (n, a)
        for n, a in fig["accuracy"].items()
        if a["strict"]["baseline"] is not None
        and (a["strict"]["baseline"] != a["baseline"] or a["strict"]["tuned"] != a["tuned"])
    ]
    if not differ:
        return []
    return [
        "With the strict grader (the same extraction, correct equivalence; `--grader strict`), baseline → tuned: "
        + ", ".join(f"{display_name(n)} {a['strict']['baseline']:.1f} → {a['strict']['tuned']:.1f}" for n, a in differ)
        + ".",
        "",
    ]


def markdown(fig: dict) -> str:
    eff, sel, cfg = fig["efficiency"], fig["selection"], fig["config"]
    q = sel["kl_quantiles"]
    lines = [
        "# LightReasoner run report",
        "",
        f"Run directory `{fig['run_dir']}`, written {fig['created']}.",
        f"Expert `{cfg['expert']}`, amateur `{cfg['amateur']}`; training problems `{cfg['data']}` "
        f"({eff['sampled_problems']} sampled).",
        "",
        "## Accuracy (zero-shot pass@1, %)",
        "",
        fig["tables"]["accuracy"],
        "",
        "Correct answers (baseline → tuned, of the test problems): "
        + ", ".join(
            f"{display_name(n)} {a['correct']['baseline']} → {a['correct']['tuned']} of {a['n']}"
            for n, a in fig["accuracy"].items()
        )
        + f". One problem is worth {100 / max(1, min(a['n'] for a in fig['accuracy'].values())):.1f} points "
        "on the smallest benchmark.",
        "",
        *_strict_lines(fig),
        "Differences, tuned − baseline, paired on the same problems (95% CI: paired bootstrap, 10,000 resamples; "
        "p: exact McNemar): "
        + "; ".join(
            f"{name} {d['delta']:+.1f} points [{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}], p = {d['p_value']:.3g}, "
            f"{verdict(d['p_value'])}"
            for name, d in [*((display_name(n), a) for n, a in fig["accuracy"].items()), ("AVG.", fig["average"])]
        )
        + ".",
        "",
        f"Completions cut off at the {fig['eval_max_new_tokens']}-token budget before the model ended its answer "
        "(baseline, tuned): "
        + ", ".join(
            f"{display_name(n)} {_share(a['cut_off']['baseline'], a['n'])}, {_share(a['cut_off']['tuned'], a['n'])}"
            for n, a in fig["accuracy"].items()
        )
        + ".",
    ]
    if fig["generated_test_problems_checked_disjoint"]:
        lines.append(
            f"The {fig['generated_test_problems_checked_disjoint']} generated test problems were checked "
            "to share no question with the training problems."
        )
    lines += [
        "",
        "![accuracy](accuracy.png)",
        "",
        "## Efficiency",
        "",
        "| Method | Total Time | Sampling | Fine-tuning | Sampled Problems | Tuned Tokens | Average Gain |",
        "|---|---|---|---|---|---|---|",
        f"| + LightR | {_hms(eff['total_seconds'])} | {_hms(eff['sampling_seconds'])} | "
        f"{_hms(eff['fine_tuning_seconds'])} | {eff['sampled_problems']} | {eff['tuned_tokens']:,} | "
        f"{fig['average']['delta']:+.1f} |",
        "",
        f"Tuned tokens are the soft-label records trained on (next-token predictions that receive a loss). "
        f"SFT on the same {eff['sampled_problems']} trajectories would tune all of their "
        f"{eff['sft_tokens_same_trajectories']:,} tokens "
        f"({eff['sft_tokens_same_trajectories'] / max(1, eff['tuned_tokens']):.1f}x more). "
        f"Fine-tuning: {eff['optimizer_steps']} optimizer steps, mean loss {eff['train_loss']:.4f}.",
        "",
        "## Step selection",
        "",
        "| Problems | Trajectory tokens | Scored steps | Selected steps | Selected / problem | Share selected |",
        "|---|---|---|---|---|---|",
        f"| {sel['problems']} | {sel['trajectory_tokens']:,} | {sel['scored_steps']:,} | {sel['selected_steps']:,} | "
        f"{sel['selected_per_problem']:.1f} | {100 * sel['selected_share']:.1f}% |",
        "",
        "KL quantiles (nats): " + ", ".join(f"{k} {v:.3f}" for k, v in q.items()) + f"; β = {fig['beta']}.",
        "",
        "![KL histogram](kl_histogram.png)",
        "",
        "## Time per stage",
        "",
        "| Stage | Time |",
        "|---|---|",
        *[f"| {s} | {_hms(t)} |" for s, t in fig["stage_seconds"].items()],
        f"| **total** | {_hms(sum(fig['stage_seconds'].values()))} |",
        "",
        "![time per stage](stage_times.png)",
        "",
        "## Configuration",
        "",
        "```yaml",
        yaml.safe_dump(cfg, sort_keys=False).rstrip(),
        "```",
        "",
        "## Versions",
        "",
        "| Package | Version |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in fig["versions"].items()],
        "",
    ]
    return "\n".join(lines)


def write_report(run: Path, cfg: RunConfig, configs: dict, timings: dict, disjoint_checked: int = 0) -> dict:
    """``configs``: the stage configs of :func:`lightreasoner.pipeline.stage_configs` (where outputs are)."""
    fig = gather(run, cfg, configs, timings, disjoint_checked)
    fig["plots"] = plot(run, fig)
    atomic_write_json(run / "report.json", fig)
    atomic_write_text(run / "report.md", markdown(fig))
    return fig
