"""Training on several processes keeps the configured recipe: the global batch is
``--batch-size`` x ``--grad-accum`` whatever the process count, the training fingerprint
records both, and DDP is told every trainable parameter takes part (no extra traversal)."""

from __future__ import annotations

import json

import pytest
import torch

from lightreasoner import training
from lightreasoner.config import TrainConfig
from lightreasoner.errors import LightReasonerError
from lightreasoner.models import load_model, load_tokenizer
from lightreasoner.training import (
    SoftLabelCollator,
    TrainExample,
    check_checkpoints,
    lora_model,
    soft_label_loss,
    split_global_batch,
    trainer_settings,
)


@pytest.mark.parametrize(
    "batch, accum, world, want",
    [
        (8, 2, 1, (8, 2)),
        (8, 2, 2, (4, 2)),
        (8, 2, 8, (1, 2)),  # the paper's 16 on 8 GPUs
        (8, 2, 16, (1, 1)),
        (4, 2, 2, (2, 2)),
        (3, 2, 2, (3, 1)),  # the accumulation takes what the micro-batch cannot
        (6, 2, 4, (3, 1)),
    ],
)
def test_the_global_batch_is_the_configured_one_on_any_process_count(batch, accum, world, want):
    per_device, steps = split_global_batch(batch, accum, world)
    assert (per_device, steps) == want and per_device * steps * world == batch * accum


def test_a_global_batch_the_processes_cannot_share_is_refused():
    with pytest.raises(LightReasonerError, match="cannot be shared by 2 processes"):
        split_global_batch(3, 3, 2)
    with pytest.raises(LightReasonerError, match="cannot be shared by 3 processes.*run 2, 4, 8, 16 processes"):
        split_global_batch(8, 2, 3)


def test_trainer_settings_split_the_batch_and_turn_off_unused_parameter_search(tmp_path):
    cfg = TrainConfig(model="m", samples="s", output_dir=str(tmp_path), batch_size=8, grad_accum=2)
    cpu = torch.device("cpu")
    one = trainer_settings(cfg, tmp_path, torch.float32, cpu, False, 1)
    assert (one["per_device_train_batch_size"], one["gradient_accumulation_steps"]) == (8, 2)
    assert "ddp_find_unused_parameters" not in one  # one process: the arguments as before
    eight = trainer_settings(cfg, tmp_path, torch.float32, cpu, False, 8)
    assert (eight["per_device_train_batch_size"], eight["gradient_accumulation_steps"]) == (1, 2)
    assert eight["ddp_find_unused_parameters"] is False
    given = TrainConfig(**{**vars(cfg), "trainer_args": {"ddp_find_unused_parameters": True}})
    assert trainer_settings(given, tmp_path, torch.float32, cpu, False, 8)["ddp_find_unused_parameters"] is True


@pytest.mark.parametrize("targets", ["q_proj,v_proj", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"])
def test_every_trainable_parameter_takes_part_in_the_lightr_and_sft_losses(pair, targets):
    """What ``find_unused_parameters=False`` needs: one backward of either loss reaches every
    parameter that requires a gradient (DDP would otherwise stop at the next step)."""
    from lightreasoner.sft import SFTCollator, SFTExample

    tok = load_tokenizer(str(pair[0]))
    cfg = TrainConfig(model=str(pair[0]), samples="s", output_dir="o", target_modules=targets)
    model = lora_model(load_model(str(pair[0])), cfg)
    model.train()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    ids = tok("Natalia sold clips to 48 of her friends in April", add_special_tokens=False)["input_ids"]
    examples = [TrainExample(ids[: 4 + i], [1, 2], [0.5, 0.5], 0) for i in range(3)]
    soft_label_loss(model, SoftLabelCollator(tok.pad_token_id)(list(enumerate(examples)))).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    model.zero_grad(set_to_none=True)
    batch = SFTCollator(tok.pad_token_id)([(0, SFTExample(ids, 5)), (1, SFTExample(ids[:8], 3))])
    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def checkpoint(out, ranks: int) -> None:
    folder = out / "checkpoint-2"
    folder.mkdir(parents=True)
    (folder / training.SEEN_RECORDS).write_text("[]")
    for r in range(ranks):
        (folder / ("rng_state.pth" if ranks == 1 else f"rng_state_{r}.pth")).write_bytes(b"")


def test_the_fingerprint_records_processes_and_global_batch(tmp_path, monkeypatch):
    cfg = TrainConfig(model="m", samples="s", output_dir=str(tmp_path), batch_size=4, grad_accum=2)
    monkeypatch.setattr(training, "rank_and_world", lambda: (0, 1))
    assert training.batch_fields(cfg) == {"processes": 1, "global_batch": 8}
    monkeypatch.setattr(training, "rank_and_world", lambda: (0, 2))
    assert training.batch_fields(cfg) == {"processes": 2, "global_batch": 8}


@pytest.mark.parametrize("ranks", [1, 2])
def test_checkpoints_fingerprinted_before_processes_were_recorded(tmp_path, ranks):
    """An older fingerprint has neither field: its checkpoint says how many processes made it
    (``rng_state.pth`` or one ``rng_state_<rank>.pth`` each). A one-process run resumes; one made
    by 2 processes had a global batch of micro-batch x 2 x accumulation, and is refused."""
    old = {"batch_size": 4, "grad_accum": 2, "learning_rate": 1e-4}
    (tmp_path / training.TRAIN_FINGERPRINT).write_text(json.dumps(old))
    checkpoint(tmp_path, ranks)
    now = old | {"processes": 1, "global_batch": 8}
    if ranks == 1:
        check_checkpoints(tmp_path, now, resume=True)
        assert json.loads((tmp_path / training.TRAIN_FINGERPRINT).read_text()) == now
    else:
        with pytest.raises(LightReasonerError, match="changed: global_batch, processes"):
            check_checkpoints(tmp_path, now, resume=True)


def test_a_run_whose_process_count_cannot_share_the_global_batch_is_refused_before_any_stage(pair, tmp_path):
    from test_pipeline import tiny_run

    from lightreasoner.pipeline import stage_configs

    assert stage_configs(tiny_run(pair, tmp_path / "r", num_processes=8))["arms"]  # 8 x 2 on 8: 1 x 2 each
    with pytest.raises(LightReasonerError, match="section 'train', --num-processes: .* by 3 processes"):
        stage_configs(tiny_run(pair, tmp_path / "r", num_processes=3))
