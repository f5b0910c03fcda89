"""Stage 2: LoRA fine-tuning of the expert on contrastive soft labels.

Loss per record: D_KL(v_C ‖ p_θ) with p_θ = softmax of the logits at the record's last
position (prompt + prefix), averaged over the records of a batch ("batchmean").

Order (``order``), drawn anew every epoch from the seed:

- ``random`` (default): records drawn at random, as the release does, so every optimizer
  step mixes records of many trajectories;
- ``trajectory``: trajectories in random order, the records of each by prefix length, so a
  micro-batch of ``batch_size`` records spans one or two trajectories: faster (below),
  but each step sees only one or two trajectories.

Packing: all records of one trajectory share the prompt and differ only in prefix
length, so one forward over prompt + longest prefix gives every record's logits. The
collator packs the records of a micro-batch that come from the same trajectory (always
with ``trajectory`` order; whenever two meet in a micro-batch with ``random``).
``pack=False`` runs the same records one sequence each (the release's way).
"""

from __future__ import annotations

import json
import logging
import random
import time
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, TaskType, get_peft_model
from torch.utils.data import Dataset, Sampler
from transformers import PreTrainedTokenizerBase, Trainer, TrainingArguments, set_seed

from . import faults
from .config import LoraOptions, TrainConfig, installed_name, trainer_arg_names
from .contrast import soft_label_kl
from .distributed import is_main, main_lock, rank_and_world, single_device_warning, timeout_s
from .errors import LightReasonerError
from .files import TRAIN_SUMMARY
from .io import atomic_write_json, check_same_settings, file_fingerprint, model_fingerprint
from .models import load_model, load_tokenizer, logit_vocab_size, resolve_device, resolve_dtype, resolve_source
from .prompts import build_prompt
from .records import SEEN_RECORDS, SoftLabelRecord, last_checkpoint, read_records

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


@dataclass
class TrainExample:
    """One record ready for the model: ``input_ids`` = prompt + prefix; the label is for
    the token after the last id. ``group`` identifies the trajectory."""

    input_ids: list[int]
    target_ids: list[int]
    target_weights: list[float]
    group: int


def to_examples(
    records: list[SoftLabelRecord], tokenizer: PreTrainedTokenizerBase, vocab: int, system_prompt: str
) -> list[TrainExample]:
    """Exact records use their stored ids; release records rebuild the prompt from the
    question and tokenise ``prompt + prefix`` as one string, as the release does."""
    groups: dict[str, int] = {}
    out = []
    for r in records:
        key = f"{r.problem_index}|{r.question_text}" if r.problem_index is not None else r.question_text
        group = groups.setdefault(key, len(groups))
        if r.is_exact:
            ids = list(r.prompt_token_ids) + list(r.prefix_token_ids)
        else:
            text = build_prompt(tokenizer, r.question_text, system_prompt) + r.prefix
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        pairs = [(t, w) for t, w in zip(r.token_ids, r.weights) if t < vocab]
        if not pairs:
            continue
        out.append(TrainExample(ids, [t for t, _ in pairs], [w for _, w in pairs], group))
    return out


def trajectory_order(examples: list[TrainExample], seed: int) -> list[int]:
    """Indices of ``examples``: trajectories in a seeded random order, the records of each
    by prefix length."""
    by_group: dict[int, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_group[ex.group].append(i)
    keys = list(by_group)
    random.Random(seed).shuffle(keys)
    return [i for k in keys for i in sorted(by_group[k], key=lambda i: len(examples[i].input_ids))]


class TrajectorySampler(Sampler[int]):
    """:func:`trajectory_order`, reshuffled every epoch (seed + epoch); the Trainer calls
    :meth:`set_epoch`."""

    def __init__(self, examples: list[TrainExample], seed: int):
        self.examples, self.seed, self.epoch = examples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self):
        return iter(trajectory_order(self.examples, self.seed + self.epoch))


