"""What sampling and evaluation write on the tiny pair, pinned against ``golden/pinned_outputs.json``.

Moving code between modules (a generation package, arm builders) must not change a single
output: this test compares what ``sample`` and ``eval`` write with what they wrote before the
move. Each written line is pinned twice:

- ``exact``: a digest of the line as written, every float to its last bit (timings and the
  models' temporary paths left out). Checked on a machine like the one that wrote the pin
  (same processor, torch and thread count: a reduction split over other threads rounds
  differently), where outputs are reproducible to the bit. The pin is written as the suite
  runs in CI (``pytest -n auto``: one thread per worker on two cores).
- ``text`` and ``floats``: a digest of everything but the floats (text, token ids, ids,
  verdicts), which must match anywhere, and the sum of the line's floats, which must match to
  1e-5 relative: kernels for other instruction sets may differ in the last bits.

A failure names the output and the first line that differs.
``LIGHTREASONER_WRITE_GOLDEN=1 pytest tests/test_pinned_outputs.py`` rewrites the pin, for a
change meant to change outputs (say so in its commit).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import pytest
import torch

from lightreasoner.cli import main
from lightreasoner.provenance import cpu_name

GOLDEN = Path(__file__).parent / "golden" / "pinned_outputs.json"
TIMING = ("seconds", "per_second", "started", "finished", "elapsed", "time")
PATHS = ("expert", "amateur")


def strip(value):
    """``value`` without timing fields and model paths."""
    if isinstance(value, list):
        return [strip(v) for v in value]
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k not in PATHS and not any(t in k for t in TIMING)}
    return value


def split_floats(value, floats: list[float]):
    """``value`` with each float replaced by ``None`` and appended to ``floats``."""
    if isinstance(value, float):
        floats.append(value)
        return None
    if isinstance(value, list):
        return [split_floats(v, floats) for v in value]
    if isinstance(value, dict):
        return {k: split_floats(v, floats) for k, v in value.items()}
    return value


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def pin_lines(path: Path) -> dict[str, list]:
    exact, text, sums = [], [], []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        value = strip(json.loads(line))
        floats: list[float] = []
        exact.append(digest(value))
        text.append(digest(split_floats(value, floats)))
        sums.append(math.fsum(floats))
    return {"exact": exact, "text": text, "floats": sums}


@pytest.fixture(scope="module")
def outputs(pair, tmp_path_factory) -> dict:
    expert, amateur = (str(p) for p in pair)
    root = tmp_path_factory.mktemp("pinned")
    common = ["-q", "--dtype", "float32", "--device", "cpu"]
    got: dict = {}

    sample = ["sample", *common, "--expert", expert, "--amateur", amateur, "--data", "gsm8k:train"]
    for name, extra in {
        "sample": ["--max-problems", "5", "--max-new-tokens", "20", "--batch-size", "2"],
        "sample --no-contrast": ["--max-problems", "3", "--max-new-tokens", "12", "--no-contrast"],
    }.items():
        out = root / (name.replace(" ", "_").replace("-", "") + ".jsonl")
        assert main([*sample, *extra, "--out", str(out)]) == 0
        got[name] = pin_lines(out)

    evaluate = ["eval", *common, "--model", expert, "--benchmarks", "gsm8k", "--limit", "4", "--max-new-tokens", "16"]
    for name, extra in {
        "eval": ["--batch-size", "3"],
        "eval --contrastive-amateur": ["--contrastive-amateur", amateur],
    }.items():
        out = root / name.replace(" ", "_").replace("-", "")
        assert main([*evaluate, *extra, "--out", str(out)]) == 0
        got[name] = pin_lines(out / "gsm8k.jsonl")
        summary = json.loads((out / "summary.json").read_text())["results"]["gsm8k"]
        got[name]["summary"] = {k: summary[k] for k in ("n", "correct", "accuracy")}
    return got


def first_difference(got: list, want: list) -> int:
    return next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want))) + 1


def test_sample_and_eval_outputs_are_the_pinned_ones(outputs):
    machine = {"cpu": cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if os.environ.get("LIGHTREASONER_WRITE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"machine": machine, "outputs": outputs}, indent=1, sort_keys=True) + "\n")
    pinned = json.loads(GOLDEN.read_text())
    assert sorted(outputs) == sorted(pinned["outputs"])
    assert outputs["sample"]["text"], "the tiny pair selected no step: the pin would check nothing"
    same_machine = pinned["machine"] == machine
    for name, want in pinned["outputs"].items():
        got = outputs[name]
        n = f"{name}: {len(got['text'])} lines against {len(want['text'])} pinned"
        assert got["text"] == want["text"], f"{n}; line {first_difference(got['text'], want['text'])} differs first"
        assert got["floats"] == pytest.approx(want["floats"], rel=1e-5), f"{name}: floats differ beyond rounding"
        if same_machine:
            line = first_difference(got["exact"], want["exact"])
            assert got["exact"] == want["exact"], f"{name}: line {line} differs in its floats' last bits"
        assert got.get("summary") == want.get("summary")
