"""The figures of the run report (``report.json``) and ``report.md``.

Tables in the paper's shapes: main results (a row per arm), every difference from the
baseline with its 95% CI and McNemar p-value, efficiency (every trained arm), ablations
and the expertise gap (when the run has them).
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import yaml

from .. import provenance
from ..config import SMOKE_TEST_NOTE, RunConfig
from ..methods import KINDS, METHODS, kind_of
from ..records import summary_path
from ..stats import bootstrap_ci, paired_difference, verdict
from .diagnostics import arm_diagnostics, markdown_lines
from .summaries import display_name, load_summary, markdown_table, paired_outcomes, significance_table

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
ABLATIONS = tuple(KINDS["lightr"].methods)
"""LightReasoner and its ablations, as the ablation table and plot list them."""


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def hardware(cfg: RunConfig) -> dict[str, str]:
    """Where the report was written: the device and the dtype that ``--dtype`` resolves to
    there (``auto`` is bf16 on CPUs with native bf16 and fp32 on others), and the processor."""
    from ..models import dtype_name, resolve_device, resolve_dtype

    device = resolve_device(cfg.device)
    dtype = dtype_name(resolve_dtype(cfg.dtype, device))
    out = {"device": str(device), "dtype": dtype, "cpu": provenance.cpu_model()}
    if device.type == "cuda":
        import torch

        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def _estimates(run: Path) -> dict[str, float]:
    path = Path(run) / "estimates.json"  # written by the run before its stages (lightreasoner.estimate)
    return json.loads(path.read_text()) if path.exists() else {}


def _estimate(fig: dict, stage: str, actual: float) -> str:
    est = fig.get("stage_estimates", {}).get(stage)
    if est is None:
        return "–"
    return f"{hms(est)} ({100 * (actual - est) / est:+.0f}%)" if est > 0 else hms(est)


def where_ran(sessions: list[dict]) -> str:
    """Where a stage ran, one ``; ``-separated entry per session (``RUN/provenance.json``)."""
    out = []
    for x in sessions:
        state = "" if x.get("finished") else ", interrupted"
        out.append(
            f"{x['cpu']}, {x['device']} {x['dtype']}, {x['processes']} × {x['threads']} threads, "
            f"commit {x['commit'][:10]}{'+dirty' if x['commit'].endswith('+dirty') else ''}"
            f" ({hms(x.get('seconds') or 0)}{state})"
        )
    return "; ".join(out) or "not recorded"


def hms(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def _share(count: int | None, n: int) -> str:
    return "n/a" if count is None else f"{count} of {n} ({100 * count / max(1, n):.1f}%)"


def _ci(d: dict) -> str:
    return f"{d['delta']:+.1f} [{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}]"


def _results(summary: dict) -> dict:
    return {
        name: {k: r.get(k) for k in ("n", "correct", "accuracy", "accuracy_strict", "cut_off")}
        for name, r in summary["results"].items()
    }


def versus_baseline(baseline: str | Path, other: str | Path, names: list[str]) -> tuple[dict, dict]:
    """Per benchmark and on the average: paired difference (points), 95% CI, McNemar p."""
    pairs = paired_outcomes(baseline, other, names)
    per = {name: paired_difference([pairs[name]]) for name in names}
    return per, paired_difference(list(pairs.values()))


def accuracy_ci(folder: str | Path, names: list[str]) -> dict:
    """95% bootstrap interval of each benchmark's accuracy and of their average (points)."""
    own = paired_outcomes(folder, folder, names)
    groups = {name: ([False] * len(v), v) for name, (v, _) in own.items()}
    out = {name: list(bootstrap_ci([g])) for name, g in groups.items()}
    out["AVG."] = list(bootstrap_ci(list(groups.values())))
    return out


