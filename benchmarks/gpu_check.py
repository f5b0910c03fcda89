"""GPU self-check: the paths a GPU takes, on tiny models built here, in a few minutes.

    python benchmarks/gpu_check.py                 # on a CUDA machine, no network needed
    python benchmarks/gpu_check.py --cpu-subset    # elsewhere: the checks that need no GPU

Each check prints PASS, WARN, FAIL or SKIP with its figures; the exit status is 1 when a
check failed, 0 otherwise, and 2 on a machine without CUDA unless ``--cpu-subset`` is given
(that run is labelled CPU SUBSET: it is no GPU check). The checks:

- ``sdpa``: PyTorch's attention with a left-padded boolean mask, per kernel (default choice,
  cuDNN off, each kernel alone): whether queries that see nothing come out NaN (cuDNN's do)
  and whether the others match a float64 reference; the same with the masks LightReasoner
  passes (padding queries see themselves), where every row must be finite.
- ``sdpa-backward``: the cuDNN backward fault of PyTorch issue 196678 (NaN query gradients
  with a mask at lengths 64 mod 128): WARN when the default kernel has it, with the remedy.
- ``decoder``: the batched decoder against one prompt at a time (float32: the same ids;
  bfloat16: the same ids up to near-ties), finite logits, and what the plain 2D mask would
  have given; top-p draws that do not depend on the batch.
- ``vllm-sample``: hf and vLLM trajectories of the same prompts (the same up to near-ties),
  ``sample`` end to end with both backends (both scoring the expert teacher-forced, as vLLM's
  path must, so the records are comparable), GPU memory back after the engine closes.
- ``train``: 4 optimizer steps with activation checkpointing: finite losses, gradients that
  reach the adapter.
- ``vllm-eval``: ``eval --adapter`` with hf and vLLM, both with the LoRA unmerged in bf16
  (the model every backend evaluates): the same completions up to near-ties.
- ``two-gpus`` (2 GPUs or more): ``sample``, ``eval`` and ``train`` (float32: Adam's first
  steps are sign-like, so bf16 rounding of near-zero gradients flips whole steps) in 2
  processes give what 1 process gives, with work units small enough that both processes
  get some; ``eval --backend vllm`` in 2 processes finishes (within a timeout: an engine that
  inherits the launcher's store variable waits 600 s, then fails) and gives 1 process's rows;
  a one-process engine asked for ``--device cuda:1`` takes its memory on GPU 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # tiny: in-process models and tokenizer
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

CHECKS = ("sdpa", "sdpa-backward", "decoder", "vllm-sample", "train", "vllm-eval", "two-gpus")
GPU_ONLY = {"sdpa-backward": "cuDNN attention is CUDA only", "two-gpus": "needs CUDA"}
NEAR_TIE = {torch.float32: 1e-3, torch.bfloat16: 0.1}
"""Raw-logit gap (of the hf model, per dtype) under which two kernels may pick different tokens."""


@dataclass
class Result:
    name: str
    status: str  # PASS, WARN, FAIL, SKIP
    figures: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Setup:
    """What the checks share: the device, the tiny models and the files made from them."""

    device: torch.device
    root: Path
    expert: str = ""
    amateur: str = ""
    problems: str = ""
    records: str = ""
    adapter: str = ""
    vllm: bool = False
    prompts: int = 12  # prompts each decoding comparison takes
    tokens: int = 24  # new tokens per completion
    eval_limit: int = 8  # GSM8K problems each evaluation takes
    sample_group: int = 4  # work unit of sample: 16 problems are 4 units, 2 for each of 2 processes
    eval_group: int = 2  # work unit of eval: 8 questions are 4 units

    @property
    def log(self) -> Path:
        """Where the commands the checks run write their output."""
        return self.root / "cli.log"


def build_models(root: Path) -> tuple[str, str]:
    """A Qwen2-shaped expert (2 layers) and amateur (1 layer), hidden 256 with 4 heads: head
    dimension 64, which vLLM's attention kernels take; one BPE tokenizer with a chat template
    (tests/tiny.py); 2048 positions, so a GSM8K prompt fits vLLM's model length."""
    import tiny
    from transformers import Qwen2Config, Qwen2ForCausalLM

    paths = []
    for name, layers, seed in (("expert", 2, 1), ("amateur", 1, 2)):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        tok = tiny.make_tokenizer(d)
        torch.manual_seed(seed)
        cfg = Qwen2Config(vocab_size=len(tok) + 20, hidden_size=256, intermediate_size=512, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                          initializer_range=0.08, tie_word_embeddings=False, eos_token_id=0, pad_token_id=0,
                          bos_token_id=None)  # fmt: skip
        model = Qwen2ForCausalLM(cfg)
        model.generation_config.eos_token_id = 0
        model.save_pretrained(d)
        paths.append(str(d))
    return paths[0], paths[1]


