"""The vLLM backend (``pip install 'lightreasoner[vllm]'``, CUDA only): greedy decoding with
the settings of :mod:`.decoder` in an engine of vLLM's own, which batches continuously, so a
stage hands it all its work at once. It gives no full-vocabulary logits: contrastive
decoding and reference scoring stay with the transformers backend, and sampling scores
vLLM's trajectories in a teacher-forced pass. Everything here that touches vLLM imports it
when called, so this module loads without it."""

from __future__ import annotations

import gc
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from ..distributed import launched
from ..errors import LightReasonerError
from ..models import checkpoint_eos, dtype_name, end_token_ids, resolve_device, resolve_dtype
from .base import Backend, Generated, OnCompletion, OnResult, Request, generated
from .decoder import Completion

log = logging.getLogger(__name__)


def greedy_sampling_params(max_new_tokens: int, stop_ids: list[int]):
    """vLLM ``SamplingParams`` for the same decoding: temperature 0 (argmax; vLLM then turns
    top-p/top-k/min-p off), no penalty, stop at ``stop_ids``. Engines are built with
    ``generation_config="vllm"`` (:func:`vllm_engine_args`) so the checkpoint adds nothing."""
    from vllm import SamplingParams

    return SamplingParams(
        n=1,
        temperature=0.0,
        repetition_penalty=1.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        min_tokens=0,
        max_tokens=max_new_tokens,
        stop_token_ids=list(stop_ids),
        skip_special_tokens=True,
    )


def vllm_engine_args() -> dict:
    """Engine arguments that keep a checkpoint's ``generation_config.json`` out of decoding."""
    return {"generation_config": "vllm"}


VLLM_CHUNK = 2048
"""Prompts per vLLM call: large enough for continuous batching, small enough that an
evaluation commits its rows often (it resumes from them)."""


