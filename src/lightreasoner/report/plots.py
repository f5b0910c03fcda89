"""The run report's PNG plots: accuracy per arm, KL histogram, ablations, gain against
the expertise gap, time per stage."""

from __future__ import annotations

from pathlib import Path

from ..methods import KINDS, METHODS
from .diagnostics import plot_loss
from .summaries import display_name
from .tables import ABLATIONS, hms


def stage_owner(stage: str) -> tuple[str, str]:
    """``(row, kind)`` of a stage name for the time plot: the arm it belongs to ("shared"
    for the baseline, amateur evaluations and pools) and what it did."""
    legacy = {"sampling": "sampling", "selection": "selection", "fine-tuning": "fine-tuning", "merge": "merge"}
    if stage in legacy or stage == "tuned evaluation":
        return "lightr", legacy.get(stage, "evaluation")
    if ": " in stage:
        arm, what = stage.split(": ", 1)
        return arm, what
    return "shared", "sampling" if stage.startswith("trajectories") else "evaluation"


KIND_COLORS = {"sampling": "#2f6fb0", "merge": "#9aa5b1", "evaluation": "#5a9e6f"}
"""The time plot's colours of what the shared stages do; each arm kind adds its own (``ArmKind.stage_colors``)."""


def stage_colors() -> dict[str, str]:
    """The time plot's colour of each kind of stage (what it does)."""
    return {**KIND_COLORS, **{what: c for kind in KINDS.values() for what, c in kind.stage_colors.items()}}


def plot(run: Path, fig: dict) -> list[str]:
    """accuracy.png, stage_times.png, and when the run has them kl_histogram.png,
    ablations.png, gap.png; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    names = fig["benchmarks"]
    columns = [display_name(n) for n in names] + ["AVG."]
    rows = [("Baseline", fig["baseline"])] + [(a["label"], a) for a in fig["arms"].values()]
    f, ax = plt.subplots(figsize=(max(6.0, (0.9 + 0.35 * len(rows)) * len(columns) + 2), 4.2))
    width = 0.8 / len(rows)
    cmap = plt.get_cmap("tab10")
    for j, (label, r) in enumerate(rows):
        avg = r["average"]["accuracy"] if isinstance(r["average"], dict) else r["average"]
        acc = [r["results"][n]["accuracy"] for n in names] + [avg]
        ci = [r["accuracy_ci95"][n] for n in names] + [r["accuracy_ci95"]["AVG."]]
        err = [[a - lo for a, (lo, _) in zip(acc, ci)], [hi - a for a, (_, hi) in zip(acc, ci)]]
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(columns))]
        color = "#9aa5b1" if j == 0 else cmap((j - 1) % 10)
        ax.bar(xs, acc, width, yerr=err, capsize=2, label=label, color=color, error_kw={"linewidth": 0.8})
    ax.set_xticks(range(len(columns)), columns)
    ax.set_ylabel("zero-shot pass@1 (%), 95% CI")
    ax.set_ylim(0, 105)
    ax.set_title("Accuracy per arm")
    ax.legend(frameon=False, fontsize=8, ncol=2)
    f.tight_layout()
    f.savefig(run / "accuracy.png", dpi=150)
    plt.close(f)
    made.append("accuracy.png")

    lightr = fig["arms"].get("lightr")
    if lightr and lightr.get("selection"):
        sel = lightr["selection"]
        hist, beta = sel["kl_histogram"], sel["beta"]
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
            ax.legend(frameon=False)
        ax.set_title(f"Per-step KL(expert ‖ amateur): {100 * sel['selected_share']:.1f}% of steps selected")
        ax.set_xlabel("KL divergence (nats)")
        ax.set_yscale("log")
        ax.set_ylabel("steps (log scale)")
        f.tight_layout()
        f.savefig(run / "kl_histogram.png", dpi=150)
        plt.close(f)
        made.append("kl_histogram.png")

    ablations = [fig["arms"][a] for a in ABLATIONS if a in fig["arms"]]
    if len(ablations) > 1:
        f, ax = plt.subplots(figsize=(6.5, 3.8))
        gains = [a["average"]["delta"] for a in ablations]
        err = [
            [g - a["average"]["ci95"][0] for g, a in zip(gains, ablations)],
            [a["average"]["ci95"][1] - g for g, a in zip(gains, ablations)],
        ]
        labels = [METHODS[a["method"]].short for a in ablations]
        bars = ax.bar(labels, gains, yerr=err, capsize=4, color="#2f6fb0")
        ax.bar_label(bars, fmt="%+.1f", fontsize=8, padding=2)
        ax.axhline(0, color="black", linewidth=0.6)
        low = min([0.0] + [a["average"]["ci95"][0] for a in ablations])
        high = max([0.0] + [a["average"]["ci95"][1] for a in ablations])
        pad = max(1.0, 0.15 * (high - low))  # room for the labels on both sides of zero
        ax.set_ylim(low - pad, high + pad)
        ax.set_ylabel("AVG. gain over baseline (points), 95% CI")
        ax.set_title("Ablations")
        ax.tick_params(axis="x", labelsize=8)
        f.tight_layout()
        f.savefig(run / "ablations.png", dpi=150)
        plt.close(f)
        made.append("ablations.png")

    points = [(tag, a) for tag, a in fig["amateurs"].items() if a["gain"]]
    if points:
        f, ax = plt.subplots(figsize=(6, 4))
        for tag, a in points:
            g = a["gain"]
            ax.errorbar(
                a["perf_gap"],
                g["delta"],
                yerr=[[g["delta"] - g["ci95"][0]], [g["ci95"][1] - g["delta"]]],
                fmt="o",
                capsize=4,
                color="#2f6fb0",
            )
            ax.annotate(tag, (a["perf_gap"], g["delta"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xlabel("expertise gap: expert − amateur accuracy (points)")
        ax.set_ylabel("LightReasoner gain (points), 95% CI")
        ax.set_title("Gain against the expertise gap")
        f.tight_layout()
        f.savefig(run / "gap.png", dpi=150)
        plt.close(f)
        made.append("gap.png")

    owners: dict[str, list[tuple[str, float]]] = {}
    for stage, secs in fig["stage_seconds"].items():
        row, kind = stage_owner(stage)
        owners.setdefault(row, []).append((kind, secs / 60))
    colors = stage_colors()
    f, ax = plt.subplots(figsize=(7, 0.5 * len(owners) + 1.6))
    seen = set()
    for i, parts in enumerate(owners.values()):
        left = 0.0
        for kind, minutes in parts:
            label = None if kind in seen else kind
            seen.add(kind)
            ax.barh(i, minutes, left=left, color=colors.get(kind, "#777777"), label=label)
            left += minutes
        ax.text(left, i, f" {hms(60 * left)}", va="center", fontsize=8)
    ax.set_yticks(range(len(owners)), list(owners))
    ax.invert_yaxis()
    ax.set_xlabel("minutes")
    ax.set_xlim(0, max([sum(m for _, m in p) for p in owners.values()] + [0.1]) * 1.3)
    ax.set_title("Time per stage and arm")
    ax.legend(frameon=False, fontsize=8)
    f.tight_layout()
    f.savefig(run / "stage_times.png", dpi=150)
    plt.close(f)
    made.append("stage_times.png")
    return made + plot_loss(run, fig, plt)
