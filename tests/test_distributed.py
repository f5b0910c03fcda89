"""Several processes (accelerate launch, gloo on CPU) give the output of one: the same bytes,
with one thread per process (see also test_groups)."""

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import SHARED_DATA, kill_env

from lightreasoner.cli import main
from lightreasoner.distributed import shard

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1"]
LAUNCH += ["--mixed_precision", "no", "--dynamo_backend", "no", "--num_processes", "2"]


def free_port() -> int:
    """A port no one listens on now (so launches of concurrent test runs do not meet)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], processes: int = 2, env: dict | None = None) -> subprocess.Popen:
    """``lightreasoner ARGS`` as 1 or 2 processes (accelerate launch), each with one thread."""
    cmd = [sys.executable, "-m", "lightreasoner", *args]
    if processes == 2:
        cmd = [*LAUNCH, "--main_process_port", str(free_port()), "-m", "lightreasoner", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}  # the kernels' sums depend on the threads
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, env=env)


def finish(proc: subprocess.Popen) -> None:
    log = proc.communicate()[0].decode()
    assert proc.returncode == 0, log[-3000:]


def test_shards_are_disjoint_and_cover_everything():
    items = list(range(11))
    parts = [shard(items, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == items and max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    import tiny

    path = tmp_path_factory.mktemp("d") / "p.jsonl"
    qs = [tiny.CORPUS[i % len(tiny.CORPUS)] + f" ({i})" for i in range(9)]
    path.write_text("".join(json.dumps({"question": q, "answer": "#### 1"}) + "\n" for q in qs))
    return path


def sample_args(pair, data, out):
    e, a = pair
    return ["sample", "-q", "--expert", str(e), "--amateur", str(a), "--data", str(data), "--out", str(out),
            "--max-new-tokens", "24", "--beta=0.3", "--batch-size", "1", "--dtype", "float32",
            "--group-size", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def one_process_samples(pair, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("s1") / "s.jsonl"
    finish(launch(sample_args(pair, data, out), processes=1))
    return out


@pytest.mark.slow
def test_two_process_sampling_equals_one(pair, data, one_process_samples, tmp_path):
    out = tmp_path / "s.jsonl"
    finish(launch(sample_args(pair, data, out)))
    assert out.read_text() == one_process_samples.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.jsonl", "s.summary.json"]  # shards merged and gone
    a, b = (json.loads(p.with_name("s.summary.json").read_text()) for p in (one_process_samples, out))
    assert a["selected_steps"] == b["selected_steps"] and a["problems"] == b["problems"]


@pytest.mark.slow
def test_sampling_is_byte_identical_with_two_processes_in_refilled_groups(pair, data, tmp_path):
    batched = ["--batch-size", "3", "--score-batch-size", "2", "--group-size", "4"]  # later flags win
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    finish(launch([*sample_args(pair, data, one), *batched], processes=1))
    finish(launch([*sample_args(pair, data, two), *batched]))
    assert one.read_text() == two.read_text() and one.read_text()


def finished_problems(out) -> int:
    """Problems the shards of ``out`` list as finished so far (a line per work group)."""
    logs = list(out.parent.glob(out.name + "*.progress"))
    return sum(len(json.loads(x)["problems"]) for p in logs for x in p.read_text().splitlines()[1:])


@pytest.mark.slow
def test_a_rank_killed_mid_sampling_then_resumed_with_one_process(pair, data, one_process_samples, tmp_path):
    out = tmp_path / "s.jsonl"
    proc = launch(sample_args(pair, data, out), env=kill_env(1, "sample", rank=1))  # rank 1 dies after a group
    proc.communicate()
    assert proc.returncode != 0  # the launcher then stops the other rank and waits for it
    left = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert not left, "a rank outlived the run"  # the launcher started a session of its own
    assert 2 <= finished_problems(out) < 9  # shards hold part of the work
    finish(launch(sample_args(pair, data, out), processes=1))  # resumed by one process
    assert out.read_text() == one_process_samples.read_text()
    assert not list(tmp_path.glob("*.rank*")) and not list(tmp_path.glob("*.partial"))


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="benchmark files of ../shared/data not present")
@pytest.mark.slow
def test_two_process_eval_equals_one(pair, tmp_path):
    args = ["eval", "-q", "--model", str(pair[0]), "--benchmarks", "gsm8k,reasoning-gym:gsm_symbolic",
            "--data-dir", str(SHARED_DATA), "--limit", "5", "--max-new-tokens", "12", "--batch-size", "2"]  # fmt: skip
    finish(launch([*args, "--out", str(tmp_path / "one")], processes=1))
    finish(launch([*args, "--out", str(tmp_path / "two")]))
    for name in ("gsm8k.jsonl", "reasoning-gym:gsm_symbolic.jsonl"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text()
    assert not list((tmp_path / "two").glob("*.rank*"))
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    assert a["results"] == b["results"] and b["processes"] == 2


@pytest.mark.slow
def test_two_process_training_writes_one_adapter_and_matches_one_process(pair, one_process_samples, tmp_path):
    """The same command in 1 and 2 processes: the configured global batch (4 x 2) either way,
    each process taking micro-batches of 2."""
    args = ["train", "-q", "--model", str(pair[0]), "--samples", str(one_process_samples), "--max-steps", "2",
            "--batch-size", "4", "--grad-accum", "2", "--lora-dropout", "0", "--logging-steps", "1",
            "--save-steps", "100"]  # fmt: skip
    assert main([*args, "--output-dir", str(tmp_path / "one")]) == 0
    finish(launch([*args, "--output-dir", str(tmp_path / "two")]))
    two = tmp_path / "two"
    assert len(list(two.glob("adapter_model*.safetensors"))) == 1 and not list(two.glob("*.tmp*"))
    s1, s2 = (json.loads((tmp_path / d / "train_summary.json").read_text()) for d in ("one", "two"))
    assert s2["processes"] == 2 and s2["global_batch"] == s1["global_batch"] == 8
    assert s2["record_updates"] == s1["record_updates"] == 16
    assert s2["tuned_tokens"] == s1["tuned_tokens"]  # records seen by either process, counted once
    fps = [json.loads((tmp_path / d / "train_fingerprint.json").read_text()) for d in ("one", "two")]
    assert [(f["processes"], f["global_batch"]) for f in fps] == [(1, 8), (2, 8)]
    first = [json.loads((tmp_path / d / "checkpoint-2" / "trainer_state.json").read_text()) for d in ("one", "two")]
    losses = [[h["loss"] for h in st["log_history"] if "loss" in h] for st in first]
    assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-4)


@pytest.mark.slow
def test_run_with_two_processes_per_stage(pair, tmp_path):
    from test_pipeline import tiny_run

    from lightreasoner.pipeline import run_experiment

    # a port of its own: accelerate launch would take 29500, which another launch may hold
    cfg = tiny_run(pair, tmp_path / "r", num_processes=2, launch={"main_process_port": free_port()})
    fig = run_experiment(cfg, show_progress=False)
    run = tmp_path / "r"
    arm = run / "arms" / "lightr"
    for p in ("eval/baseline/summary.json", "report.md"):
        assert (run / p).exists(), p
    for p in ("samples.jsonl", "adapter/adapter_model.safetensors", "eval/summary.json"):
        assert (arm / p).exists(), p
    assert json.loads((arm / "adapter" / "train_summary.json").read_text())["processes"] == 2
    assert json.loads((arm / "eval" / "summary.json").read_text())["processes"] == 2
    assert not list(run.rglob("*.rank*")) and set(fig["stage_seconds"]) >= {"lightr: selection", "lightr: fine-tuning"}
    assert (
        list((run / "stages").glob("sample-trajectories-*.yaml"))
        and (run / "stages" / "train-lightr-fine-tuning.yaml").exists()
    )