class IndexedDataset(Dataset):
    """A list of examples; each item is ``(index, example)`` so losses can note who was seen."""

    def __init__(self, examples: list[TrainExample]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[int, TrainExample]:
        return i, self.examples[i]


def _is_prefix(short: list[int], long: list[int]) -> bool:
    return len(short) <= len(long) and long[: len(short)] == short


@dataclass
class SoftLabelCollator:
    """Builds a micro-batch: sequences ``[S, L]`` and, per record, which sequence and
    position holds its logits, plus its sparse soft label ``[R, K]`` (zero-padded)."""

    pad_token_id: int
    pack: bool = True

    def __call__(self, batch: list[tuple[int, TrainExample]]) -> dict[str, torch.Tensor]:
        index = [i for i, _ in batch]
        batch = [ex for _, ex in batch]
        seqs: list[list[int]] = []
        groups: list[int] = []
        where: list[tuple[int, int]] = []
        # a record joins an open sequence of its trajectory when its ids are a prefix of
        # that sequence or extend it (then the sequence grows to the longer ids)
        for ex in batch:
            slot = None
            if self.pack:
                for s, (seq, g) in enumerate(zip(seqs, groups)):
                    if g == ex.group and (_is_prefix(ex.input_ids, seq) or _is_prefix(seq, ex.input_ids)):
                        slot = s
                        break
            if slot is None:
                seqs.append(list(ex.input_ids))
                groups.append(ex.group)
                slot = len(seqs) - 1
            elif len(ex.input_ids) > len(seqs[slot]):
                seqs[slot] = list(ex.input_ids)
            where.append((slot, len(ex.input_ids) - 1))
        width = max(map(len, seqs))
        k = max(len(ex.target_ids) for ex in batch)
        return {
            "input_ids": torch.tensor([s + [self.pad_token_id] * (width - len(s)) for s in seqs]),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs]),
            "record_index": torch.tensor(index),
            "record_seq": torch.tensor([w[0] for w in where]),
            "record_pos": torch.tensor([w[1] for w in where]),
            "target_ids": torch.tensor([ex.target_ids + [0] * (k - len(ex.target_ids)) for ex in batch]),
            "target_weights": torch.tensor(
                [ex.target_weights + [0.0] * (k - len(ex.target_weights)) for ex in batch], dtype=torch.float32
            ),
        }


def soft_label_loss(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over records of D_KL(v_C ‖ softmax(logits at the record's position))."""
    positions = torch.unique(inputs["record_pos"])  # sorted; only these positions need logits
    logits = model(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], logits_to_keep=positions
    ).logits  # [S, U, V]
    col = torch.searchsorted(positions, inputs["record_pos"])
    log_p = F.log_softmax(logits[inputs["record_seq"], col].float(), dim=-1)  # [R, V]
    log_q = log_p.gather(-1, inputs["target_ids"])  # [R, K]
    return soft_label_kl(inputs["target_weights"], log_q).mean()


def require_finite_loss(loss: torch.Tensor, step: int) -> None:
    """Stop with a clear error when a micro-batch's loss (a scalar) is NaN or infinite."""
    if bool(torch.isfinite(loss).all()):
        return
    raise LightReasonerError(
        f"the training loss is {float(loss)} at optimizer step {step}. This is a numerical fault, not a result: "
        "usually float16 overflow (use --dtype bfloat16) or an attention kernel's gradients (on H100/H200, "
        "PyTorch's cuDNN attention can give NaN query gradients with a padding mask, PyTorch issue 196678; "
        "TORCH_CUDNN_SDPA_DEPRIORITIZED=1 keeps PyTorch off it). python benchmarks/gpu_check.py tests this machine."
    )


class SeenTrainer(Trainer):
    """The transformers Trainer, noting which dataset rows (``record_index`` of each batch)
    received a loss; the set is saved with each checkpoint and restored on resume."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: set[int] = set()

    def note_seen(self, inputs: dict) -> None:
        self.seen.update(inputs["record_index"].tolist())

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """The Trainer's step, stopped at a non-finite loss (the Trainer itself only leaves such
        a loss out of its logs and steps on with NaN gradients)."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        require_finite_loss(loss, self.state.global_step)
        return loss

    def all_seen(self) -> set[int]:
        """The rows seen by every process (each process notes only its own batches)."""
        if self.args.world_size == 1:
            return set(self.seen)
        from accelerate.utils import gather_object

        return set(gather_object(sorted(self.seen)))

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        seen = self.all_seen()  # every process takes part
        if self.is_world_process_zero():
            folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            atomic_write_json(folder / SEEN_RECORDS, sorted(seen))
        faults.committed("train")  # the test kill hook: after a whole checkpoint

    def check_saveable(self) -> None:
        """Refuse, before training, an FSDP setup whose final save would write no adapter: the
        Trainer saves under FSDP only with a full state dict (FSDP2's default is sharded)."""
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None) if self.is_fsdp_enabled else None
        kind = str(getattr(plugin, "state_dict_type", ""))
        if plugin is not None and "FULL_STATE_DICT" not in kind:
            raise LightReasonerError(
                f"FSDP with state_dict_type {kind.rsplit('.', 1)[-1]} saves no adapter at the end: set "
                "fsdp_config: {state_dict_type: FULL_STATE_DICT} (as configs/fsdp-train.yaml does)"
            )

    def save_adapter(self, out: Path) -> None:
        """The adapter and tokenizer in ``out``, through the Trainer, called on every process:
        under FSDP or DeepSpeed the parameters are sharded and ``save_model`` gathers them (a
        collective) before the main process writes them (PEFT's own save gathers nothing)."""
        self.save_model(str(out))
        if self.is_world_process_zero() and not (Path(out) / "adapter_config.json").exists():
            raise LightReasonerError(f"{out}: the Trainer saved no adapter (see the log above)")

    def load_seen(self, checkpoint: str | None) -> None:
        path = Path(checkpoint) / SEEN_RECORDS if checkpoint else None
        if path is not None and path.exists():
            self.seen = set(json.loads(path.read_text()))