def efficiency(entry: dict, arm_fig: dict) -> dict | None:
    """Total time = sampling + fine-tuning (seconds inside the stages, model loading excluded),
    sampled problems and tuned tokens of a trained arm (its kind's figures); ``None``: not trained."""
    out = kind_of(entry["arm"].method).efficiency(entry)
    if out is None:
        return None
    return {
        "total_seconds": out["sampling_seconds"] + out["fine_tuning_seconds"],
        **out,
        "average_gain": arm_fig["average"]["delta"],
        "average_gain_ci95": arm_fig["average"]["ci95"],
    }


def versus_lightr(arms: dict, configs: dict, names: list[str]) -> None:
    """Each ablation variant against full LightReasoner on the same problems (the ablation's
    own question: does removing the component lower accuracy?): the variant's average minus
    LightR's (points), its 95% CI, the McNemar p and the problems only one of them solves,
    as ``arms[variant]["versus_lightr"]``."""
    if "lightr" not in arms:
        return
    lightr = configs["arms"]["lightr"]["arm"].eval
    for a_id in ABLATIONS:
        if a_id == "lightr" or a_id not in arms:
            continue
        _, d = versus_baseline(lightr, configs["arms"][a_id]["arm"].eval, names)
        arms[a_id]["versus_lightr"] = {
            **{k: d[k] for k in ("delta", "ci95", "p_value", "n")},
            "lightr_only": d["only_first"],
            "variant_only": d["only_second"],
        }


def gather(run: Path, cfg: RunConfig, configs: dict, timings: dict, disjoint_checked: int) -> dict:
    """Every figure of the report, from the stages' own summaries and per-problem files."""
    base_dir = configs["baseline"].out
    base = load_summary(base_dir)
    names = list(base["results"])
    arms: dict[str, dict] = {}
    summaries = [base]
    for arm_id, entry in configs["arms"].items():
        arm = entry["arm"]
        s = load_summary(arm.eval)
        summaries.append(s)
        per, avg = versus_baseline(base_dir, arm.eval, names)
        results = _results(s)
        for name in names:
            results[name].update(
                delta=per[name]["delta"],
                ci95=per[name]["ci95"],
                p_value=per[name]["p_value"],
                gained=per[name]["only_second"],  # wrong in the baseline, right here
                lost=per[name]["only_first"],
            )
        arms[arm_id] = {
            "label": arm.label,
            "method": arm.method,
            "amateur": arm.amateur,
            "folder": str(arm.dir),
            "eval": str(arm.eval),
            "results": results,
            "average": {
                "accuracy": s["average"],
                **{k: avg[k] for k in ("delta", "ci95", "p_value", "n")},
                "gained": avg["only_second"],
                "lost": avg["only_first"],
            },
            "accuracy_ci95": accuracy_ci(arm.eval, names),
        }
        arms[arm_id]["efficiency"] = efficiency(entry, arms[arm_id])
        arms[arm_id].update(arm_diagnostics(entry, arms[arm_id], base_dir, names))
        if "train" in entry:
            samples = json.loads(summary_path(arm.samples).read_text())
            arms[arm_id]["selection"] = {
                k: samples[k]
                for k in (
                    "problems",
                    "trajectory_tokens",
                    "scored_steps",
                    "selected_steps",
                    "selected_per_problem",
                    "selected_share",
                    "kl_quantiles",
                    "kl_histogram",
                )
            }
            arms[arm_id]["selection"]["beta"] = entry["beta"] if "beta" in entry else samples["config"]["beta"]
    versus_lightr(arms, configs, names)
    amateurs = {}
    for tag, ev in configs["amateurs"].items():
        s = load_summary(ev.out)
        gain_arm = next(
            (a for a, e in configs["arms"].items() if e["arm"].method == "lightr" and e["arm"].amateur == ev.model),
            None,
        )
        amateurs[tag] = {
            "model": ev.model,
            "results": _results(s),
            "average": s["average"],
            "perf_gap": base["average"] - s["average"],
            "lightr_arm": gain_arm,
            "gain": arms[gain_arm]["average"] if gain_arm else None,
        }
    eval_dirs = [base_dir] + [configs["arms"][a]["arm"].eval for a in arms]
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_dir": str(run),
        "benchmarks": names,
        "baseline": {
            "eval": str(base_dir),
            "results": _results(base),
            "average": base["average"],
            "accuracy_ci95": accuracy_ci(base_dir, names),
        },
        "arms": arms,
        "amateurs": amateurs,
        "eval_max_new_tokens": configs["baseline"].max_new_tokens,
        "stage_seconds": dict(timings),
        "stage_provenance": {k: v for k, v in provenance.read(run).items() if k in timings},
        "stage_estimates": {k: v for k, v in _estimates(run).items() if k in timings},
        "generated_test_problems_checked_disjoint": disjoint_checked,
        "config": asdict(cfg),
        "versions": versions(),
        "hardware": hardware(cfg),
        "tables": {
            "accuracy": markdown_table(summaries, deltas=True),
            "significance": significance_table(summaries, eval_dirs),
        },
    }


