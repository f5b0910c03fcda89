"""A real `lightreasoner sample` process killed by SIGKILL (at a chosen commit) and resumed."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import kill_env


def run_cli(args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "lightreasoner", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw
    )


def records(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def sample_args(pair, data) -> list[str]:
    """``lightreasoner sample`` on the tiny pair, 48 tokens per trajectory, in groups of 2."""
    expert, amateur = pair
    return ["sample", "-q", "--expert", str(expert), "--amateur", str(amateur), "--data", str(data),
            "--max-new-tokens", "48", "--batch-size", "1", "--dtype", "float32", "--group-size", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(pair, tmp_path_factory) -> tuple[list[str], Path]:
    """(the flags, the records of the uninterrupted run) on ten problems, run once for every kill."""
    from conftest import gsm8k_questions

    d = tmp_path_factory.mktemp("resume")
    data = d / "p.jsonl"
    data.write_text("".join(json.dumps({"question": q}) + "\n" for q in gsm8k_questions(10)))
    args, full = sample_args(pair, data), d / "full.jsonl"
    assert run_cli([*args, "--out", str(full)]).wait() == 0
    return args, full


@pytest.mark.parametrize("min_done", [1, 4])
@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(uninterrupted, tmp_path, min_done):
    common, full = uninterrupted
    out = tmp_path / "out.jsonl"
    progress = tmp_path / "out.jsonl.progress"
    killed = run_cli([*common, "--out", str(out)], env={**os.environ, **kill_env(min_done, "sample")})
    log = killed.communicate()[0].decode()
    assert killed.returncode == -signal.SIGKILL, log  # it killed itself right after its min_done-th commit
    assert not out.exists()  # nothing published yet
    assert progress.read_text().count("\n") - 1 == min_done

    resumed = run_cli([*common, "--out", str(out)])
    log = resumed.communicate()[0].decode()
    assert resumed.returncode == 0, log
    a, b = records(full), records(out)
    assert [(r["problem_index"], r["step"], r["token_ids"]) for r in a] == [
        (r["problem_index"], r["step"], r["token_ids"]) for r in b
    ]
    for x, y in zip(a, b):
        assert x["weights"] == pytest.approx(y["weights"], abs=1e-4)
    assert out.read_text().endswith("\n")
    assert not progress.exists()
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["problems"] == 10 and summary["selected_steps"] == len(b)

    before = out.stat().st_mtime_ns
    again = run_cli([*common, "--out", str(out)])
    log = again.communicate()[0].decode()
    assert again.returncode == 0 and "already complete" in log
    assert out.stat().st_mtime_ns == before
