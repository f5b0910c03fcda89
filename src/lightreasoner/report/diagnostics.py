"""Can the run tell whether the method works? Per trained arm: the adapter's effect against
bf16 rounding (``effect.json`` of the ``effect`` stage), its size per target module, the
training loss curve, the problems it gained and lost (by id), and the minimum effect the
test could detect at 80% power given the discordance observed."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..files import EFFECT_FILE, SFT_SUMMARY, TRAIN_SUMMARY
from ..io import read_json_lines
from ..stats import minimum_detectable_effect
from .summaries import display_name


def changed_problems(first: str | Path, second: str | Path, names: list[str]) -> dict[str, dict[str, list[str]]]:
    """Per benchmark, the ids of problems ``second`` gained (wrong in ``first``, right in
    ``second``) and lost, in ``first``'s order."""
    out = {}
    for name in names:
        a, b = (
            {r["id"]: bool(r["correct"]) for r in read_json_lines(Path(d) / f"{name}.jsonl", "per-problem results")}
            for d in (first, second)
        )
        out[name] = {
            "gained": [i for i in a if not a[i] and b.get(i)],
            "lost": [i for i in a if a[i] and i in b and not b[i]],
        }
    return out


def mde(n: int, gained: int, lost: int) -> dict:
    """Minimum detectable improvement (points, 80% power, exact McNemar at 0.05) on ``n``
    problems with the observed share of discordant ones; ``None`` when nothing is detectable."""
    share = (gained + lost) / n if n else 0.0
    m = minimum_detectable_effect(n, share)
    return {"n": n, "discordant_share": share, "points": m if math.isfinite(m) else None}


def loss_curve(adapter: Path, summary_name: str) -> list[list[float]]:
    """``[[step, loss], ...]`` logged while training: from the stage summary, or else from
    the newest checkpoint's ``trainer_state.json``."""
    summary = adapter / summary_name
    if summary.exists():
        curve = json.loads(summary.read_text()).get("loss_curve")
        if curve:
            return curve
    states = sorted(adapter.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not states:
        return []
    history = json.loads(states[-1].read_text()).get("log_history", [])
    return [[h["step"], h["loss"]] for h in history if "loss" in h]


def arm_diagnostics(entry: dict, arm_fig: dict, base_dir: str | Path, names: list[str]) -> dict:
    """The figures of this module for one arm (``entry``: its stage configs)."""
    arm = entry["arm"]
    changed = changed_problems(base_dir, arm.eval, names)
    per = {name: mde(arm_fig["results"][name]["n"], len(c["gained"]), len(c["lost"])) for name, c in changed.items()}
    total = sum(r["n"] for r in per.values())
    gained = sum(len(c["gained"]) for c in changed.values())
    lost = sum(len(c["lost"]) for c in changed.values())
    out: dict = {"changed_problems": changed, "mde80": {**per, "AVG.": mde(total, gained, lost)}}
    effect = arm.dir / EFFECT_FILE
    out["effect"] = json.loads(effect.read_text()) if effect.exists() else None
    if "train" in entry or "sft" in entry:
        out["loss_curve"] = loss_curve(arm.adapter, TRAIN_SUMMARY if "train" in entry else SFT_SUMMARY)
    return out


def _ids(ids: list[str], most: int = 60) -> str:
    return ", ".join(ids[:most]) + (f", ... ({len(ids) - most} more)" if len(ids) > most else "") if ids else "none"


def markdown_lines(fig: dict) -> list[str]:
    """The report's "Can this run tell?" section: detectable effect, problems changed by id,
    the adapter's effect against rounding, its size and the loss curve."""
    arms = [a for a in fig["arms"].values() if "mde80" in a]
    if not arms:
        return []
    lines = ["", "## Can this run tell?", ""]
    lines.append(
        "Minimum detectable improvement: the smallest gain the exact McNemar test (0.05) finds with 80% power, "
        "given the number of problems and the share of discordant ones (right in one, wrong in the other) observed."
    )
    lines += ["", "| Model | Benchmark | n | Discordant | Minimum detectable (points) |", "|---|---|---|---|---|"]
    for a in arms:
        for name, m in a["mde80"].items():
            if name == "AVG." and len(a["mde80"]) == 2:
                continue
            shown = "none up to the discordant share" if m["points"] is None else f"{m['points']:.1f}"
            bench = name if name == "AVG." else display_name(name)
            lines.append(f"| {a['label']} | {bench} | {m['n']} | {100 * m['discordant_share']:.1f}% | {shown} |")
    lines += ["", "Problems changed against the baseline, by id:", ""]
    for a in arms:
        for name, c in a["changed_problems"].items():
            lines.append(f"- {a['label']}, {display_name(name)}: gained {_ids(c['gained'])}; lost {_ids(c['lost'])}.")
    effects = [(a, a["effect"]) for a in arms if a.get("effect")]
    if effects:
        lines += [
            "",
            "### The adapter's effect against rounding",
            "",
            "Teacher-forced over the baseline's own completions: positions whose most likely next token the adapter "
            "changes in float32 (the real effect), positions where the base model in the evaluation's dtype and in "
            "float32 already disagree (the noise floor), and how many of the float32 changes the evaluation path "
            "reproduces.",
            "",
            "| Model | Evaluation path | Positions | Changed in fp32 | Noise floor | Effect / floor | Reproduced | "
            "Logit change: rel. error |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for a, e in effects:
            ratio = "∞ (no floor)" if not e["floor"] else f"{e['changed_fp32'] / e['floor']:.1f}"
            rel = "–" if e.get("relative_error") is None else f"{e['relative_error']:.3f}"
            lines.append(
                f"| {a['label']} | {e['path']} | {e['positions']:,} | {e['changed_fp32']} "
                f"({100 * e['changed_fp32_share']:.2f}%) | {e['floor']} ({100 * e['floor_share']:.2f}%) | {ratio} | "
                f"{e['reproduced']} of {e['changed_fp32']} | {rel} |"
            )
        lines += [
            "",
            "The adapter's size per target module, and what survives when the tuned weights are stored in the "
            "evaluation's dtype:",
            "",
            "| Model | Module | Layers | ‖ΔW‖/‖W‖ | Rel. error after rounding | Entries that round away |",
            "|---|---|---|---|---|---|",
        ]
        for a, e in effects:
            for module, w in e["weights"].items():
                lines.append(
                    f"| {a['label']} | {module} | {w['layers']} | {w['relative_size']:.2e} | "
                    f"{w['relative_error']:.3f} | {100 * w['vanished_share']:.1f}% |"
                )
    curves = [(a, a["loss_curve"]) for a in arms if a.get("loss_curve")]
    if curves:
        lines += ["", "Training loss (first → last logged step): "]
        lines[-1] += "; ".join(
            f"{a['label']} {c[0][1]:.4f} (step {c[0][0]}) → {c[-1][1]:.4f} (step {c[-1][0]})" for a, c in curves
        )
        lines += ["", "![training loss](loss.png)"]
    return lines


def plot_loss(run: Path, fig: dict, plt) -> list[str]:
    """loss.png: the logged training loss of every trained arm against the step."""
    curves = [(a["label"], a["loss_curve"]) for a in fig["arms"].values() if a.get("loss_curve")]
    if not curves:
        return []
    f, ax = plt.subplots(figsize=(6.5, 3.6))
    for label, c in curves:
        ax.plot([s for s, _ in c], [v for _, v in c], marker=".", label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss")
    ax.legend(frameon=False, fontsize=8)
    f.tight_layout()
    f.savefig(run / "loss.png", dpi=150)
    plt.close(f)
    return ["loss.png"]