def _strict_lines(fig: dict) -> list[str]:
    """Accuracy by the strict grader, where it differs from the table's (toolkit) figures."""
    rows = [("Baseline", fig["baseline"]["results"])] + [(a["label"], a["results"]) for a in fig["arms"].values()]
    differ = [
        f"{label}: {display_name(n)} {r['accuracy_strict']:.1f}"
        for label, results in rows
        for n, r in results.items()
        if r.get("accuracy_strict") is not None and r["accuracy_strict"] != r["accuracy"]
    ]
    if not differ:
        return []
    return [
        "Where the strict grader (the same extraction, correct equivalence; `--grader strict`) differs: "
        + "; ".join(differ)
        + ".",
        "",
    ]


def _discordant_lines(fig: dict) -> list[str]:
    """Problems each arm gained (wrong in the baseline, right in the arm) and lost: the
    discordant problems the McNemar test counts."""
    if not fig["arms"] or "gained" not in next(iter(fig["arms"].values()))["average"]:
        return []
    several = len(fig["benchmarks"]) > 1

    def counts(a: dict) -> str:
        avg = a["average"]
        per = ", ".join(
            f"{display_name(n)} {a['results'][n]['gained']} / {a['results'][n]['lost']}" for n in fig["benchmarks"]
        )
        return f"{a['label']} {avg['gained']} / {avg['lost']}" + (f" ({per})" if several else "")

    return [
        "Problems gained / lost against the baseline (right in one, wrong in the other: the problems McNemar "
        "counts): " + "; ".join(counts(a) for a in fig["arms"].values()) + ".",
        "",
    ]