class SoftLabelTrainer(SeenTrainer):
    """The soft-label KL loss and the record order of ``order``."""

    def __init__(self, *args, order: str = "random", **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_is_scaled_for_ga = False  # the loss is a per-micro-batch mean: let Trainer divide by GA
        self.order = order

    def _get_train_sampler(self, train_dataset=None):
        if self.order == "trajectory":
            return TrajectorySampler((train_dataset or self.train_dataset).examples, self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.note_seen(inputs)
        loss = soft_label_loss(model, inputs)
        return (loss, None) if return_outputs else loss


def lora_model(model, cfg: TrainConfig):
    targets = [t.strip() for t in cfg.target_modules.split(",") if t.strip()]
    lcfg = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type=TaskType.CAUSAL_LM,
    )
    set_seed(cfg.seed)  # the adapter's random initialisation is part of the run's seed
    try:
        return get_peft_model(model, lcfg)
    except ValueError as e:
        raise LightReasonerError(f"--target-modules {cfg.target_modules}: {e}") from e


def validate_lora(cfg: LoraOptions) -> None:
    for name in ("batch_size", "grad_accum", "lora_r", "save_steps", "logging_steps"):
        if getattr(cfg, name) < 1:
            raise LightReasonerError(f"--{name.replace('_', '-')}: must be at least 1")
    if cfg.epochs is None and cfg.max_steps < 1:
        raise LightReasonerError("--max-steps: must be at least 1 (or set --epochs)")
    if cfg.epochs is not None and cfg.epochs <= 0:
        raise LightReasonerError("--epochs: must be positive")
    if not (0 <= cfg.lora_dropout < 1):
        raise LightReasonerError("--lora-dropout: must be in [0, 1)")
    split_global_batch(cfg.batch_size, cfg.grad_accum, rank_and_world()[1])


def validate(cfg: TrainConfig) -> None:
    validate_lora(cfg)
    if cfg.order not in ("random", "trajectory"):
        raise LightReasonerError(f"--order {cfg.order!r}: choose random or trajectory")


def avoid_cudnn_attention(device: torch.device) -> bool:
    """On a GPU, keep PyTorch's attention off the cuDNN kernel while training: with a padding
    mask it can return NaN query gradients (PyTorch issue 196678, H100/H200); the flash and
    memory-efficient kernels remain. Returns whether it was turned off."""
    if device.type != "cuda" or not torch.backends.cuda.cudnn_sdp_enabled():
        return False
    torch.backends.cuda.enable_cudnn_sdp(False)
    log.info("training: cuDNN attention off (NaN gradients with padding masks, PyTorch issue 196678)")
    return True


def split_global_batch(batch_size: int, grad_accum: int, world: int) -> tuple[int, int]:
    """The per-process micro-batch and accumulation that keep the configured global batch
    ``batch_size`` x ``grad_accum`` on ``world`` processes: the world size divides the micro-batch
    as far as it can, the accumulation takes the rest (8 x 2 on 8 processes: 1 x 2 each; on 16:
    1 x 1). Every micro-batch has the same size, so each record weighs the same in a step's
    gradient (the loss is a mean per micro-batch, DDP averages the processes' gradients) and a
    step takes the same records (the sampler's order cut into micro-batches, dealt to the
    processes in turn) whatever the number of processes."""
    if world <= 1:
        return batch_size, grad_accum
    for share in sorted((d for d in range(1, world + 1) if world % d == 0), reverse=True):
        if batch_size % share == 0 and grad_accum % (world // share) == 0:
            return batch_size // share, grad_accum // (world // share)
    total = batch_size * grad_accum  # it splits whenever the world size divides it (prime by prime)
    counts = ", ".join(str(d) for d in range(2, total + 1) if total % d == 0)
    raise LightReasonerError(
        f"the global batch --batch-size {batch_size} x --grad-accum {grad_accum} = {total} cannot be shared by "
        f"{world} processes (each takes an equal micro-batch): run {counts or 'one'} processes, or choose a batch "
        f"size and accumulation whose product is a multiple of {world}"
    )


def batch_fields(cfg: LoraOptions) -> dict:
    """A training fingerprint's process count and global batch (the configured one, kept on any
    number of processes: :func:`split_global_batch`)."""
    world = rank_and_world()[1]
    split_global_batch(cfg.batch_size, cfg.grad_accum, world)  # refused here, before anything loads
    return {"processes": world, "global_batch": cfg.batch_size * cfg.grad_accum}


def training_arguments(
    cfg: LoraOptions, out: Path, dtype: torch.dtype, device: torch.device, show_progress: bool
) -> TrainingArguments:
    """The Trainer's arguments from our LoRA options (shared by ``train`` and ``sft``), then
    any other ``TrainingArguments`` field the user gave (``trainer_args``). The global batch is
    the configured ``batch_size`` x ``grad_accum`` on any number of processes
    (:func:`split_global_batch`). Under a launcher DDP gets ``find_unused_parameters=False``
    (every trainable parameter, the adapter's, takes part in every loss). One process never
    wraps the model in ``nn.DataParallel``: with several GPUs it uses one (and says how to
    launch on all). On a GPU, cuDNN attention is turned off (:func:`avoid_cudnn_attention`)."""
    avoid_cudnn_attention(device)
    world = rank_and_world()[1]
    args = TrainingArguments(**trainer_settings(cfg, out, dtype, device, show_progress, world))
    if args.world_size != world:
        raise LightReasonerError(f"the Trainer sees {args.world_size} processes, the launcher {world}")
    if args.n_gpu > 1:
        log.warning(single_device_warning(args.n_gpu))
        args._n_gpu = 1
    return args


def trainer_settings(
    cfg: LoraOptions, out: Path, dtype: torch.dtype, device: torch.device, show_progress: bool, world: int
) -> dict:
    """The ``TrainingArguments`` fields of :func:`training_arguments` on ``world`` processes."""
    per_device, accum = split_global_batch(cfg.batch_size, cfg.grad_accum, world)
    base = dict(
        output_dir=str(out),
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accum,
        learning_rate=cfg.learning_rate,
        max_steps=-1 if cfg.epochs is not None else cfg.max_steps,
        num_train_epochs=cfg.epochs or 1.0,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=2,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu=device.type == "cpu",
        seed=cfg.seed,
        report_to="none",
        remove_unused_columns=False,
        dataloader_pin_memory=device.type == "cuda",
        disable_tqdm=not show_progress,
        ddp_timeout=timeout_s(),  # the process group's own (created before the Trainer; it cannot change it)
    )
    if world > 1:  # the Trainer's default for a model that is no PreTrainedModel (a PeftModel) is True
        base["ddp_find_unused_parameters"] = False
    known = trainer_arg_names()
    extra = {installed_name(k, known): v for k, v in cfg.trainer_args.items()}  # also for configs built in Python
    return {**base, **extra}


def train(cfg: TrainConfig, show_progress: bool = True) -> dict:
    """Run stage 2; saves a PEFT adapter + tokenizer in ``output_dir`` and returns the summary."""
    validate(cfg)
    records = read_records(cfg.samples)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with main_lock(out):
        check_resume(cfg, out)
        return _train_locked(cfg, records, show_progress)


TRAIN_FINGERPRINT = "train_fingerprint.json"
RESULT_FIELDS = ("resume", "save_steps", "logging_steps", "max_steps", "epochs")
"""Options a resume may change (it continues to a new step count, saves or logs differently)."""


def train_fingerprint(cfg: TrainConfig) -> dict:
    """The inputs and settings a checkpoint depends on."""
    fp = {k: v for k, v in asdict(cfg).items() if k not in RESULT_FIELDS and k != "output_dir"}
    fp["model"] = model_fingerprint(cfg.model)
    fp["samples"] = file_fingerprint(cfg.samples)["sha256"]
    return fp | batch_fields(cfg)


def check_resume(cfg: TrainConfig, out: Path) -> None:
    """``--resume`` continues only checkpoints made from the same model, records and settings."""
    check_checkpoints(out, train_fingerprint(cfg), cfg.resume)


def check_checkpoints(out: Path, fp: dict, resume: bool) -> None:
    """Refuse to resume checkpoints in ``out`` made under another fingerprint; record ``fp``."""
    path = out / TRAIN_FINGERPRINT
    checkpoint = last_checkpoint(out) if resume and path.exists() else None
    if checkpoint:
        check_same_settings(
            with_batch_fields(json.loads(path.read_text()), checkpoint),
            fp,
            f"{out} holds checkpoints made from other inputs or settings",
            "choose another --output-dir or drop --resume",
        )
    if is_main():
        atomic_write_json(path, fp)


def with_batch_fields(fp: dict, checkpoint: str) -> dict:
    """A fingerprint written before it recorded ``processes`` and ``global_batch``, with them: the
    process count from the checkpoint (the Trainer saves ``rng_state.pth`` in one process,
    ``rng_state_<rank>.pth`` in several), the global batch as it then was (micro-batch x
    processes x accumulation)."""
    if "processes" in fp or "batch_size" not in fp:
        return fp
    ranks = len(list(Path(checkpoint).glob("rng_state_*.pth")))
    world = ranks if ranks > 1 else 1
    return fp | {"processes": world, "global_batch": fp["batch_size"] * world * fp.get("grad_accum", 1)}


def _train_locked(cfg: TrainConfig, records: list[SoftLabelRecord], show_progress: bool) -> dict:
    src = resolve_source(cfg.model, cfg.allow_pickle, "model")
    tok = load_tokenizer(src, cfg.trust_remote_code)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    model = load_model(src, dtype, device, cfg.allow_pickle, cfg.trust_remote_code)
    examples = to_examples(records, tok, logit_vocab_size(model), cfg.system_prompt)
    if not examples:
        raise LightReasonerError(f"{cfg.samples}: no record has a target id inside the model's vocabulary")
    dataset = IndexedDataset(examples)
    model = lora_model(model, cfg)
    model.train()

    out = Path(cfg.output_dir)
    args = training_arguments(cfg, out, dtype, device, show_progress)
    trainer = SoftLabelTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=SoftLabelCollator(tok.pad_token_id, cfg.pack),
        processing_class=tok,
        order=cfg.order,
    )
    resume = last_checkpoint(out) if cfg.resume else None
    if cfg.resume and resume is None:
        log.info("no checkpoint in %s; starting from the beginning", out)
    trainer.load_seen(resume)
    trainer.check_saveable()
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - t0
    trainer.save_adapter(out)  # every process: FSDP and DeepSpeed gather the sharded weights
    main = trainer.is_world_process_zero()
    steps = trainer.state.global_step
    world = trainer.args.world_size
    updates = round(trainer.state.epoch * len(dataset))  # records that received a loss, repeats included
    summary = {
        "records": len(dataset),
        "trajectories": len({e.group for e in examples}),
        "tuned_tokens": len(trainer.all_seen()),  # records that received a loss at least once
        "record_updates": updates,
        "order": cfg.order,
        "optimizer_steps": steps,
        "train_loss": result.training_loss,
        "loss_curve": [[h["step"], h["loss"]] for h in trainer.state.log_history if "loss" in h],
        "seconds": seconds,
        "seconds_per_record": seconds / max(1, updates),
        "packed": cfg.pack,
        "processes": world,
        "global_batch": args.per_device_train_batch_size * world * args.gradient_accumulation_steps,
        "config": asdict(cfg),
    }
    if main:
        atomic_write_json(out / TRAIN_SUMMARY, summary)
    return summary
