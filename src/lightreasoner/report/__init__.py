"""The run report: ``report.md``, ``report.json``, PNG plots and ``report.html`` in the run directory.

- :mod:`.tables`: every figure (``report.json``) and ``report.md``;
- :mod:`.plots`: the PNG plots;
- :mod:`.html`: the self-contained ``report.html`` (also ``lightreasoner view``).
"""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..io import atomic_write_json, atomic_write_text
from .html import view, write_run_page
from .plots import KIND_COLORS, plot, stage_owner
from .tables import (
    ABLATIONS,
    PACKAGES,
    ablation_table,
    accuracy_ci,
    efficiency,
    efficiency_table,
    gap_table,
    gather,
    hardware,
    markdown,
    strict_json,
    verdicts,
    versions,
    versus_baseline,
)

__all__ = [
    "ABLATIONS",
    "KIND_COLORS",
    "PACKAGES",
    "ablation_table",
    "accuracy_ci",
    "efficiency",
    "efficiency_table",
    "gap_table",
    "gather",
    "hardware",
    "markdown",
    "plot",
    "stage_owner",
    "strict_json",
    "verdicts",
    "versions",
    "versus_baseline",
    "view",
    "write_report",
    "write_run_page",
]


def write_report(run: Path, cfg: RunConfig, configs: dict, timings: dict, disjoint_checked: int = 0) -> dict:
    """``configs``: the stage configs of :func:`lightreasoner.methods.stage_configs` (where outputs are)."""
    fig = gather(run, cfg, configs, timings, disjoint_checked)
    fig["verdicts"] = verdicts(fig)
    fig["plots"] = plot(run, fig)
    atomic_write_json(run / "report.json", strict_json(fig))
    md = markdown(fig)
    atomic_write_text(run / "report.md", md)
    write_run_page(run, fig, md)
    return fig
