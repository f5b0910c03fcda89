import json
import math

import pytest
import tiny
import torch
import torch.nn.functional as F

from lightreasoner.config import SampleConfig, TrainConfig
from lightreasoner.errors import LightReasonerError
from lightreasoner.models import load_model, load_tokenizer
from lightreasoner.records import read_records
from lightreasoner.sampling import sample
from lightreasoner.training import (
    SoftLabelCollator,
    soft_label_loss,
    to_examples,
    train,
    trajectory_order,
)


@pytest.fixture(scope="module")
def samples(pair, problems_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("samples") / "s.jsonl"
    e, a = pair
    sample(
        SampleConfig(
            expert=str(e), amateur=str(a), data=str(problems_file), out=str(out), max_new_tokens=24, max_problems=4
        ),
        show_progress=False,
    )
    return out


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_packed_and_unpacked_give_the_same_loss_and_lora_gradients(pair, samples):
    expert, _ = pair
    tok = load_tokenizer(str(expert))
    model = tiny.random_lora(expert, std=0.05, dropout=0.0)
    model.train()
    examples = to_examples(read_records(samples), tok, 420, "Please reason step by step.")
    batch = [(i, examples[i]) for i in trajectory_order(examples, seed=0)[:10]]
    results = {}
    for pack in (True, False):
        model.zero_grad()
        inputs = SoftLabelCollator(tok.pad_token_id, pack)(batch)
        loss = soft_label_loss(model, inputs)
        loss.backward()
        results[pack] = (loss.item(), _grads(model), inputs["input_ids"].shape[0])
    (lp, gp, sp), (lu, gu, su) = results[True], results[False]
    assert sp < su == len(batch)  # packing really merged sequences
    assert lp == pytest.approx(lu, rel=1e-4)
    assert gp.keys() == gu.keys() and len(gp) > 0
    for name in gp:
        torch.testing.assert_close(gp[name], gu[name], rtol=1e-4, atol=1e-7)


def test_loss_is_kl_of_soft_label_to_last_position_distribution(pair, samples):
    expert, _ = pair
    tok = load_tokenizer(str(expert))
    model = load_model(str(expert))
    ex = to_examples(read_records(samples), tok, 420, "Please reason step by step.")[:3]
    loss = soft_label_loss(model, SoftLabelCollator(tok.pad_token_id, True)(list(enumerate(ex))))
    manual = []
    for e in ex:
        with torch.no_grad():
            logp = F.log_softmax(model(input_ids=torch.tensor([e.input_ids])).logits[0, -1], -1)
        manual.append(sum(w * (math.log(w) - logp[t].item()) for t, w in zip(e.target_ids, e.target_weights) if w > 0))
    assert loss.item() == pytest.approx(sum(manual) / len(manual), rel=1e-5)


@pytest.mark.slow
def test_release_format_rebuilds_prompt_and_trains(pair, samples, tmp_path):
    expert, _ = pair
    release = tmp_path / "release.jsonl"
    keys = ("prompt_id", "step", "prefix", "tokens", "token_ids", "weights", "kl_divergence")
    with release.open("w") as f:
        for line in samples.read_text().splitlines():
            r = json.loads(line)
            f.write(json.dumps({k: r[k] for k in keys}) + "\n")
    tok = load_tokenizer(str(expert))
    ours = to_examples(read_records(samples), tok, 420, "Please reason step by step.")
    theirs = to_examples(read_records(release), tok, 420, "Please reason step by step.")
    assert len(ours) == len(theirs)
    assert [e.target_ids for e in ours] == [e.target_ids for e in theirs]
    prompt_len = len(read_records(samples)[0].prompt_token_ids)
    assert theirs[0].input_ids[:prompt_len] == ours[0].input_ids[:prompt_len]  # same rebuilt prompt
    for path in (samples, release):
        out = tmp_path / path.stem
        summary = train(
            TrainConfig(
                model=str(expert),
                samples=str(path),
                output_dir=str(out),
                max_steps=2,
                batch_size=4,
                grad_accum=1,
                save_steps=100,
            ),
            show_progress=False,
        )
        assert summary["optimizer_steps"] == 2 and summary["tuned_tokens"] == min(len(ours), 2 * 4)
        assert math.isfinite(summary["train_loss"]) and summary["train_loss"] > 0
        assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()
        assert (out / "tokenizer_config.json").exists() and (out / "train_summary.json").exists()


@pytest.mark.slow
def test_training_lowers_the_loss_and_resumes(pair, samples, tmp_path, monkeypatch):
    from lightreasoner import training

    expert, _ = pair
    calls = []
    real_loss = training.soft_label_loss
    monkeypatch.setattr(training, "soft_label_loss", lambda m, i: calls.append(1) or real_loss(m, i))
    out = tmp_path / "run"
    cfg = dict(
        model=str(expert),
        samples=str(samples),
        output_dir=str(out),
        batch_size=8,
        grad_accum=1,
        learning_rate=5e-3,
        lora_dropout=0.0,
        save_steps=3,
    )
    first = train(TrainConfig(**cfg, max_steps=3), show_progress=False)
    assert (out / "checkpoint-3").is_dir()
    assert len(calls) == 3
    resumed = train(TrainConfig(**cfg, max_steps=12, resume=True), show_progress=False)
    assert resumed["optimizer_steps"] == 12
    assert len(calls) == 3 + 9  # continued from checkpoint-3 instead of starting again
    tok = load_tokenizer(str(expert))
    ex = to_examples(read_records(samples), tok, 420, "Please reason step by step.")
    from lightreasoner.models import load_with_adapter

    base = load_model(str(expert))
    before = soft_label_loss(base, SoftLabelCollator(tok.pad_token_id)(list(enumerate(ex)))).item()
    tuned = load_with_adapter(load_model(str(expert)), out)
    after = soft_label_loss(tuned, SoftLabelCollator(tok.pad_token_id)(list(enumerate(ex)))).item()
    assert after < before
    assert first["optimizer_steps"] == 3


def test_trajectory_order_is_reshuffled_every_epoch(pair, samples):
    from lightreasoner.training import TrajectorySampler

    tok = load_tokenizer(str(pair[0]))
    ex = to_examples(read_records(samples), tok, 420, "Please reason step by step.")
    sampler = TrajectorySampler(ex, seed=3)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert all(sorted(o) == list(range(len(ex))) for o in orders)
    assert orders[0] != orders[1] or orders[1] != orders[2]
    for order in orders:  # each trajectory's records together, by prefix length
        groups = [ex[i].group for i in order]
        assert len([g for k, g in enumerate(groups) if k == 0 or g != groups[k - 1]]) == len(set(groups))
        for a, b in zip(order, order[1:]):
            if ex[a].group == ex[b].group:
                assert len(ex[a].input_ids) <= len(ex[b].input_ids)


@pytest.mark.parametrize("order", ["random", "trajectory"])
def test_order_option_and_tuned_tokens_count_records_with_a_loss(pair, samples, tmp_path, monkeypatch, order):
    """Random order mixes trajectories within a step; --max-steps mid-epoch counts only the
    records that received a loss, across a resume."""
    from lightreasoner import training

    expert, _ = pair
    tok = load_tokenizer(str(expert))
    ex = to_examples(read_records(samples), tok, 420, "Please reason step by step.")
    assert len(ex) > 8
    batches = []
    real_loss = training.soft_label_loss
    monkeypatch.setattr(
        training, "soft_label_loss", lambda m, i: batches.append(i["record_index"].tolist()) or real_loss(m, i)
    )
    cfg = dict(
        model=str(expert),
        samples=str(samples),
        output_dir=str(tmp_path),
        batch_size=4,
        grad_accum=1,
        save_steps=1,
        order=order,
    )
    first = train(TrainConfig(**cfg, max_steps=1), show_progress=False)
    resumed = train(TrainConfig(**cfg, max_steps=2, resume=True), show_progress=False)
    assert first["tuned_tokens"] == 4 and resumed["tuned_tokens"] == 8 and resumed["order"] == order
    groups_per_batch = [len({ex[i].group for i in b}) for b in batches]
    if order == "trajectory":
        assert max(groups_per_batch) <= 2
    else:
        assert max(groups_per_batch) >= 2


def test_resume_refuses_checkpoints_of_other_inputs(pair, samples, tmp_path):
    from lightreasoner.errors import LightReasonerError

    cfg = dict(
        model=str(pair[0]), samples=str(samples), output_dir=str(tmp_path), batch_size=4, grad_accum=1, save_steps=1
    )
    train(TrainConfig(**cfg, max_steps=1), show_progress=False)
    with pytest.raises(LightReasonerError, match=r"changed: learning_rate"):
        train(TrainConfig(**cfg, max_steps=2, resume=True, learning_rate=1e-3), show_progress=False)
    other = tmp_path.parent / "other.jsonl"
    other.write_text(samples.read_text().splitlines()[0] + "\n")
    with pytest.raises(LightReasonerError, match=r"changed: samples"):
        train(TrainConfig(**{**cfg, "samples": str(other)}, max_steps=2, resume=True), show_progress=False)
    assert train(TrainConfig(**cfg, max_steps=2, resume=True), show_progress=False)["optimizer_steps"] == 2


def test_trainer_arguments_pass_through_yaml_and_flags(pair, tmp_path, monkeypatch, capsys):
    import lightreasoner.training as training
    from lightreasoner.cli import main
    from lightreasoner.config import installed_name, trainer_arg_names
    from lightreasoner.training import training_arguments

    cfg_file = tmp_path / "t.yaml"
    cfg_file.write_text("warmup_steps: 0.1\nweight_decay: 0.01\nbatch_size: 2\n")
    seen = {}
    monkeypatch.setattr(training, "train", lambda cfg, show_progress=True: seen.setdefault("cfg", cfg) and {})
    args = ["train", "-q", "--config", str(cfg_file), "--model", str(pair[0]), "--samples", "s.jsonl"]
    args += ["--output-dir", str(tmp_path / "o"), "--lr-scheduler-type", "cosine", "--activation-checkpointing"]
    assert main(args) == 0
    cfg = seen["cfg"]
    assert cfg.batch_size == 2
    ckpt = installed_name("activation_checkpointing", trainer_arg_names())  # gradient_checkpointing before 5.21
    want = {"warmup_steps": 0.1, "weight_decay": 0.01, "lr_scheduler_type": "cosine", ckpt: True}
    assert cfg.trainer_args == want
    targs = training_arguments(cfg, tmp_path / "o", torch.float32, torch.device("cpu"), False)
    assert targs.warmup_steps == 0.1 and targs.weight_decay == 0.01 and targs.gradient_checkpointing
    assert targs.lr_scheduler_type == "cosine" and targs.per_device_train_batch_size == 2

    for bad, message in [
        (["--warmup-ratio", "0.1"], "unknown option 'warmup_ratio'"),
        (["--per-device-train-batch-size", "4"], "use --batch-size"),
        (["--lr-scheduler-type", "sideways"], "not valid TrainingArguments"),
    ]:
        assert main([*args[:-3], *bad]) == 2
        assert message in capsys.readouterr().err
    cfg_file.write_text("warmup_stepz: 0.1\n")
    assert main(args[:-3]) == 2
    err = capsys.readouterr().err
    assert "unknown option 'warmup_stepz'" in err and "did you mean warmup_steps" in err
    with pytest.raises(SystemExit):  # other stages take no TrainingArguments
        main(["eval", "--model", "m", "--out", "o", "--warmup-steps", "0.1"])


def test_shipped_fsdp_and_deepspeed_configs_parse():
    from pathlib import Path

    from lightreasoner.config import TrainConfig, build, read_yaml, section

    repo = Path(__file__).resolve().parents[1]
    req = {"model": "m", "samples": "s", "output_dir": "o"}
    fsdp = repo / "configs" / "fsdp-train.yaml"
    cfg = build(TrainConfig, section(read_yaml(fsdp), "train", ("train",)), req, source=str(fsdp))
    assert cfg.trainer_args["fsdp"] is True and cfg.trainer_args["fsdp_config"]["version"] == 2
    ds = repo / "configs" / "deepspeed" / "train-zero2.yaml"
    try:
        import deepspeed  # noqa: F401
    except ImportError:  # the Trainer's own check refuses it, by name
        with pytest.raises(LightReasonerError, match="deepspeed"):
            build(TrainConfig, section(read_yaml(ds), "train", ("train",)), req, source=str(ds))
    else:
        from transformers.integrations import get_available_reporting_integrations

        if "tensorboard" not in get_available_reporting_integrations():  # the header says pip install tensorboard
            with pytest.raises(LightReasonerError, match="pip install tensorboard"):
                build(TrainConfig, section(read_yaml(ds), "train", ("train",)), req, source=str(ds))
        else:
            cfg = build(TrainConfig, section(read_yaml(ds), "train", ("train",)), req, source=str(ds))
            assert cfg.trainer_args["deepspeed"].endswith("zero2.json")
    assert "pip install deepspeed tensorboard" in ds.read_text()


REQUIRED = {"model": "m", "samples": "s", "output_dir": "o"}


@pytest.mark.parametrize("name", ["activation_checkpointing", "gradient_checkpointing"])
def test_either_checkpointing_name_reaches_the_installed_field(name, tmp_path):
    from lightreasoner.config import TRAINER_ARG_ALIASES, build, trainer_arg_names
    from lightreasoner.training import training_arguments

    known = trainer_arg_names()
    installed = "activation_checkpointing" if "activation_checkpointing" in known else "gradient_checkpointing"
    from_file = build(TrainConfig, {name: True, f"{name}_kwargs": {"use_reentrant": False}}, REQUIRED)
    flag = "--" + name.replace("_", "-")
    from_flag = build(TrainConfig, {}, REQUIRED, extra_flags=[flag])
    from_flag_value = build(TrainConfig, {}, REQUIRED, extra_flags=[f"{flag}=true"])
    for cfg in (from_file, from_flag, from_flag_value):
        assert cfg.trainer_args[installed] is True and not set(cfg.trainer_args) - {installed, f"{installed}_kwargs"}
        args = training_arguments(cfg, tmp_path, torch.float32, torch.device("cpu"), False)
        assert args.gradient_checkpointing is True  # the name the Trainer reads in every version
    assert from_file.trainer_args[f"{installed}_kwargs"] == {"use_reentrant": False}
    assert set(TRAINER_ARG_ALIASES) | set(TRAINER_ARG_ALIASES.values()) >= {installed}


def test_report_to_a_missing_integration_is_refused_before_training(monkeypatch):
    import transformers.integrations

    from lightreasoner.config import build

    monkeypatch.setattr(transformers.integrations, "get_available_reporting_integrations", lambda: [])
    with pytest.raises(LightReasonerError, match=r"report_to tensorboard: not installed \(pip install tensorboard\)"):
        build(TrainConfig, {"report_to": "tensorboard"}, REQUIRED, source="t.yaml")
    with pytest.raises(LightReasonerError, match="--report-to: report_to wandb"):
        build(TrainConfig, {}, REQUIRED, extra_flags=["--report-to", "wandb"])
    assert build(TrainConfig, {"report_to": "none"}, REQUIRED).trainer_args == {"report_to": "none"}
    monkeypatch.setattr(transformers.integrations, "get_available_reporting_integrations", lambda: ["tensorboard"])
    assert build(TrainConfig, {"report_to": ["tensorboard"]}, REQUIRED).trainer_args == {"report_to": ["tensorboard"]}


def test_checking_trainer_arguments_touches_no_gpu_nor_process_group(monkeypatch):
    """`lightreasoner run` checks every stage's TrainingArguments fields up front: that must not
    set a CUDA device (a context on GPU 0 for the whole run), start accelerate's state or leave
    environment variables behind (TrainingArguments.__post_init__ sets up devices)."""
    import os

    from accelerate import PartialState

    from lightreasoner.config import build

    def no_gpu(*a, **k):
        raise AssertionError("a CUDA device was set up")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", no_gpu)
    monkeypatch.setattr(torch.cuda, "current_device", no_gpu)
    state, env = dict(PartialState._shared_state), dict(os.environ)
    cfg = build(TrainConfig, {"warmup_steps": 0.1, "torch_compile": True}, REQUIRED)
    assert cfg.trainer_args == {"warmup_steps": 0.1, "torch_compile": True}
    assert dict(PartialState._shared_state) == state and dict(os.environ) == env


def test_training_on_a_gpu_keeps_attention_off_cudnn():
    from lightreasoner.training import avoid_cudnn_attention

    assert torch.backends.cuda.cudnn_sdp_enabled()
    assert not avoid_cudnn_attention(torch.device("cpu")) and torch.backends.cuda.cudnn_sdp_enabled()
    try:
        assert avoid_cudnn_attention(torch.device("cuda", 0)) and not torch.backends.cuda.cudnn_sdp_enabled()
        assert not avoid_cudnn_attention(torch.device("cuda", 0))  # already off
    finally:
        torch.backends.cuda.enable_cudnn_sdp(True)