class VLLMGenerator:
    """vLLM greedy decoding (``pip install 'lightreasoner[vllm]'``, CUDA only).

    The engine is built in :func:`engine_environment`: on ``device`` (``cuda:N`` is GPU N of
    this process), and under a launcher on this process's own GPU, without the launcher's
    variables. Generation stops at the ids the transformers backend stops at: the checkpoint's
    generation-config EOS ids, the tokenizer's EOS and the chat end tokens.
    """

    def __init__(
        self,
        model: str,
        tokenizer: PreTrainedTokenizerBase,
        max_new_tokens: int,
        dtype: str,
        adapter: str | None = None,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        max_lora_rank: int | None = None,
        device: str = "auto",
    ):
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        engine: dict = {"tensor_parallel_size": tensor_parallel_size, **vllm_engine_args()}
        if gpu_memory_utilization is not None:
            engine["gpu_memory_utilization"] = gpu_memory_utilization
        if adapter:
            refuse_adapter(adapter, max_lora_rank)
            engine.update(enable_lora=True, max_lora_rank=max_lora_rank or lora_rank_slot(adapter))
        with engine_environment(device, tensor_parallel_size):
            self.llm = LLM(model=model, dtype=dtype, trust_remote_code=trust_remote_code, **engine)
        self.tok = tokenizer
        self.stops = end_token_ids(checkpoint_eos(model), tokenizer, chat_ends=True)
        self.params = greedy_sampling_params(max_new_tokens, self.stops)
        self.lora = LoRARequest("adapter", 1, adapter) if adapter else None

    def _outputs(self, prompt_ids: list[list[int]], progress: bool = False) -> Iterator[tuple[int, Any]]:
        """``(index, CompletionOutput)`` per prompt, in order, :data:`VLLM_CHUNK` prompts per call.
        Prompts go as token ids (vLLM's ``TokensPrompt``): a text prompt would be tokenised again
        with special tokens added (``InputPreprocessor._tokenize_prompt`` calls
        ``tokenizer.encode(prompt)``), a second BOS for Llama- or Mistral-style tokenizers."""
        for start in range(0, len(prompt_ids), VLLM_CHUNK):
            chunk = [{"prompt_token_ids": list(p)} for p in prompt_ids[start : start + VLLM_CHUNK]]
            outs = self.llm.generate(chunk, self.params, lora_request=self.lora, use_tqdm=progress)
            for i, o in enumerate(outs, start):
                yield i, o.outputs[0]

    def generate(self, prompts: list[str], on_result: OnResult | None = None) -> list[Generated]:
        """Completions of chat-formatted ``prompts``, tokenised as the transformers backend does
        (no special tokens added) and reported as it reports them (:func:`generated`)."""
        ids = [self.tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        callback = None if on_result is None else (lambda i, comp: on_result(i, generated(self.tok, comp)))
        return [generated(self.tok, c) for c in self.generate_ids(ids, on_result=callback)]

    def generate_ids(
        self,
        prompt_ids: list[list[int]],
        progress: bool = False,
        on_result: OnCompletion | None = None,
    ) -> list[Completion]:
        """Completions of tokenised prompts, as :func:`.decoder.greedy_decode` gives them: the
        ids up to and including the first stop id (vLLM keeps it in ``token_ids``), at most the
        budget; ``finished`` when the last id is a stop id."""
        comps: list[Completion] = []
        for i, c in self._outputs(prompt_ids, progress):
            ids = list(c.token_ids)
            finished = bool(ids) and ids[-1] in self.stops
            if c.finish_reason not in ("stop", "length") or (c.finish_reason == "stop" and not finished):
                raise LightReasonerError(
                    f"vLLM ended prompt {i} with finish_reason {c.finish_reason!r} (stop_reason {c.stop_reason!r}) "
                    "and no stop id; this vLLM version is not supported for sampling or evaluation, use --backend hf"
                )
            comps.append(Completion(ids, finished))
            if on_result is not None:
                on_result(i, comps[-1])
        return comps

    def close(self) -> None:
        """Stop the engine (its process) and free its GPU memory (once: a second call does nothing)."""
        if not hasattr(self, "llm"):
            return
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del self.llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if in_process_engine():
            log.warning(
                "VLLM_ENABLE_V1_MULTIPROCESSING=0: the engine ran in this process, which does not give its GPU "
                "memory back when it closes (vLLM issue 21073); a model loaded after it in this process gets "
                "only what is left. Unset the variable to run the engine in its own process"
            )


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ``max_lora_rank`` values vLLM accepts (``MaxLoRARanks`` in vllm/config/lora.py)."""


def adapter_config(adapter: str) -> dict:
    path = Path(adapter) / "adapter_config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LightReasonerError(f"--adapter {adapter}: no readable adapter_config.json ({e})") from None


def adapter_obstacles(adapter: str) -> list[str]:
    """What in a PEFT adapter vLLM's LoRA cannot serve: a rank above its largest
    ``max_lora_rank`` (vllm/config/lora.py), ``modules_to_save`` and DoRA (refused by
    ``PEFTHelper._validate_features``, vllm/lora/peft_helper.py), a bias, and per-module ranks
    or alphas (``PEFTHelper`` reads only the global ``r`` and ``lora_alpha``), and PEFT's
    ``lora_bias`` and ``trainable_token_indices`` (keys ``PEFTHelper.from_dict`` drops unread:
    their weights would be ignored or refused at the first request)."""
    cfg = adapter_config(adapter)
    out = []
    if int(cfg.get("r", 0)) > VLLM_LORA_RANKS[-1]:
        out.append(f"the adapter's rank r={cfg['r']} is above {VLLM_LORA_RANKS[-1]}, the largest vLLM serves")
    if cfg.get("modules_to_save"):
        out.append(f"the adapter fully trains {cfg['modules_to_save']} (modules_to_save), which vLLM refuses")
    if cfg.get("use_dora"):
        out.append("the adapter is a DoRA adapter, which vLLM refuses")
    if cfg.get("bias", "none") != "none":
        out.append(f"the adapter trains biases (bias={cfg['bias']!r}), which vLLM's LoRA does not")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        out.append("the adapter has per-module ranks or alphas, which vLLM ignores (it scales by lora_alpha / r)")
    if cfg.get("lora_bias"):
        out.append("the adapter has biases on its LoRA B matrices (lora_bias), which vLLM's LoRA does not read")
    if cfg.get("trainable_token_indices"):
        out.append("the adapter trains token embeddings (trainable_token_indices), which vLLM's LoRA does not read")
    return out


def refuse_adapter(adapter: str, max_lora_rank: int | None = None) -> None:
    """Stop before a vLLM engine starts when vLLM cannot serve ``adapter`` (or, given
    ``max_lora_rank``, when the adapter's rank is above it: vLLM would refuse it at its first request)."""
    problems = adapter_obstacles(adapter)
    r = int(adapter_config(adapter).get("r", 0))
    if max_lora_rank is not None and r > max_lora_rank:
        problems.append(f"--max-lora-rank {max_lora_rank} is below the adapter's rank r={r}")
    if problems:
        raise LightReasonerError(f"--backend vllm: {'; '.join(problems)}; use --backend hf")


def lora_rank_slot(adapter: str) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds the adapter's rank ``r``."""
    r = int(adapter_config(adapter)["r"])
    slot = next((k for k in VLLM_LORA_RANKS if k >= r), None)
    if slot is None:
        raise LightReasonerError(
            f"--backend vllm: the adapter's rank r={r} is above {VLLM_LORA_RANKS[-1]}, the largest max_lora_rank "
            "vLLM accepts; use --backend hf"
        )
    return slot


def vllm_obstacles(
    *,
    gguf: bool = False,
    device: str = "auto",
    trust_remote_code: bool = False,
    adapter: str | None = None,
    contrastive: bool = False,
    reference_scoring: bool = False,
) -> list[str]:
    """Why a vLLM engine cannot serve a request (empty: it can), each naming its option.

    Contrastive decoding and reference scoring need the full logits at every step, which vLLM
    does not return; a GGUF file loads through transformers' own GGUF reader here (vLLM's GGUF
    support wants another tokenizer and a subset of quantisations); a device other than CUDA;
    code shipped with the checkpoint (vLLM runs its own model code, not the checkpoint's); an
    adapter vLLM's LoRA refuses (:func:`adapter_obstacles`)."""
    out = []
    if contrastive:
        out.append("--contrastive-amateur: contrastive decoding needs both models' logits at every step")
    if reference_scoring:
        out.append("--reference-scoring checks the hf backend's fast path")
    if gguf:
        out.append("the model is a GGUF file")
    if not (device == "auto" or device.startswith("cuda")):
        out.append(f"--device {device}")
    if trust_remote_code:
        out.append("--trust-remote-code: the checkpoint's own model code runs only in transformers")
    if adapter:
        out += adapter_obstacles(adapter)
    return out


def check_engine_options(tensor_parallel_size: int, gpu_memory_utilization: float | None) -> None:
    if tensor_parallel_size < 1:
        raise LightReasonerError("--tensor-parallel-size: must be at least 1")
    if gpu_memory_utilization is not None and not (0 < gpu_memory_utilization <= 1):
        raise LightReasonerError("--gpu-memory-utilization: must be in (0, 1]")


def check_launch(tensor_parallel_size: int, device: str = "auto") -> None:
    """Refuse vLLM settings that cannot work under a launcher (one engine per process and GPU),
    and a ``device`` the engine cannot be put on (:func:`engine_gpus`)."""
    if launched() and tensor_parallel_size > 1:
        raise LightReasonerError(
            "--tensor-parallel-size > 1 under a launcher: use either one process with tensor parallelism, "
            "or one process per GPU (data parallelism), not both"
        )
    if launched() and in_process_engine():
        raise LightReasonerError(
            "VLLM_ENABLE_V1_MULTIPROCESSING=0 under a launcher: each process's engine must run in its own "
            "child process to see only that process's GPU; unset the variable"
        )
    engine_gpus(device, tensor_parallel_size)


def in_process_engine() -> bool:
    """Whether vLLM runs its engine in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``)
    rather than in a child process (its default)."""
    try:  # read as vLLM reads it (vllm/envs.py: ``bool(int(...))``), so "00" and " 0 " count too
        return not int(os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1"))
    except ValueError:
        return False  # not a number: vLLM itself refuses it when its engine starts


def visible_gpu(index: int, what: str | None = None) -> str:
    """GPU ``index`` of this process (``cuda:index``) as ``CUDA_VISIBLE_DEVICES`` names it: entry
    ``index`` of the variable's list (so ``4,5,6,7`` and 3 give ``7``), or ``index`` when it is unset."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not visible:
        return str(index)
    ids = [x.strip() for x in visible.split(",") if x.strip()]
    if index >= len(ids):
        raise LightReasonerError(f"{what or f'GPU {index}'} but CUDA_VISIBLE_DEVICES={visible} names {len(ids)} GPUs")
    return ids[index]


def rank_gpu() -> str:
    """This process's GPU under a launcher as ``CUDA_VISIBLE_DEVICES`` names it: entry
    ``LOCAL_RANK`` of the variable's list (so ``4,5,6,7`` and rank 3 give ``7``), or
    ``LOCAL_RANK`` when it is unset."""
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    return visible_gpu(rank, f"LOCAL_RANK {rank}")


def device_index(device: str) -> int | None:
    """N of ``cuda:N``; None for ``auto``, ``cuda`` and other devices."""
    kind, _, index = device.partition(":")
    if kind != "cuda" or not index:
        return None
    try:
        return int(index)
    except ValueError:
        raise LightReasonerError(f"--device {device}: expected cuda or cuda:N") from None


def engine_gpus(device: str, tensor_parallel_size: int) -> str | None:
    """What ``CUDA_VISIBLE_DEVICES`` the engine's process must see (None: leave it as it is).

    vLLM's single-process executor puts its worker on ``cuda:0`` of the engine's process unless
    the (deprecated) ``device`` engine argument names an index (``UniProcExecutor._distributed_args``,
    vllm/v1/executor/uniproc_executor.py), so ``--device cuda:N`` reaches the engine as the
    variable naming only GPU N. Under a launcher each process has its own GPU (:func:`rank_gpu`)
    and an explicit index is refused: it would put every rank on the same GPU."""
    index = device_index(device)
    if launched():
        if index is not None:
            raise LightReasonerError(
                f"--device {device} under a launcher: every process would use GPU {index}; pass --device cuda "
                "(or auto), so each process takes its own GPU (LOCAL_RANK), and choose the GPUs with "
                "CUDA_VISIBLE_DEVICES or accelerate's --gpu_ids"
            )
        return rank_gpu()
    if not index:  # auto, cuda, cuda:0: the engine's first visible GPU
        return None
    if tensor_parallel_size > 1:
        raise LightReasonerError(
            f"--device {device} with --tensor-parallel-size {tensor_parallel_size}: choose the engine's GPUs with "
            "CUDA_VISIBLE_DEVICES (and --device cuda) instead"
        )
    if in_process_engine():
        raise LightReasonerError(
            f"--device {device} with VLLM_ENABLE_V1_MULTIPROCESSING=0: an engine in this process runs on cuda:0; "
            f"set CUDA_VISIBLE_DEVICES={visible_gpu(index)} instead, or unset the variable"
        )
    return visible_gpu(index)


LAUNCHER_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)
LAUNCHER_PREFIXES = ("TORCHELASTIC_", "ROLE_")
"""The variables torch's elastic agent (``torchrun``, ``accelerate launch``) sets in every
worker (``LocalElasticAgent._start_workers``, torch/distributed/elastic/agent/server/
local_elastic_agent.py, torch 2.13), which an engine must not inherit."""


def launcher_variables() -> list[str]:
    """The launcher's variables present in this process's environment."""
    return sorted(k for k in os.environ if k in LAUNCHER_VARIABLES or k.startswith(LAUNCHER_PREFIXES))


COMPILE_CACHE = "VLLM_CACHE_ROOT"


@contextmanager
def engine_environment(device: str = "auto", tensor_parallel_size: int = 1) -> Iterator[None]:
    """The environment a vLLM engine is built in, put back afterwards (the engine's process
    inherits it when it starts):

    - without the launcher's variables (:data:`LAUNCHER_VARIABLES`). The elastic agent sets
      ``TORCHELASTIC_USE_AGENT_STORE=True`` in every worker; the engine's executor initialises
      its own one-process group at ``tcp://ip:port`` of a free port, and torch's
      ``_create_c10d_store`` (torch/distributed/rendezvous.py, torch 2.13) then makes a
      client-only TCPStore that nobody serves, which fails after its 600 s timeout (vLLM
      issue 19670). ``torchrun --nproc_per_node 1`` sets them too.
    - ``CUDA_VISIBLE_DEVICES`` naming only the engine's GPU (:func:`engine_gpus`); this
      process's PyTorch is initialised before, so ``cuda:N`` stays the same GPU here.
    - under a launcher with ``VLLM_COMPILE_CACHE_SAVE_FORMAT=unpacked`` (whose directories
      concurrent engines clobber, vLLM issue 24601), a compile cache of this rank's own
      (``$VLLM_CACHE_ROOT/rank<LOCAL_RANK>``); the default binary format is written atomically.
    """
    check_launch(tensor_parallel_size, device)
    gpus = engine_gpus(device, tensor_parallel_size)
    changes: dict[str, str | None] = {k: None for k in launcher_variables()}
    if gpus is not None:
        changes["CUDA_VISIBLE_DEVICES"] = gpus
    if launched() and os.environ.get("VLLM_COMPILE_CACHE_SAVE_FORMAT", "").strip().lower() == "unpacked":
        root = os.environ.get(COMPILE_CACHE) or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vllm"
        )
        changes[COMPILE_CACHE] = os.path.join(root, f"rank{os.environ.get('LOCAL_RANK', '0')}")
    if gpus is not None and torch.cuda.is_available():
        torch.cuda.init()  # PyTorch reads CUDA_VISIBLE_DEVICES once, when CUDA starts
    before = {k: os.environ.get(k) for k in changes}
    for k, v in changes.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


BATCH_INVARIANT = "VLLM_BATCH_INVARIANT"
"""vLLM's switch for its batch-invariant kernels: a request's output does not depend on the
other requests of a batch. Read when vLLM is imported and by its engine process, so it is
set (:func:`request_batch_invariance`) before anything imports vLLM."""


def request_batch_invariance() -> None:
    """Ask vLLM for batch-invariant kernels (``--batch-invariant``): sets :data:`BATCH_INVARIANT`
    in this process's environment, which the engine's process inherits. Call it first thing
    in a stage; :func:`check_batch_invariance` then checks that this vLLM has the mode."""
    os.environ[BATCH_INVARIANT] = "1"


def check_batch_invariance() -> None:
    """Stop with a clear error where this vLLM has no batch-invariant mode (the variable is not
    among the settings of ``vllm.envs``) or does not read it as on."""
    import vllm

    try:
        import vllm.envs as envs
    except ImportError:
        envs = None
    if BATCH_INVARIANT not in getattr(envs, "environment_variables", {}):
        raise LightReasonerError(
            f"--batch-invariant: vLLM {getattr(vllm, '__version__', '?')} has no batch-invariant mode "
            f"({BATCH_INVARIANT} is not among its settings); upgrade vLLM or leave the option out"
        )
    if not getattr(envs, BATCH_INVARIANT):
        raise LightReasonerError(f"--batch-invariant: vLLM does not see {BATCH_INVARIANT}=1 (it was imported first)")


def request_obstacles(req: Request) -> list[str]:
    """:func:`vllm_obstacles` of a request (its model resolved to see whether it is a GGUF file)."""
    src = req.source()
    return vllm_obstacles(
        gguf=bool(src.gguf_file),
        device=req.device,
        trust_remote_code=req.trust_remote_code,
        adapter=req.adapter,
        contrastive=bool(req.contrastive),
        reference_scoring=req.step_logits,
    )


def check_options(req: Request) -> None:
    """Refuse malformed engine options, whichever backend serves."""
    check_engine_options(req.tensor_parallel_size, req.gpu_memory_utilization)
    if req.max_lora_rank is not None and req.max_lora_rank not in VLLM_LORA_RANKS:
        raise LightReasonerError(f"--max-lora-rank: vLLM accepts {', '.join(map(str, VLLM_LORA_RANKS))}")


def prepare(req: Request) -> None:
    """Checks made once vLLM serves: the launcher's settings and the device (:func:`check_launch`)."""
    check_launch(req.tensor_parallel_size, req.device)


def open_vllm(req: Request) -> VLLMGenerator:
    """An engine for ``req``'s model (+ adapter, served as LoRA), in the dtype the hf backend
    resolves ``req.dtype`` to: vLLM's own ``auto`` keeps the checkpoint's dtype (float16 for a
    float16 checkpoint, where hf takes bfloat16 on a GPU that computes it natively)."""
    src = req.source()
    # the device's type is all the dtype needs (:func:`check_launch` has checked a cuda:N already)
    device = torch.device(req.device) if req.device.startswith("cuda") else resolve_device(req.device)
    return VLLMGenerator(
        src.path,
        req.tokenizer,
        req.max_new_tokens,
        dtype_name(resolve_dtype(req.dtype, device)),
        req.adapter,
        req.trust_remote_code,
        req.tensor_parallel_size,
        req.gpu_memory_utilization,
        req.max_lora_rank,
        device=req.device,
    )


BACKEND = Backend(
    name="vllm",
    open=open_vllm,
    available=lambda: vllm_available(),
    unavailable="vLLM is not installed or no CUDA GPU is visible",
    obstacles=request_obstacles,
    check_options=check_options,
    prepare=prepare,
    ask_batch_invariance=lambda: request_batch_invariance(),
    check_batch_invariance=lambda: check_batch_invariance(),
    together=True,
)