def write_problems(path: Path, n: int = 16) -> str:
    import tiny

    lines = [json.dumps({"question": f"{tiny.CORPUS[i % len(tiny.CORPUS)]} ({i})"}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def prompts_of_many_lengths(tok, n: int = 12) -> list[list[int]]:
    import tiny

    from lightreasoner.prompts import EVAL_SYSTEM_PROMPT, encode_prompt

    prompts = [encode_prompt(tok, " ".join(tiny.CORPUS[: 1 + i % 4]) + f" ({i})", EVAL_SYSTEM_PROMPT) for i in range(n)]
    prompts[3] = prompts[3][:7]  # a very short one: much left padding beside it
    return prompts


def cli(s: Setup, command: str, *args: str) -> int:
    """``lightreasoner COMMAND -q ARGS`` in this process, its output appended to ``s.log``;
    its exit status."""
    from lightreasoner.cli import main

    with s.log.open("a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        print(f"$ lightreasoner {command} {' '.join(args)}", flush=True)
        try:
            return main([command, "-q", *args])
        except SystemExit as e:  # argparse's own errors
            return int(e.code or 0)


# ---------------------------------------------------------------- attention


def masked_reference(q, k, v, mask) -> torch.Tensor:
    """float64 attention ``[B, H, L, D]``; rows that see nothing are NaN."""
    scores = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, -math.inf)
    return torch.softmax(scores, -1) @ v.double()


def kernel_settings(device: torch.device) -> list[tuple[str, list | None]]:
    from torch.nn.attention import SDPBackend

    if device.type != "cuda":
        return [("default", None), ("math", [SDPBackend.MATH])]
    return [
        ("default", None),
        ("cuDNN off", [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]),
        ("cudnn", [SDPBackend.CUDNN_ATTENTION]),
        ("efficient", [SDPBackend.EFFICIENT_ATTENTION]),
        ("math", [SDPBackend.MATH]),
    ]


def attend(q, k, v, mask, backends) -> torch.Tensor | None:
    """SDPA with only ``backends`` allowed (all when None); None when none of them takes it."""
    from torch.nn.attention import sdpa_kernel

    ctx = sdpa_kernel(backends) if backends else contextlib.nullcontext()
    try:
        with ctx:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    except RuntimeError:
        return None


def check_sdpa(s: Setup) -> Result:
    """Blind query rows per kernel, with the plain padding mask and with ours."""
    from lightreasoner.generation.decoder import self_seeing_mask

    dtype = torch.bfloat16 if s.device.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    b, h, length, d, pad = 2, 4, 200, 64, 37
    q, k, v = (torch.randn(b, h, length, d, generator=g).to(s.device, dtype) for _ in range(3))
    padding = torch.ones(b, length, dtype=torch.long)
    padding[0, :pad] = 0  # the first row is left-padded: its first `pad` queries see nothing
    plain = torch.ones(length, length, dtype=torch.bool).tril()[None, None] & padding.bool()[:, None, None, :]
    ours = self_seeing_mask(padding, length)
    plain, ours = plain.to(s.device), ours.to(s.device)
    ref = masked_reference(q, k, v, plain)
    seeing = plain.any(-1).expand(b, h, length)
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-4
    figures, failed = [], False
    for name, backends in kernel_settings(s.device):
        out = attend(q, k, v, plain, backends)
        if out is None:
            figures.append(f"{name}: does not take a mask")
            continue
        blind = out[~seeing]
        blind_says = "NaN" if torch.isnan(blind).any() else "finite"
        err = float((out[seeing].double() - ref[seeing]).abs().max())
        with_ours = attend(q, k, v, ours, backends)
        ours_ok = with_ours is not None and bool(torch.isfinite(with_ours).all())
        same = with_ours is not None and float((with_ours[seeing].double() - ref[seeing]).abs().max()) <= tol
        failed |= not (err <= tol and ours_ok and same)
        figures.append(
            f"{name}: blind rows {blind_says}, others off by {err:.1e}; our mask: "
            f"{'all finite' if ours_ok else 'NOT FINITE'}{'' if same else ', OTHER RESULTS'}"
        )
    return Result("sdpa", "FAIL" if failed else "PASS", figures)


def check_sdpa_backward(s: Setup) -> Result:
    """PyTorch issue 196678: cuDNN's backward with a mask at length 64 mod 128 and very
    negative logits gives NaN query gradients; the other kernels do not."""
    figures, bad = [], {}
    for name, backends in kernel_settings(s.device)[:2]:
        g = torch.Generator().manual_seed(0)
        length, d = 704, 64
        q = (torch.randn(1, 1, length, d, generator=g) * 0.1).to(s.device, torch.bfloat16)
        k = (torch.randn(1, 1, length, d, generator=g) * 0.1).to(s.device, torch.bfloat16)
        v = torch.randn(1, 1, length, d, generator=g).to(s.device, torch.bfloat16)
        q[..., 0], k[..., 0] = 1.0, -120 * math.sqrt(d)  # every logit about -120
        q.requires_grad_()
        mask = torch.ones(length, length, dtype=torch.bool, device=s.device).tril()[None, None]
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel(backends) if backends else contextlib.nullcontext():
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            out.backward(torch.ones_like(out))
        bad[name] = int((~torch.isfinite(q.grad)).sum())
        figures.append(f"{name}: {bad[name]} non-finite query gradients")
    if bad["default"] and not bad.get("cuDNN off", 1):
        figures.append("training on this machine: set TORCH_CUDNN_SDPA_DEPRIORITIZED=1 (keeps PyTorch off cuDNN)")
        return Result("sdpa-backward", "WARN", figures)
    return Result("sdpa-backward", "FAIL" if any(bad.values()) else "PASS", figures)


# ---------------------------------------------------------------- decoding


@torch.inference_mode()
def first_divergence(model, prompt: list[int], a: list[int], b: list[int]) -> tuple[int, float] | None:
    """Where ``a`` and ``b`` first differ and ``model``'s raw-logit gap there between the two
    tokens (its own choice minus the other), or None when one is a prefix of the other."""
    j = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if j is None:
        return None
    ids = torch.tensor([prompt + a[:j]], device=model.device)
    logits = model(input_ids=ids).logits[0, -1].float()
    return j, float(logits[a[j]] - logits[b[j]])


def compare_ids(model, prompts, ours: list[list[int]], theirs: list[list[int]]) -> tuple[int, int, list[str]]:
    """(identical, near-ties, details of the real divergences) of two sets of completions; a
    near-tie is a first divergence where ``model``'s gap is within :data:`NEAR_TIE`."""
    same, near, real = 0, 0, []
    for i, (p, a, b) in enumerate(zip(prompts, ours, theirs)):
        if a == b:
            same += 1
            continue
        where = first_divergence(model, p, a, b)
        if where is None:  # one stopped earlier (budget or a stop id both accept)
            real.append(f"#{i}: lengths {len(a)} vs {len(b)}")
        elif abs(where[1]) <= NEAR_TIE[model.dtype]:
            near += 1
        else:
            real.append(f"#{i} at token {where[0]}: gap {where[1]:.3f}")
    return same, near, real


def check_decoder(s: Setup) -> Result:
    from lightreasoner.generation.decoder import TopPSampler, greedy_decode
    from lightreasoner.models import load_model, load_tokenizer

    tok = load_tokenizer(s.expert)
    prompts = prompts_of_many_lengths(tok, s.prompts)
    figures, failed = [], False
    dtypes = [torch.float32, torch.bfloat16] if s.device.type == "cuda" else [torch.float32]
    for dtype in dtypes:
        model = load_model(s.expert, dtype, s.device)
        batched = greedy_decode(model, prompts, s.tokens, [], tok.pad_token_id, 8, keep_logits=True)
        alone = greedy_decode(model, prompts, s.tokens, [], tok.pad_token_id, 1)
        finite = all(bool(torch.isfinite(c.logits).all()) for c in batched)
        same, near, real = compare_ids(model, prompts, [c.ids for c in batched], [c.ids for c in alone])
        name = str(dtype).removeprefix("torch.")
        failed |= not finite or bool(real)
        figures.append(
            f"{name}: {same}/{len(prompts)} batched = alone, {near} near-ties (gap <= {NEAR_TIE[dtype]}), "
            f"logits finite: {finite}"
        )
        figures += [f"{name} divergence {x}" for x in real]
        figures.append(f"{name}: plain 2D left-padded mask gives {plain_mask_nan_rows(model, prompts)} NaN logit rows")
        sampler = TopPSampler(0.7, 0.95, list(range(len(prompts))))
        drawn = greedy_decode(model, prompts, s.tokens, [], tok.pad_token_id, 8, pick=sampler)
        drawn_alone = greedy_decode(model, prompts, s.tokens, [], tok.pad_token_id, 1, pick=sampler)
        same_draws = sum(a.ids == b.ids for a, b in zip(drawn, drawn_alone))
        failed |= dtype == torch.float32 and same_draws < len(prompts) - near  # a near-tie may change a draw
        figures.append(f"{name}: top-p samples batched = alone for {same_draws}/{len(prompts)}")
        del model
    return Result("decoder", "FAIL" if failed else "PASS", figures)


@torch.inference_mode()
def plain_mask_nan_rows(model, prompts: list[list[int]]) -> int:
    """NaN logit rows of a left-padded batch given the plain 2D mask (what decoding passed before)."""
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    logits = model(input_ids=ids, attention_mask=mask).logits  # [B, L, V]
    return int(torch.isnan(logits).any(-1)[mask.bool()].sum())


def sample_args(s: Setup, out: Path, backend: str) -> list[str]:
    """``sample`` of the check's problems; the expert scored teacher-forced with every backend
    (vLLM's path can only score that way), so the records of two backends are comparable."""
    return ["sample", "--expert", s.expert, "--amateur", s.amateur, "--data", s.problems, "--out", str(out),
            "--max-new-tokens", str(s.tokens), "--beta=-inf", "--backend", backend, "--gpu-memory-utilization", "0.3",
            "--expert-scoring", "teacher-forced", "--group-size", str(s.sample_group), "--overwrite"]  # fmt: skip


def ensure_records(s: Setup) -> str:
    """Records of an hf ``sample`` run (made once)."""
    if not s.records:
        out = s.root / "records-hf.jsonl"
        if cli(s, *sample_args(s, out, "hf")) != 0:
            raise RuntimeError("sample --backend hf failed")
        s.records = str(out)
    return s.records


def free_gpu_bytes(device: torch.device, wait_for: int | None = None, patience_s: float = 20.0) -> int:
    """Free bytes of the device; with ``wait_for``, polls (up to ``patience_s``) until that much is free."""
    deadline = time.monotonic() + patience_s
    while True:
        free = torch.cuda.mem_get_info(device)[0]
        if wait_for is None or free >= wait_for or time.monotonic() > deadline:
            return free
        time.sleep(0.5)


def check_vllm_sample(s: Setup) -> Result:
    from lightreasoner.generation.decoder import greedy_decode
    from lightreasoner.generation.vllm import VLLMGenerator
    from lightreasoner.models import end_token_ids, load_model, load_tokenizer

    tok = load_tokenizer(s.expert)
    prompts = prompts_of_many_lengths(tok, s.prompts)
    before = free_gpu_bytes(s.device)
    gen = VLLMGenerator(s.expert, tok, s.tokens, "bfloat16", gpu_memory_utilization=0.3)
    try:
        theirs = [c.ids for c in gen.generate_ids(prompts)]
    finally:
        gen.close()
    back = free_gpu_bytes(s.device, wait_for=before - 2**30)
    model = load_model(s.expert, torch.bfloat16, s.device)
    stops = end_token_ids(model.generation_config.eos_token_id, tok, chat_ends=True)
    ours = [c.ids for c in greedy_decode(model, prompts, s.tokens, stops, tok.pad_token_id, 8)]
    same, near, real = compare_ids(model, prompts, ours, theirs)
    hf_out, v_out = s.root / "records-hf.jsonl", s.root / "records-vllm.jsonl"
    ensure_records(s)
    code = cli(s, *sample_args(s, v_out, "vllm"))
    lines = {b: p.read_text().splitlines() if p.exists() else [] for b, p in (("hf", hf_out), ("vllm", v_out))}
    agree = sum(a == b for a, b in zip(lines["hf"], lines["vllm"]))
    equal = code == 0 and lines["hf"] == lines["vllm"]
    memory_back = back >= before - 2**30
    figures = [
        f"trajectories: {same}/{len(prompts)} identical, {near} near-ties (gap <= {NEAR_TIE[torch.bfloat16]})",
        *[f"divergence {x}" for x in real],
        f"GPU memory free before the engine {before / 2**30:.1f} GiB, after it closed {back / 2**30:.1f} GiB",
        f"sample --backend vllm: exit {code}, {agree}/{len(lines['hf'])} records identical to --backend hf "
        "(both teacher-forced; a trajectory that differs at a near-tie differs from there on)",
    ]
    ok = not real and memory_back and code == 0
    return Result("vllm-sample", "FAIL" if not ok else "PASS" if equal else "WARN", figures)


def lora_b_norm(adapter: str) -> float:
    from safetensors.torch import load_file

    weights = load_file(str(Path(adapter) / "adapter_model.safetensors"))
    return float(sum(w.float().norm() for name, w in weights.items() if "lora_B" in name))


def train_args(s: Setup, out: Path, batch: int = 4) -> list[str]:
    return ["train", "--model", s.expert, "--samples", ensure_records(s), "--output-dir", str(out),
            "--max-steps", "4", "--batch-size", str(batch), "--grad-accum", "1", "--save-steps", "4",
            "--logging-steps", "1", "--lora-dropout", "0", "--activation-checkpointing"]  # fmt: skip


def check_train(s: Setup) -> Result:
    out = s.root / "adapter"
    code = cli(s, *train_args(s, out))
    if code != 0:
        return Result("train", "FAIL", [f"train exited {code}"])
    summary = json.loads((out / "train_summary.json").read_text())
    losses = [loss for _, loss in summary["loss_curve"]]
    finite = all(math.isfinite(x) for x in losses) and math.isfinite(summary["train_loss"])
    moved = lora_b_norm(str(out))
    s.adapter = str(out)
    shown = ", ".join(f"{x:.3f}" for x in losses)
    figures = [f"{summary['optimizer_steps']} steps with activation checkpointing, losses {shown}",
               f"|lora_B| after training {moved:.3g} (0 at the start)"]  # fmt: skip
    ok = finite and moved > 0 and summary["optimizer_steps"] == 4
    return Result("train", "PASS" if ok else "FAIL", figures)


def eval_args(s: Setup, out: Path, backend: str) -> list[str]:
    return ["eval", "--model", s.expert, "--adapter", s.adapter, "--benchmarks", "gsm8k", "--limit", str(s.eval_limit),
            "--max-new-tokens", str(s.tokens), "--dtype", "bfloat16", "--backend", backend, "--out", str(out),
            "--group-size", str(s.eval_group), "--gpu-memory-utilization", "0.3", "--overwrite"]  # fmt: skip


def check_vllm_eval(s: Setup) -> Result:
    from lightreasoner.generation.decoder import greedy_decode
    from lightreasoner.generation.vllm import VLLMGenerator
    from lightreasoner.models import end_token_ids, load_model, load_tokenizer, merges_adapter, tuned_model

    if not s.adapter:
        return Result("vllm-eval", "SKIP", ["no adapter: the train check did not pass"])
    tok = load_tokenizer(s.expert)
    prompts = prompts_of_many_lengths(tok, s.prompts)
    gen = VLLMGenerator(s.expert, tok, s.tokens, "bfloat16", adapter=s.adapter, gpu_memory_utilization=0.3)
    try:
        theirs = [c.ids for c in gen.generate_ids(prompts)]
    finally:
        gen.close()
    # in bf16 every backend evaluates the LoRA unmerged (merges_adapter says no)
    model = tuned_model(load_model(s.expert, torch.bfloat16, s.device), s.adapter, merges_adapter(torch.bfloat16))
    stops = end_token_ids(model.generation_config.eos_token_id, tok, chat_ends=True)
    ours = [c.ids for c in greedy_decode(model, prompts, s.tokens, stops, tok.pad_token_id, 8)]
    same, near, real = compare_ids(model, prompts, ours, theirs)
    codes = {b: cli(s, *eval_args(s, s.root / f"eval-{b}", b)) for b in ("hf", "vllm")}
    rows = {b: (s.root / f"eval-{b}" / "gsm8k.jsonl").read_text().splitlines() for b in codes if codes[b] == 0}
    agree = sum(a == b for a, b in zip(*rows.values())) if len(rows) == 2 else 0
    figures = [
        f"completions (LoRA unmerged in bf16, hf and vLLM): {same}/{len(prompts)} identical, {near} near-ties",
        *[f"divergence {x}" for x in real],
        f"eval --adapter: exit hf {codes['hf']}, vllm {codes['vllm']}; {agree}/{s.eval_limit} rows identical",
    ]
    ok = not real and set(codes.values()) == {0}
    return Result("vllm-eval", "PASS" if ok else "FAIL", figures)


LAUNCH_TIMEOUT_S = 420
"""How long a 2-process command may run: each takes well under a minute on tiny models, and an
engine that inherits the launcher's store variable waits 600 s before it fails."""


def launch(s: Setup, command: str, *args: str, timeout_s: float = LAUNCH_TIMEOUT_S) -> int:
    """``lightreasoner COMMAND -q ARGS`` in 2 processes through accelerate (one GPU each); its
    exit status, 124 when it ran past ``timeout_s`` (then it is killed, launcher and ranks)."""
    import signal

    accelerate = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    cmd = [sys.executable, *accelerate, "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["-m", "lightreasoner", command, "-q", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    with s.log.open("a") as log:
        print(f"$ accelerate launch (2 processes) lightreasoner {command} {' '.join(args)}", file=log, flush=True)
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            print(f"(killed after {timeout_s:.0f} s)", file=log, flush=True)
            return 124


def rows_of(folder: Path) -> list[str] | None:
    path = folder / "gsm8k.jsonl"
    return path.read_text().splitlines() if path.exists() else None


def units(n: int, size: int) -> int:
    return -(-n // size)


def check_two_gpus(s: Setup) -> Result:
    """``sample``, ``train`` (the same command: the global batch is the same on 1 and 2
    processes; float32) and ``eval`` in 2 processes against 1 process, in work units that give
    both processes work; with vLLM, ``eval --backend vllm`` in 2 processes and ``--device cuda:1``."""
    if torch.cuda.device_count() < 2:
        return Result("two-gpus", "SKIP", [f"{torch.cuda.device_count()} GPU visible"])
    n_problems = sum(1 for x in Path(s.problems).read_text().splitlines() if x.strip())
    one, two = Path(ensure_records(s)), s.root / "records-2p.jsonl"
    code = launch(s, *sample_args(s, two, "hf"))
    same = code == 0 and two.read_text() == one.read_text()
    figures = [f"sample ({units(n_problems, s.sample_group)} units of {s.sample_group}): exit {code}, "
               f"records {'identical' if same else 'DIFFER'}"]  # fmt: skip
    failed, warned = not same, False

    fp32 = ["--dtype", "float32"]
    a1, a2 = s.root / "adapter-fp32-1p", s.root / "adapter-fp32-2p"
    code1 = cli(s, *train_args(s, a1), *fp32)
    code = launch(s, *train_args(s, a2), *fp32)
    gap = lora_b_gap(str(a1), str(a2)) if code == code1 == 0 else math.inf
    batches = [json.loads((a / "train_summary.json").read_text())["global_batch"] if c == 0 else None
               for a, c in ((a1, code1), (a2, code))]  # fmt: skip
    figures.append(f"train (float32): exit {code1} and {code}, global batch {batches[0]} and {batches[1]}, "
                   f"lora_B differs by {gap:.1%} of its norm")  # fmt: skip
    failed |= gap > 0.05 or batches[0] != batches[1]

    if not s.adapter:
        return Result("two-gpus", "FAIL", [*figures, "no adapter: the train check did not pass"])
    one_eval, two_eval = s.root / "eval-hf", s.root / "eval-2p"
    if rows_of(one_eval) is None:
        cli(s, *eval_args(s, one_eval, "hf"))
    code = launch(s, *eval_args(s, two_eval, "hf"))
    same = code == 0 and rows_of(one_eval) is not None and rows_of(one_eval) == rows_of(two_eval)
    figures.append(f"eval hf ({units(s.eval_limit, s.eval_group)} units of {s.eval_group}): exit {code}, "
                   f"rows {'identical' if same else 'DIFFER'}")  # fmt: skip
    failed |= not same

    if s.vllm:
        one_v, two_v = s.root / "eval-vllm", s.root / "eval-vllm-2p"
        if rows_of(one_v) is None:
            cli(s, *eval_args(s, one_v, "vllm"))
        t0 = time.perf_counter()
        code = launch(s, *eval_args(s, two_v, "vllm"))
        took = time.perf_counter() - t0
        a, b = rows_of(one_v), rows_of(two_v)
        agree = sum(x == y for x, y in zip(a or [], b or []))
        complete = code == 0 and b is not None and len(b) == s.eval_limit
        figures.append(f"eval vllm in 2 processes: exit {code} after {took:.0f} s"
                       f"{' (timed out: the engine waited for a store nobody serves?)' if code == 124 else ''}, "
                       f"{agree}/{s.eval_limit} rows identical to 1 process (vLLM's batches differ)")  # fmt: skip
        failed |= not complete
        warned |= complete and agree < s.eval_limit
        figures.append(engine_on_gpu_1(s))
        failed |= "NOT" in figures[-1]
    return Result("two-gpus", "FAIL" if failed else "WARN" if warned else "PASS", figures)


def engine_on_gpu_1(s: Setup) -> str:
    """A one-process engine asked for ``--device cuda:1`` takes its memory on GPU 1, not GPU 0."""
    from lightreasoner.generation.vllm import VLLMGenerator
    from lightreasoner.models import load_tokenizer

    before = [free_gpu_bytes(torch.device(f"cuda:{i}")) for i in (0, 1)]
    gen = VLLMGenerator(s.expert, load_tokenizer(s.expert), s.tokens, "bfloat16", gpu_memory_utilization=0.3,
                        device="cuda:1")  # fmt: skip
    try:
        during = [free_gpu_bytes(torch.device(f"cuda:{i}")) for i in (0, 1)]
    finally:
        gen.close()
    taken = [(b - d) / 2**30 for b, d in zip(before, during)]
    ok = taken[1] > 1.0 and taken[0] < 0.5 * taken[1]
    return (f"--device cuda:1: the engine took {taken[0]:.1f} GiB of GPU 0 and {taken[1]:.1f} GiB of GPU 1"
            f"{'' if ok else ' (NOT on GPU 1)'}")  # fmt: skip


def lora_b_gap(a: str, b: str) -> float:
    """|B_a - B_b| / |B_a| over the adapters' lora_B matrices (zero at the start: all update)."""
    from safetensors.torch import load_file

    wa, wb = (load_file(str(Path(x) / "adapter_model.safetensors")) for x in (a, b))
    keys = [k for k in wa if "lora_B" in k]
    diff = math.sqrt(sum(float((wa[k].float() - wb[k].float()).norm()) ** 2 for k in keys))
    return diff / max(1e-12, math.sqrt(sum(float(wa[k].float().norm()) ** 2 for k in keys)))


# ---------------------------------------------------------------- running


RUNNERS: dict[str, Callable[[Setup], Result]] = {
    "sdpa": check_sdpa,
    "sdpa-backward": check_sdpa_backward,
    "decoder": check_decoder,
    "vllm-sample": check_vllm_sample,
    "train": check_train,
    "vllm-eval": check_vllm_eval,
    "two-gpus": check_two_gpus,
}


def skip_reason(name: str, s: Setup) -> str | None:
    if s.device.type != "cuda" and name in GPU_ONLY:
        return GPU_ONLY[name]
    if name.startswith("vllm") and not s.vllm:
        return "vLLM is not installed" if s.device.type == "cuda" else "vLLM needs CUDA"
    return None


def run_check(name: str, s: Setup) -> Result:
    reason = skip_reason(name, s)
    if reason:
        return Result(name, "SKIP", [reason])
    t0 = time.perf_counter()
    try:
        result = RUNNERS[name](s)
    except Exception as e:  # a check that breaks is a failed check; the others still run
        result = Result(name, "FAIL", [f"{type(e).__name__}: {e}"])
    result.seconds = time.perf_counter() - t0
    return result


def environment(device: torch.device, vllm: bool) -> list[str]:
    import transformers

    lines = [f"torch {torch.__version__}, transformers {transformers.__version__}"]
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        lines.append(
            f"{p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
            f"{torch.cuda.device_count()} GPU(s), cuDNN {torch.backends.cudnn.version()}, "
            f"cuDNN attention enabled: {torch.backends.cuda.cudnn_sdp_enabled()}, "
            f"TORCH_CUDNN_SDPA_DEPRIORITIZED={os.environ.get('TORCH_CUDNN_SDPA_DEPRIORITIZED', '')!r}"
        )
    if vllm:
        import vllm as v

        lines.append(f"vLLM {v.__version__}")
    return lines


def vllm_importable() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-subset", action="store_true", help="without CUDA: run the checks that need no GPU")
    ap.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated checks ({', '.join(CHECKS)})")
    ap.add_argument("--out", help="keep the models and outputs here (default: a temporary folder)")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        ap.error(f"unknown checks {unknown}; choose from {', '.join(CHECKS)}")
    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_subset:
        print("gpu_check: no CUDA device is visible (torch.cuda.is_available() is False). This is a GPU "
              "self-check: run it on a machine with an NVIDIA GPU, or pass --cpu-subset for the checks "
              "that need none.", file=sys.stderr)  # fmt: skip
        return 2
    device = torch.device("cuda") if cuda else torch.device("cpu")
    with contextlib.ExitStack() as stack:
        root = Path(args.out) if args.out else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        root.mkdir(parents=True, exist_ok=True)
        s = Setup(device, root, vllm=cuda and vllm_importable())
        print("GPU SELF-CHECK" if cuda else "CPU SUBSET (no CUDA device: this is not a GPU check)")
        for line in environment(device, s.vllm):
            print(f"  {line}")
        s.expert, s.amateur = build_models(root / "models")
        s.problems = write_problems(root / "problems.jsonl")
        results = []
        for name in names:
            r = run_check(name, s)
            results.append(r)
            print(f"{r.status:5} {r.name:14} {r.seconds:6.1f} s")
            for f in r.figures:
                print(f"        {f}")
            sys.stdout.flush()
        (root / "gpu_check.json").write_text(json.dumps([vars(r) for r in results], indent=1))
        if any(r.status == "FAIL" for r in results):
            print(f"the commands' output: {s.log}" + ("" if args.out else " (pass --out DIR to keep it)"))
    counts = {k: sum(r.status == k for r in results) for k in ("PASS", "WARN", "FAIL", "SKIP")}
    print(", ".join(f"{v} {k.lower()}" for k, v in counts.items()) + ("" if cuda else " (CPU subset)"))
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
