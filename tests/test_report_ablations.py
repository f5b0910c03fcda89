"""The ablation section compares each variant with full LightReasoner on the same problems,
not only with the baseline: the paper's ablation question is whether removing a part lowers
accuracy."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from test_report_html import eval_folder

from lightreasoner.report.tables import ablation_lines, ablation_table, versus_lightr


def test_each_variant_is_paired_with_lightr(tmp_path):
    lightr = eval_folder(tmp_path, "lightr", [1, 1, 1, 1, 0, 1, 1, 0])
    no_select = eval_folder(tmp_path, "no-select", [1, 0, 0, 1, 0, 1, 0, 1])  # 3 only LightR, 1 only the variant
    sft = eval_folder(tmp_path, "sft", [0] * 8)
    configs = {
        "arms": {
            a: {"arm": SimpleNamespace(eval=folder)}
            for a, folder in (("lightr", lightr), ("lightr-no-select", no_select), ("sft", sft))
        }
    }
    arms = {a: {} for a in configs["arms"]}
    versus_lightr(arms, configs, ["gsm8k"])
    assert set(arms["lightr-no-select"]) == {"versus_lightr"} and not arms["lightr"] and not arms["sft"]
    v = arms["lightr-no-select"]["versus_lightr"]
    assert v["delta"] == pytest.approx(100 * (4 - 6) / 8) and v["n"] == 8
    assert (v["lightr_only"], v["variant_only"]) == (3, 1)
    assert v["ci95"][0] <= v["delta"] <= v["ci95"][1] and v["p_value"] == pytest.approx(0.625)  # 2 * P(X <= 1 | 4)

    def arm(label: str, acc: float, **more) -> dict:
        d = {"delta": acc - 50.0, "ci95": [acc - 60.0, acc - 40.0], "p_value": 0.5}
        return {"label": label, "results": {"gsm8k": {"accuracy": acc}}, "average": {"accuracy": acc, **d}, **more}

    fig = {
        "benchmarks": ["gsm8k"],
        "baseline": {"results": {"gsm8k": {"accuracy": 50.0}}, "average": 50.0},
        "arms": {
            "lightr": arm("+ LightR", 75.0),
            "lightr-no-select": arm("+ LightR w/o Select", 50.0, **arms["lightr-no-select"]),
        },
    }
    rows = ablation_table(fig).splitlines()
    assert rows[0].endswith("| Δ from LightR [95% CI] | p |") and all(r.count("|") == rows[0].count("|") for r in rows)
    assert rows[3].endswith("| – | – |")  # LightR itself
    assert rows[4].endswith(f"| -25.0 [{v['ci95'][0]:+.1f}, {v['ci95'][1]:+.1f}] | 0.625 |")
    lines = ablation_lines(fig)
    assert lines[0].startswith("- + LightR w/o Select against + LightR: AVG. -25.0")
    assert "3 problems only LightR solves, 1 only the variant" in lines[0]
    del fig["arms"]["lightr-no-select"]["versus_lightr"]
    assert ablation_lines(fig) == []
