"""The adapter's effect against rounding: weight survival, argmax flips, the effect stage."""

import json
import math

import pytest
import tiny
import torch

from lightreasoner.cli import main
from lightreasoner.config import MergeConfig
from lightreasoner.merge import MERGE_REPORT, merge
from lightreasoner.precision import (
    EffectCounts,
    completion_positions,
    delta_weight_stats,
    effect_figures,
    measure_effect,
    rounding_survival,
    summarize_survival,
)


def test_rounding_survival_by_hand():
    # bf16 keeps 8 significant bits: one unit in the last place is 2^-7 at 1.0 and 2 at 256
    w = torch.tensor([1.0, 1.0, 256.0, 3.0])
    d = torch.tensor([2.0**-10, 2.0**-6, 1.0, 0.0])  # below half an ulp; 2 ulps; a tie (to even: lost); none
    s = rounding_survival(w, d, torch.bfloat16)
    assert s["entries"] == 3 and s["vanished"] == 2
    assert s["err_sq"] == pytest.approx(2.0**-20 + 1.0)
    assert s["delta_sq"] == pytest.approx(2.0**-20 + 2.0**-12 + 1.0)
    assert rounding_survival(w, d, torch.float32)["err_sq"] == 0.0  # float32 keeps all of it


def test_summarize_survival_pools_layers():
    parts = {"q_proj": [{"delta_sq": 1.0, "w_sq": 100.0, "err_sq": 0.25, "entries": 4, "vanished": 1}] * 2}
    s = summarize_survival(parts)["q_proj"]
    assert s["layers"] == 2 and s["relative_size"] == pytest.approx(0.1)
    assert s["relative_error"] == pytest.approx(0.5) and s["vanished_share"] == pytest.approx(0.25)


def test_effect_counts_by_hand():
    def logits(winners):  # [positions, vocab 4] with the given argmax per row
        x = torch.zeros(len(winners), 4)
        x[torch.arange(len(winners)), torch.tensor(winners)] = 1.0
        return x

    c = EffectCounts()
    base32, tuned32 = logits([0, 0, 0, 0]), logits([1, 1, 0, 0])  # the adapter changes 2 positions
    base_p, tuned_p = logits([0, 0, 2, 0]), logits([1, 0, 2, 3])  # 1 rounding flip; reproduces 1 of 2
    c.add(base32, tuned32, base_p, tuned_p)
    f = effect_figures(c)
    assert (f["positions"], f["changed_fp32"], f["floor"], f["changed_path"], f["reproduced"]) == (4, 2, 1, 2, 1)
    assert f["effect_over_floor"] == 2.0 and f["reproduced_share"] == 0.5
    same = EffectCounts()
    same.add(base32, tuned32, base32, tuned32)
    g = effect_figures(same)
    assert g["relative_error"] == 0.0 and g["correlation"] == pytest.approx(1.0) and math.isinf(g["effect_over_floor"])


def test_completion_positions():
    # prompt of 3 tokens, completion of 2: logits 2 and 3 predict tokens 3 and 4
    assert completion_positions(3, 2) == slice(2, 4)


def test_delta_weight_stats_sees_every_lora_layer(pair):
    model = tiny.random_lora(pair[0], std=0.5, target_modules="q_proj,v_proj", dropout=0.0)
    s = delta_weight_stats(model, torch.float32)
    layers = model.base_model.model.config.num_hidden_layers
    assert set(s) == {"q_proj", "v_proj"} and all(v["layers"] == layers for v in s.values())
    assert all(v["relative_size"] > 0 and v["relative_error"] < 1e-4 for v in s.values())  # fp32 sums round too


def sequences(tok, n=3, length=8):
    ids = tok("Natalia sold clips to 48 of her friends in April", add_special_tokens=False)["input_ids"]
    return [(ids[: 4 + i], ids[4 + i : 4 + i + length]) for i in range(n)]


def test_measure_effect_in_float32_reproduces_every_change(pair, tmp_path):
    from lightreasoner.models import load_tokenizer

    model = tiny.random_lora(pair[0], std=0.5, dropout=0.0)
    model.save_pretrained(str(tmp_path / "adapter"))
    seqs = sequences(load_tokenizer(str(pair[0])))
    fig = measure_effect(str(pair[0]), str(tmp_path / "adapter"), seqs, torch.float32)
    assert fig["positions"] == sum(len(c) for _, c in seqs) and fig["changed_fp32"] > 0
    assert fig["floor"] == 0 and fig["reproduced"] == fig["changed_fp32"]  # merged in fp32: the same model
    assert fig["relative_error"] < 1e-3 and set(fig["weights"]) == {"q_proj", "v_proj"}
    # one load for both (the path is the reference's model): the same figures as two loads
    from lightreasoner.precision import compare_paths, path_logits, reference_logits

    base32, tuned32, weights = reference_logits(str(pair[0]), str(tmp_path / "adapter"), seqs, torch.float32)
    base_p, tuned_p = path_logits(str(pair[0]), str(tmp_path / "adapter"), seqs, torch.float32, True)
    two_loads = compare_paths(base32, tuned32, base_p, tuned_p)
    assert {k: fig[k] for k in two_loads} == two_loads and fig["weights"] == weights


def test_effect_command_over_an_evaluation_folder(pair, tmp_path):
    model = tiny.random_lora(pair[0], std=0.5, dropout=0.0)
    model.save_pretrained(str(tmp_path / "adapter"))
    ev = tmp_path / "eval"
    ev.mkdir()
    rows = [{"id": str(i), "problem": q, "completion": "She sold 48 / 2 = 24 clips."} for i, q in enumerate("abc")]
    (ev / "gsm8k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "effect.json"
    args = ["effect", "--model", str(pair[0]), "--adapter", str(tmp_path / "adapter"), "--completions", str(ev)]
    assert main([*args, "--out", str(out), "--problems", "2", "--positions", "5", "--dtype", "bfloat16"]) == 0
    fig = json.loads(out.read_text())
    assert fig["problems"] == 2 and fig["positions"] == 10 and fig["path"] == "unmerged bfloat16"  # as eval
    assert fig["changed_fp32"] >= fig["reproduced"] and 0 <= fig["floor"] <= 10
    assert main([*args, "--out", str(tmp_path / "x.json")][:-2] + ["--completions", str(tmp_path / "none")]) == 2


def test_merge_reports_what_survives_and_warns_in_bf16(pair, tmp_path, caplog):
    small = tiny.random_lora(pair[0], std=1e-4, dropout=0.0)  # a ΔW far below bf16's resolution
    small.save_pretrained(str(tmp_path / "adapter"))
    merge(
        MergeConfig(base=str(pair[0]), adapter=str(tmp_path / "adapter"), out=str(tmp_path / "bf16"), dtype="bfloat16")
    )
    report = json.loads((tmp_path / "bf16" / MERGE_REPORT).read_text())
    assert report["dtype"] == "bfloat16" and report["modules"]["q_proj"]["vanished_share"] > 0.5
    assert "--dtype float32 merges exactly" in caplog.text
    caplog.clear()
    merge(
        MergeConfig(base=str(pair[0]), adapter=str(tmp_path / "adapter"), out=str(tmp_path / "fp32"), dtype="float32")
    )
    exact = json.loads((tmp_path / "fp32" / MERGE_REPORT).read_text())["modules"]
    assert all(m["relative_error"] < 1e-3 and m["vanished_share"] < 1e-3 for m in exact.values())
    assert "merges exactly" not in caplog.text