def efficiency_table(fig: dict) -> str:
    lines = [
        "| Method | Total Time | Sampling | Fine-tuning | Sampled Problems | Tuned Tokens | Average Gain [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in fig["arms"].values():
        e = a["efficiency"]
        if e is None:
            continue
        problems = str(e["sampled_problems"])
        if e["problems_attempted"] != e["sampled_problems"]:
            problems += f" (of {e['problems_attempted']} attempted)"
        lines.append(
            f"| {a['label']} | {hms(e['total_seconds'])} | {hms(e['sampling_seconds'])} | "
            f"{hms(e['fine_tuning_seconds'])} | {problems} | {e['tuned_tokens']:,} | {_ci(a['average'])} |"
        )
    return "\n".join(lines)


def ablation_table(fig: dict) -> str:
    names = fig["benchmarks"]
    head = (
        "| Variant | Select | Contrast | "
        + " | ".join(display_name(n) for n in names)
        + " | AVG. | Δ [95% CI] | p | Δ from LightR [95% CI] | p |"
    )
    lines = [head, "|" + "---|" * (len(names) + 8)]
    lines.append(
        "| Baseline | – | – | "
        + " | ".join(f"{fig['baseline']['results'][n]['accuracy']:.1f}" for n in names)
        + f" | {fig['baseline']['average']:.1f} | | | | |"
    )
    for a_id in ABLATIONS:
        a = fig["arms"].get(a_id)
        if a is None:
            continue
        variant = METHODS[a_id].options
        select, contrast = variant.get("select", True), variant.get("contrast", True)
        lines.append(
            f"| {a['label']} | {'✓' if select else '✗'} | {'✓' if contrast else '✗'} | "
            + " | ".join(f"{a['results'][n]['accuracy']:.1f}" for n in names)
            + f" | {a['average']['accuracy']:.1f} | {_ci(a['average'])} | {a['average']['p_value']:.3g} | "
            + (f"{_ci(v)} | {v['p_value']:.3g} |" if (v := a.get("versus_lightr")) else "– | – |")
        )
    return "\n".join(lines)


def ablation_lines(fig: dict) -> list[str]:
    """One sentence per ablation variant: how it compares with full LightReasoner."""
    out = []
    for a_id in ABLATIONS:
        v = fig["arms"].get(a_id, {}).get("versus_lightr")
        if v is None:
            continue
        out.append(
            f"- {fig['arms'][a_id]['label']} against + LightR: AVG. {_ci(v)} points, p = {v['p_value']:.3g}, "
            f"{verdict(v['p_value'])}; {v['lightr_only']} problems only LightR solves, "
            f"{v['variant_only']} only the variant."
        )
    if out:
        out += [
            "",
            "Δ from LightR: the variant's accuracy minus full LightReasoner's on the same problems (paired "
            "bootstrap CI, exact McNemar p). Each p stands alone: the run makes several comparisons and none "
            "is corrected for that.",
        ]
    return out


def gap_table(fig: dict) -> str:
    lines = [
        "| Amateur | Amateur AVG. | Expertise gap (points) | LightR gain [95% CI] | p |",
        "|---|---|---|---|---|",
    ]
    for tag, a in fig["amateurs"].items():
        gain = f"{_ci(a['gain'])} | {a['gain']['p_value']:.3g}" if a["gain"] else "– | –"
        lines.append(f"| {tag} | {a['average']:.1f} | {a['perf_gap']:+.1f} | {gain} |")
    return "\n".join(lines)


def markdown(fig: dict) -> str:
    cfg = fig["config"]
    lines = [
        "# LightReasoner run report",
        "",
        *([f"> **Smoke test, not a result.** {SMOKE_TEST_NOTE}", ""] if cfg.get("smoke_test") else []),
        f"Run directory `{fig['run_dir']}`, written {fig['created']}.",
        f"Expert `{cfg['expert']}`, amateur `{cfg['amateur']}`; training problems `{cfg['data']}`; "
        f"arms: {', '.join(a['label'] for a in fig['arms'].values())}.",
        "",
        "## Main results (zero-shot pass@1, %; in brackets the difference from the baseline)",
        "",
        fig["tables"]["accuracy"],
        "",
        "![accuracy](accuracy.png)",
        "",
        "## Is each difference real?",
        "",
        "Every arm against the baseline on the same problems: the difference in points, its 95% confidence "
        "interval (paired bootstrap over problems, 10,000 resamples, seed 0; AVG. resamples each benchmark on "
        "its own) and the exact McNemar p-value of the discordant problems.",
        "",
        fig["tables"]["significance"],
        "",
        *[f"- {v}." for v in fig["verdicts"]],
        "",
        *_discordant_lines(fig),
        *_strict_lines(fig),
        f"Completions cut off at the {fig['eval_max_new_tokens']}-token budget before the model ended its answer: "
        + "; ".join(
            f"{label} " + ", ".join(f"{display_name(n)} {_share(r['cut_off'], r['n'])}" for n, r in results.items())
            for label, results in [("Baseline", fig["baseline"]["results"])]
            + [(a["label"], a["results"]) for a in fig["arms"].values()]
        )
        + ".",
    ]
    if fig["generated_test_problems_checked_disjoint"]:
        lines.append(
            f"The {fig['generated_test_problems_checked_disjoint']} test problems "
            f"({', '.join(display_name(n) for n in fig['benchmarks'])}) were checked to share no question with the "
            f"training problems ({cfg['data']})."
        )
    lines += markdown_lines(fig)
    if any(a["efficiency"] for a in fig["arms"].values()):
        lines += [
            "",
            "## Efficiency",
            "",
            efficiency_table(fig),
            "",
            "Total time = sampling + fine-tuning, measured inside the stages (model loading excluded). LightReasoner "
            "variants share one pass over the expert's trajectories; each is charged its full time. Sampled problems: "
            "problems whose trajectories (LightReasoner) or kept solutions (SFT) were trained on. Tuned tokens: "
            "tokens that received a loss.",
        ]
        for a in fig["arms"].values():
            note = a["efficiency"] and kind_of(a["method"]).efficiency_note(a["label"], a["efficiency"])
            lines += [note] if note else []
    if sum(a in fig["arms"] for a in ABLATIONS) > 1:
        lines += ["", "## Ablations", "", ablation_table(fig), "", *ablation_lines(fig)]
        lines += ["", "![ablations](ablations.png)"]
    if fig["amateurs"]:
        lines += [
            "",
            "## Expertise gap",
            "",
            f"Expert baseline AVG. {fig['baseline']['average']:.1f}; expertise gap = expert − amateur accuracy.",
            "",
            gap_table(fig),
            "",
        ]
        lines += ["![gain against gap](gap.png)"] if any(a["gain"] for a in fig["amateurs"].values()) else []
    sel = (fig["arms"].get("lightr") or {}).get("selection")
    if sel:
        q = sel["kl_quantiles"]
        lines += [
            "",
            "## Step selection (LightReasoner)",
            "",
            "| Problems | Trajectory tokens | Scored steps | Selected steps | Selected / problem | Share selected |",
            "|---|---|---|---|---|---|",
            f"| {sel['problems']} | {sel['trajectory_tokens']:,} | {sel['scored_steps']:,} | "
            f"{sel['selected_steps']:,} | {sel['selected_per_problem']:.1f} | {100 * sel['selected_share']:.1f}% |",
            "",
            "KL quantiles (nats): " + ", ".join(f"{k} {v:.3f}" for k, v in q.items()) + f"; β = {sel['beta']}.",
            "",
            "![KL histogram](kl_histogram.png)",
        ]
    lines += [
        "",
        "## Time per stage",
        "",
        "Each stage's time is the sum of the sessions that ran it (a run may be carried across machines, "
        "each resuming what the last one finished); where it ran is each session's processor, dtype, "
        "processes × threads and code commit.",
        "",
        "The estimate is what `run` expected before the stage's first session, from a short measurement "
        "on that machine and the stage's sizes; in brackets, how far the actual time was from it.",
        "",
        "| Stage | Time | Estimate | Where it ran |",
        "|---|---|---|---|",
        *[
            f"| {s} | {hms(t)} | {_estimate(fig, s, t)} | {where_ran(fig.get('stage_provenance', {}).get(s, []))} |"
            for s, t in fig["stage_seconds"].items()
        ],
        f"| **total** | {hms(sum(fig['stage_seconds'].values()))} | | |",
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
        "Hardware where this report was written: "
        + ", ".join(f"{k} {v}" for k, v in fig.get("hardware", {}).items())
        + f" (dtype {fig['config']['dtype']} resolves to the dtype named here).",
        "",
    ]
    return "\n".join(lines)


def verdicts(fig: dict) -> list[str]:
    """One sentence per arm: its average difference and whether it is significant."""
    return [
        f"{a['label']}: AVG. {_ci(a['average'])} points, p = {a['average']['p_value']:.3g}, "
        f"{verdict(a['average']['p_value'])}"
        for a in fig["arms"].values()
    ]


def strict_json(obj: object) -> object:
    """``obj`` with infinite and NaN floats as strings ('-inf'): JSON has no such numbers."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj
