"""The GPU and cluster paths a CPU can check: the process group's timeout, dtype choice on
GPUs without native bfloat16, locks across hosts, multi-node runs, adapter saving."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch

from lightreasoner import distributed
from lightreasoner.config import TrainConfig, build
from lightreasoner.errors import LightReasonerError

REQUIRED = {"model": "m", "samples": "s", "output_dir": "o"}


def test_the_process_group_timeout_is_long_configurable_and_reaches_the_trainer(monkeypatch, tmp_path):
    import accelerate

    from lightreasoner.training import training_arguments

    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.timeout_s() == 24 * 3600
    seen = {}
    monkeypatch.setattr(accelerate, "PartialState", lambda **kw: seen.update(kw))
    distributed.state()
    assert seen["timeout"] == timedelta(hours=24)
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "7200")
    distributed.state()
    assert seen["timeout"] == timedelta(hours=2)
    cfg = build(TrainConfig, {}, REQUIRED)
    assert training_arguments(cfg, tmp_path, torch.float32, torch.device("cpu"), False).ddp_timeout == 7200
    with pytest.raises(LightReasonerError, match="LIGHTREASONER_DIST_TIMEOUT"):  # one knob for both
        build(TrainConfig, {"ddp_timeout": 60}, REQUIRED)
    for bad in ("soon", "0"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(LightReasonerError, match="expected a number of seconds"):
            distributed.timeout_s()


class FakeClock:
    """Seconds that move only when a test says so."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _foreign_lock(output, mtime: float):
    """A lock left on ``output`` by a process of another host, last refreshed at ``mtime``."""
    import json
    import os

    lock = output.with_name(output.name + ".lock")
    lock.write_text(json.dumps({"pid": 1, "host": "node-17.cluster", "since": "earlier", "token": "theirs"}))
    os.utime(lock, (mtime, mtime))
    return lock


def test_a_lock_of_another_host_is_stale_once_not_refreshed_for_the_threshold(tmp_path, caplog):
    from lightreasoner.io import OutputLock

    clock = FakeClock()
    out = tmp_path / "samples.jsonl"
    lock = _foreign_lock(out, clock.now)
    clock.now += 299  # refreshed 299 s ago: its holder may be alive
    with pytest.raises(LightReasonerError) as refused:
        OutputLock(out, refresh_every=3600, stale_after=300, clock=clock).acquire()
    message = str(refused.value)
    assert "node-17.cluster" in message and "refreshed 299 s ago" in message
    assert "taken over once it has not been refreshed for 5 minutes" in message and f"delete {lock}" in message
    clock.now += 2  # 301 s: a job killed on another node (e.g. by a Slurm time limit)
    with OutputLock(out, refresh_every=3600, stale_after=300, clock=clock) as mine:
        assert "has not refreshed it for 5 minutes" in caplog.text
        assert '"token": "theirs"' not in lock.read_text() and lock.stat().st_mtime == clock.now
        assert mine._thread.is_alive()
    assert not lock.exists() and mine._thread is None  # released: file gone, refresher stopped


def test_the_holder_refreshes_its_lock_and_only_its_own(tmp_path):
    from lightreasoner.io import OutputLock

    clock = FakeClock()
    out = tmp_path / "eval"
    holder = OutputLock(out, refresh_every=3600, stale_after=300, clock=clock).acquire()
    clock.now += 250
    holder.refresh()  # what its thread does every refresh_every seconds
    assert holder.path.stat().st_mtime == clock.now
    clock.now += 250  # 500 s after taking it, 250 s after the refresh: still held
    with pytest.raises(LightReasonerError, match="another lightreasoner process"):
        OutputLock(out, refresh_every=3600, stale_after=300, clock=clock).acquire()
    holder._stop.set()  # frozen holder (e.g. a hung node): others take over after the threshold
    clock.now += 100
    other = OutputLock(out, refresh_every=3600, stale_after=300, clock=clock).acquire()
    clock.now += 50
    holder.refresh()  # the old holder wakes up: it does not touch the lock it lost
    assert holder.path.stat().st_mtime == clock.now - 50
    holder.release()  # nor remove it
    assert other.path.exists()
    other.release()
    assert not other.path.exists()


def test_a_run_across_several_nodes_is_refused_at_once_with_the_per_stage_recipe(tmp_path):
    from pathlib import Path

    from lightreasoner.config import RunConfig
    from lightreasoner.pipeline import run_experiment

    shipped = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "2-nodes-8-gpus.yaml"
    out = tmp_path / "run"
    for values, where in [
        ({"launch": {"num_machines": 2, "main_process_ip": "10.0.0.1"}}, "launch: num_machines is 2"),
        ({"accelerate_config": str(shipped)}, f"{shipped}: num_machines is 2"),
    ]:
        with pytest.raises(LightReasonerError) as refused:
            run_experiment(build(RunConfig, {"out": str(out), **values}, {}))
        assert where in str(refused.value) and "configs/slurm/lightreasoner.sbatch" in str(refused.value)
        assert not out.exists()  # refused before taking the run's lock or writing anything
    one_node = tmp_path / "one-node.yaml"
    one_node.write_text('{"num_machines": 1, "num_processes": 8}')  # JSON configs too
    from lightreasoner.pipeline import launch_machines

    assert launch_machines(build(RunConfig, {"accelerate_config": str(one_node)}, {})) == 1
    over = {"accelerate_config": str(one_node), "launch": {"num_machines": 3}}  # launch: wins, as on the command line
    assert launch_machines(build(RunConfig, over, {})) == 3


