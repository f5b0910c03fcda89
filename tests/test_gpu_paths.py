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
