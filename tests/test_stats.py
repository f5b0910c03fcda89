"""Statistics on paired outcomes, against values computed by hand."""

import pytest

from lightreasoner.stats import bootstrap_ci, mcnemar_exact, paired_difference


def test_mcnemar_exact_by_hand():
    # 10 discordant pairs split 8/2: p = 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 2 * 56 / 1024
    a = [1] * 8 + [0] * 2 + [1] * 5 + [0] * 5
    b = [0] * 8 + [1] * 2 + [1] * 5 + [0] * 5
    assert mcnemar_exact(a, b) == pytest.approx(0.109375)
    assert mcnemar_exact(b, a) == pytest.approx(0.109375)
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]) == 1.0  # no discordant pair
    assert mcnemar_exact([1] * 5, [0] * 5) == pytest.approx(2 / 32)  # 5/0: 2 * 1 / 2^5
    assert mcnemar_exact([1, 0], [0, 1]) == 1.0  # 1/1 (2 * 3/4 capped at 1)


def test_bootstrap_ci_by_hand():
    # every problem gains: every resample gains 100 points
    assert bootstrap_ci([([0] * 20, [1] * 20)]) == (100.0, 100.0)
    assert bootstrap_ci([([1, 0, 1], [1, 0, 1])]) == (0.0, 0.0)
    # 10 of 100 problems gain, none lose: resampled gains ~ Binomial(100, 0.1), whose central
    # 95% is about 10 +- 1.96 * 3 points, i.e. (4.1, 15.9)
    lo, hi = bootstrap_ci([([0] * 100, [1] * 10 + [0] * 90)], resamples=10_000, seed=1)
    assert 3.0 <= lo <= 5.0 and 15.0 <= hi <= 17.0
    assert bootstrap_ci([([0] * 100, [1] * 10 + [0] * 90)], seed=1) == (lo, hi)  # seeded


def test_paired_difference_averages_benchmarks():
    g1 = ([0] * 10, [1] * 10)  # +100 points
    g2 = ([1] * 4, [1] * 4)  # +0
    d = paired_difference([g1, g2], resamples=2000)
    assert d["delta"] == pytest.approx(50.0) and d["n"] == 14
    assert d["ci95"] == [50.0, 50.0]
    assert d["only_second"] == 10 and d["only_first"] == 0
    assert d["p_value"] == pytest.approx(2 / 2**10)


def fake_eval(folder, name, outcomes, ids=None):
    import json

    folder.mkdir()
    ids = ids or [str(i) for i in range(len(outcomes))]
    rows = [{"id": i, "correct": bool(c)} for i, c in zip(ids, outcomes)]
    (folder / "gsm8k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    acc = 100 * sum(outcomes) / len(outcomes)
    summary = {"name": name, "results": {"gsm8k": {"n": len(rows), "accuracy": acc}}, "average": acc}
    (folder / "summary.json").write_text(json.dumps(summary))


def test_compare_prints_ci_and_p_and_refuses_other_problems(tmp_path, capsys):
    from lightreasoner.cli import main

    fake_eval(tmp_path / "base", "Baseline", [1] * 8 + [0] * 2 + [1] * 5 + [0] * 5)
    fake_eval(tmp_path / "tuned", "tuned", [0] * 8 + [1] * 2 + [1] * 5 + [0] * 5)
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "tuned")]) == 0
    out = capsys.readouterr().out
    assert "| tuned | GSM8K | 20 | -30.0 |" in out and "| 0.109 |" in out and "not significant at 0.05" in out
    assert "One problem is worth (points): GSM8K 5" in out
    fake_eval(tmp_path / "other", "other", [1] * 20, ids=[str(i + 1) for i in range(20)])
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "other")]) == 2
    assert "different problems" in capsys.readouterr().err


def test_mcnemar_power_by_hand():
    from lightreasoner.stats import mcnemar_critical, mcnemar_power

    # 5 discordant: even 5/0 gives p = 2/32 > 0.05; 6 discordant: only 6/0 is significant
    assert mcnemar_critical(5) == -1 and mcnemar_critical(6) == 0
    assert mcnemar_critical(10) == 1  # 2 * (1 + 10) / 1024 = 0.021; with 2 losses 0.109
    # every problem discordant, a gain with probability 3/4: power = P(6 gains of 6) = 0.75^6
    assert mcnemar_power(6, 1.0, 0.5) == pytest.approx(0.75**6)
    assert mcnemar_power(100, 0.1, 0.0) == 0.0


def test_mcnemar_power_matches_a_simulation():
    import numpy as np

    from lightreasoner.stats import mcnemar_power

    rng = np.random.default_rng(0)
    n, disc, delta, hits, trials = 60, 0.3, 0.15, 0, 3000
    for _ in range(trials):
        d = rng.binomial(n, disc)
        gains = rng.binomial(d, (disc + delta) / 2 / disc)
        hits += (
            gains > d - gains
            and mcnemar_exact([1] * gains + [0] * (d - gains), [0] * gains + [1] * (d - gains)) <= 0.05
        )
    assert mcnemar_power(n, disc, delta) == pytest.approx(hits / trials, abs=0.03)


def test_minimum_detectable_effect():
    from lightreasoner.stats import mcnemar_power, minimum_detectable_effect

    mde = minimum_detectable_effect(400, 0.15)
    assert 4.0 < mde < 7.0 and mcnemar_power(400, 0.15, mde / 100) >= 0.8 > mcnemar_power(400, 0.15, mde / 100 - 0.005)
    assert minimum_detectable_effect(200, 0.15) > mde  # fewer problems: a larger effect is needed
    assert minimum_detectable_effect(10, 0.05) == float("inf")  # nothing up to the discordant share is detectable