class _StubTrainer:
    """What :class:`SeenTrainer`'s saving reads of a Trainer, for one process of a job."""

    def __init__(self, main: bool, fsdp_state_dict: str | None = None, writes: bool = True):
        from types import SimpleNamespace

        self.main, self.writes, self.saved_to = main, writes, []
        self.is_fsdp_enabled = fsdp_state_dict is not None
        plugin = SimpleNamespace(state_dict_type=f"StateDictType.{fsdp_state_dict}") if fsdp_state_dict else None
        self.accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin))

    def is_world_process_zero(self) -> bool:
        return self.main

    def save_model(self, out: str) -> None:
        self.saved_to.append(out)  # a collective under FSDP / DeepSpeed: every process must call it
        if self.main and self.writes:
            from pathlib import Path

            (Path(out) / "adapter_config.json").write_text("{}")


def test_the_adapter_is_saved_through_the_trainer_on_every_process(tmp_path):
    from lightreasoner.training import SeenTrainer

    for main in (True, False):
        stub = _StubTrainer(main)
        SeenTrainer.save_adapter(stub, tmp_path)
        assert stub.saved_to == [str(tmp_path)]
    with pytest.raises(LightReasonerError, match="saved no adapter"):
        SeenTrainer.save_adapter(_StubTrainer(True, writes=False), tmp_path / "empty")


def test_fsdp_without_a_full_state_dict_is_refused_before_training():
    from lightreasoner.training import SeenTrainer

    with pytest.raises(LightReasonerError, match="SHARDED_STATE_DICT saves no adapter.*FULL_STATE_DICT"):
        SeenTrainer.check_saveable(_StubTrainer(True, "SHARDED_STATE_DICT"))
    SeenTrainer.check_saveable(_StubTrainer(False, "FULL_STATE_DICT"))
    SeenTrainer.check_saveable(_StubTrainer(True))  # no FSDP


@pytest.mark.parametrize("major, want", [(7, torch.float16), (8, torch.bfloat16), (9, torch.bfloat16)])
def test_auto_dtype_on_gpus_counts_only_native_bfloat16(monkeypatch, caplog, major, want):
    """V100/T4 (compute capability 7) emulate bfloat16: torch.cuda.is_bf16_supported() says yes
    unless emulation is excluded; auto must pick float16 there."""
    from types import SimpleNamespace

    from lightreasoner.models import resolve_dtype

    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: SimpleNamespace(major=major))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)  # emulation works
    assert torch.cuda.is_bf16_supported()  # what the old check saw on every one of these GPUs
    assert resolve_dtype("auto", torch.device("cuda:0")) == want
    assert resolve_dtype("bfloat16", torch.device("cuda:0")) == torch.bfloat16  # asked for: given, with a warning
    assert ("no native bfloat16" in caplog.text) == (major < 8)


@pytest.mark.parametrize(
    "flags, want",
    [
        ("fpu sse avx2 fma", torch.float32),  # AVX2 only
        ("fpu avx2 avx512f avx512bw avx512vl avx512_vnni", torch.float32),  # AVX-512 without BF16 (Cascade Lake)
        ("fpu avx2 avx512f avx512_bf16", torch.bfloat16),  # Zen 4, Cooper Lake
        ("fpu avx2 avx512f amx_bf16 amx_tile", torch.bfloat16),  # Sapphire Rapids
    ],
)
def test_auto_dtype_on_cpus_counts_only_native_bfloat16(monkeypatch, caplog, flags, want):
    """oneDNN's own check says bf16 is supported on any AVX-512 CPU, where it is converted and a
    64-row product runs 3x slower than float32: auto must read the native instructions."""
    from lightreasoner import provenance
    from lightreasoner.models import resolve_dtype

    monkeypatch.setattr(provenance, "_cpuinfo", lambda: ["model name\t: Some CPU", f"flags\t\t: {flags}"])
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    assert resolve_dtype("auto", torch.device("cpu")) == want
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16  # asked for: given, with a warning
    assert ("no native bfloat16" in caplog.text) == (want == torch.float32)
    # no x86 flags to read (another OS or architecture): oneDNN's check decides
    monkeypatch.setattr(provenance, "_cpuinfo", lambda: [])
    assert resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16


def test_dtype_name_is_the_name_dtype_takes():
    """Reports and engines record the resolved dtype by the name ``--dtype`` accepts."""
    from lightreasoner.models import DTYPES, dtype_name

    assert {dtype_name(dt) for dt in DTYPES.values()} == set(DTYPES)
    for name, dt in DTYPES.items():
        assert DTYPES[dtype_name(dt)] is dt, name
