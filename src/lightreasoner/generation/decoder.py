"""The decoder every in-process backend and stage shares: batched greedy (or seeded top-p)
decoding over a transformers model, optionally beside a second model (contrastive decoding).

Greedy means the argmax of the model's raw logits at every step — no temperature, no
top-k/top-p, no repetition or n-gram penalties, no minimum length — whatever the
checkpoint's ``generation_config.json`` holds. :func:`greedy_decode` runs its own loop
over the model's forward pass, so no processor of the checkpoint's config can enter;
:func:`.vllm.greedy_sampling_params` gives vLLM the same settings.

The decoder keeps a batch full: prompts are taken longest first, a finished sequence
leaves the batch at once (its rows of the KV cache are dropped) and waiting prompts take
its place (their prompts are run and their KV rows joined to the batch, left-padded to
the batch's width). Every row keeps its own position ids, so a row's logits do not
depend on which other rows share its batch, up to floating-point reduction order. Each
cache layer writes new keys and values into a buffer with room to spare
(:class:`GrowingLayer`) instead of concatenating the whole cache at every step.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from ..errors import LightReasonerError
from .sizing import batch_capacity, release_memory

log = logging.getLogger(__name__)


def last_positions(n: int, length: int, device: torch.device | str) -> torch.Tensor:
    """``logits_to_keep`` for the last ``n`` of ``length`` positions, as an index tensor ``[n]``.

    With an index tensor the model gathers those hidden states into a new, contiguous tensor
    before its output layer; with an int it slices them, a strided view. On CPUs, oneDNN's
    bfloat16 matmul of such a view can ask for batch x hidden x vocab elements (60 GB for 128
    rows of a 1.5B Qwen), fail, and stay off for the rest of the process, which makes every
    later bfloat16 matmul about 50 times slower."""
    return torch.arange(length - n, length, device=device)


def self_seeing_mask(mask: torch.Tensor, q_len: int, window: int | None = None) -> torch.Tensor:
    """Boolean attention ``[B, 1, q_len, L]`` (True: attend) for queries at the last ``q_len``
    of the ``L`` columns of a 2D mask ``[B, L]`` (1: a token): each query sees the tokens at or
    before its column (within ``window`` columns for a sliding-window layer) and always itself,
    so no query row sees nothing — a padding query sees only its own column."""
    length = mask.shape[1]
    q = torch.arange(length - q_len, length, device=mask.device)[:, None]  # [q, 1]
    k = torch.arange(length, device=mask.device)[None, :]  # [1, L]
    visible = k <= q
    if window is not None:
        visible = visible & (k > q - window)
    seen = visible[None, None] & mask.bool()[:, None, None, :]
    return seen | (k == q)[None, None]


def attention_mask_for(model: PreTrainedModel, mask: torch.Tensor, q_len: int) -> torch.Tensor | dict:
    """The ``attention_mask`` to pass for a forward over the last ``q_len`` columns of ``mask``
    ``[B, L]`` (1: a token).

    transformers builds its 4D mask as causal AND ``mask`` (``masking_utils.sdpa_mask``) and no
    longer lets a query that sees nothing (a left-padding position) see something, and PyTorch's
    cuDNN attention (preferred on H100/H200) returns NaN for such a row; the NaN then sits in the
    padding column's keys and values, and ``0 * NaN`` reaches every real row of the batch. So when
    some query would see nothing, the mask is given 4D from :func:`self_seeing_mask`, in the form
    the model's attention takes (``sdpa``: bool; ``eager``: additive float; with sliding-window
    layers, one per layer type). Otherwise, and for attention kernels that drop padding
    (flash-attention) or take another mask type, the 2D mask goes as it is."""
    impl = getattr(model.config, "_attn_implementation", None)
    windows = layer_windows(model.config.get_text_config())
    if impl not in ("sdpa", "eager") or windows is None:
        return mask
    if not any(blind_queries(mask, q_len, w) for w in windows.values()):
        return mask

    def form(m: torch.Tensor) -> torch.Tensor:
        if impl == "sdpa":
            return m
        return torch.zeros(m.shape, dtype=model.dtype, device=m.device).masked_fill(~m, torch.finfo(model.dtype).min)

    masks = {t: form(self_seeing_mask(mask, q_len, w)) for t, w in windows.items()}
    return masks["full_attention"] if list(masks) == ["full_attention"] else masks


def blind_queries(mask: torch.Tensor, q_len: int, window: int | None = None) -> bool:
    """Whether a query at the last ``q_len`` columns of ``mask`` ``[B, L]`` sees no token under
    the mask transformers builds (causal, within ``window`` columns when given, AND ``mask``)."""
    length = mask.shape[1]
    before = torch.nn.functional.pad(mask.long().cumsum(-1), (1, 0))  # [B, L+1]: tokens in columns < j
    q = torch.arange(length - q_len, length, device=mask.device)
    low = (q - window + 1).clamp(min=0) if window is not None else torch.zeros_like(q)
    seen = before[:, q + 1] - before[:, low]  # [B, q_len] tokens each query may see
    return bool((seen == 0).any())


def layer_windows(cfg) -> dict[str, int | None] | None:
    """Each attention layer type of a text config with its sliding window (None: full attention);
    None for a layout the 4D mask cannot follow (a window without layer types, other types)."""
    types = set(getattr(cfg, "layer_types", None) or ["full_attention"])
    window = getattr(cfg, "sliding_window", None)
    if getattr(cfg, "layer_types", None) is None and window is not None:
        return None
    if not types <= {"full_attention", "sliding_attention"} or (window is None and "sliding_attention" in types):
        return None
    return {t: (window if t == "sliding_attention" else None) for t in sorted(types)}


class NonFiniteLogits(LightReasonerError):
    """The model gave NaN or infinite logits."""


def require_finite(logits: torch.Tensor, what: str) -> None:
    """Stop when a row of ``logits`` ``[..., V]`` holds a NaN or +inf, or only -inf (its max is
    then not finite); decoding on would pick garbage tokens."""
    top = logits.amax(-1)
    if bool(torch.isfinite(top).all()):
        return
    bad = int((~torch.isfinite(top)).sum())
    raise NonFiniteLogits(
        f"{what}: {bad} of {top.numel()} rows of logits are NaN or infinite. This is a numerical fault, not a "
        "result: usually float16 overflow (use --dtype bfloat16 or float32) or a fault of an attention kernel "
        "(TORCH_CUDNN_SDPA_DEPRIORITIZED=1 keeps PyTorch off cuDNN attention; python benchmarks/gpu_check.py "
        "tests this machine's kernels)"
    )


def cache_kwarg(model: PreTrainedModel) -> str:
    """The name of the forward's cache argument: ``cache`` (transformers >= 5.x, where
    ``past_key_values`` is deprecated) or ``past_key_values``; for a PEFT model, its base
    model's (PEFT passes it on)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@dataclass
class Completion:
    """One decoded sequence: ``ids`` up to and including the first stop id, at most the
    budget; ``finished`` is False when the budget ran out first; ``logits`` (when asked)
    are the raw logits ``[len(ids), vocab]`` (model dtype) that chose each id."""

    ids: list[int]
    finished: bool
    logits: torch.Tensor | None = None


@dataclass
class _Rows:
    """The batch being decoded: per row its prompt index, ids so far and kept logits."""

    index: list[int] = field(default_factory=list)
    ids: list[list[int]] = field(default_factory=list)
    logits: list[list[torch.Tensor]] = field(default_factory=list)


class GrowingLayer(DynamicLayer):
    """A dynamic cache layer whose keys and values ``[B, heads, L, head_dim]`` are views of
    a buffer with ``room`` spare positions: a step writes its token in place (amortised
    O(1)) where :class:`DynamicLayer` copies the whole layer (O(L)) with ``torch.cat``."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int):
        super().__init__()
        self.room = max(16, room)
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self.adopt(keys, values)

    def adopt(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Make ``keys``/``values`` the layer's content, copied into a fresh buffer."""
        b, h, n, d = keys.shape
        self._k = keys.new_empty(b, h, n + self.room, d)
        self._v = values.new_empty(b, h, n + self.room, d)
        self._k[:, :, :n], self._v[:, :, :n] = keys, values
        self._n = n
        self.keys, self.values = self._k[:, :, :n], self._v[:, :, :n]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n = self._n + key_states.shape[-2]
        if n > self._k.shape[2]:
            self.adopt(self.keys, self.values)
        self._k[:, :, self._n : n], self._v[:, :, self._n : n] = key_states, value_states
        self._n = n
        self.keys, self.values = self._k[:, :, :n], self._v[:, :, :n]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.adopt(self.keys[indices], self.values[indices])

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        self.adopt(self.keys, self.values)


class _Batch:
    """One model's KV cache over a changing set of rows (left-padded, own position ids)."""

    def __init__(self, model: PreTrainedModel, room: int = 64):
        self.model = model
        self.room = room  # spare positions each growing cache layer keeps
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [B, L] 1 where the cache column holds a token
        self.pos: torch.Tensor | None = None  # [B] position id of the next token

    @property
    def size(self) -> int:
        return 0 if self.mask is None else self.mask.shape[0]

    def can_join(self) -> bool:
        """Rows can join a running batch only when every cache layer is a growing one."""
        return self.cache is None or all(type(layer) is GrowingLayer for layer in self.cache.layers)

    def _grow(self, cache: DynamicCache) -> DynamicCache:
        """Swap every plain dynamic layer of ``cache`` for a :class:`GrowingLayer`."""
        for i, layer in enumerate(cache.layers):
            if type(layer) is DynamicLayer and layer.is_initialized:
                cache.layers[i] = GrowingLayer(layer.keys, layer.values, self.room)
        return cache

    @torch.inference_mode()
    def admit(self, prompts: list[list[int]], pad_id: int) -> torch.Tensor:
        """Run ``prompts`` and add them as new last rows; returns their next-token logits ``[n, V]``."""
        dev = self.model.device
        width = max(map(len, prompts))
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=dev)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=ids,
            attention_mask=attention_mask_for(self.model, mask, width),
            position_ids=pos,
            use_cache=True,
            logits_to_keep=last_positions(1, width, dev),
            **{cache_kwarg(self.model): cache},
        )
        new_pos = mask.sum(-1)
        if self.cache is None:
            self.cache, self.mask, self.pos = self._grow(cache), mask, new_pos
        else:
            self._join(cache, mask, new_pos)
        return out.logits[:, -1]

    def _join(self, cache: DynamicCache, mask: torch.Tensor, pos: torch.Tensor) -> None:
        width = max(self.mask.shape[1], mask.shape[1])

        def left_pad(x: torch.Tensor, dim: int) -> torch.Tensor:
            n = width - x.shape[dim]
            if n == 0:
                return x
            shape = list(x.shape)
            shape[dim] = n
            return torch.cat([x.new_zeros(shape), x], dim=dim)

        for old, new in zip(self.cache.layers, cache.layers):
            keys = torch.cat([left_pad(old.keys, 2), left_pad(new.keys, 2)], 0)
            old.adopt(keys, torch.cat([left_pad(old.values, 2), left_pad(new.values, 2)], 0))
        self.mask = torch.cat([left_pad(self.mask, 1), left_pad(mask, 1)], 0)
        self.pos = torch.cat([self.pos, pos], 0)

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row ``[B]``; returns the next-token logits ``[B, V]``. The 2D mask
        goes as it is: each query is a token, so it sees at least its own column."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.size, 1)], 1)
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=self.mask,
            position_ids=self.pos[:, None],
            use_cache=True,
            **{cache_kwarg(self.model): self.cache},
        )
        self.pos = self.pos + 1
        return out.logits[:, -1]

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (indices into the batch) and drop cache columns no row uses."""
        if rows.numel() == 0:
            self.cache = self.mask = self.pos = None
            return
        self.mask, self.pos = self.mask[rows], self.pos[rows]
        first = int(self.mask.any(0).nonzero()[0]) if self.can_join() else 0
        for layer in self.cache.layers:
            if first:  # drop the leading columns that only padding uses
                layer.adopt(layer.keys[rows, :, first:], layer.values[rows, :, first:])
            else:
                layer.batch_select_indices(rows)
        self.mask = self.mask[:, first:]


Combine = Callable[[list[torch.Tensor]], torch.Tensor]
"""Turns the next-token logits of each model (``[B, V]`` each) into the scores whose
argmax is the next token; plain greedy decoding has one model and takes its logits."""


def first_logits(logits: list[torch.Tensor]) -> torch.Tensor:
    """:data:`Combine` of plain decoding: the first (only) model's logits."""
    return logits[0]


def contrastive_scores(expert: torch.Tensor, amateur: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Contrastive-decoding scores (O'Brien & Lewis 2023, "Contrastive Decoding Improves
    Reasoning in Large Language Models"): ``(1 + beta) * expert - beta * amateur`` on the
    raw logits ``[B, V]``, ``-inf`` where the expert's probability is below ``alpha`` times
    its largest one. Both logit tensors are cut to their common vocabulary width."""
    v = min(expert.shape[-1], amateur.shape[-1])
    e, a = expert[..., :v].float(), amateur[..., :v].float()
    scores = (1 + beta) * e - beta * a
    log_p = torch.log_softmax(e, dim=-1)
    implausible = log_p < log_p.max(dim=-1, keepdim=True).values + math.log(alpha) if alpha > 0 else None
    return scores if implausible is None else scores.masked_fill(implausible, -math.inf)


def contrastive_combine(alpha: float, beta: float) -> Combine:
    """:data:`Combine` for ``greedy_decode([expert, amateur], ...)``: contrastive decoding."""
    return lambda logits: contrastive_scores(logits[0], logits[1], alpha, beta)


Pick = Callable[[torch.Tensor, list[int], list[int]], torch.Tensor]
"""Chooses the next token of each row from its scores ``[B, V]``, given the rows' prompt
indices and how many tokens each has so far; greedy decoding takes the argmax."""


def _argmax(scores: torch.Tensor, index: list[int], steps: list[int]) -> torch.Tensor:
    return scores.argmax(-1)


@dataclass
class TopPSampler:
    """Sampling with ``temperature`` and nucleus ``top_p`` (temperature first, then the
    smallest set of tokens whose probability reaches ``top_p``). Row ``i``'s draw at step ``t``
    is the inverse CDF of its nucleus at a uniform number from its own generator seeded from
    ``(seeds[i], t)``, so a sequence does not depend on which others share its batch or on
    restarts. The probabilities stay on the model's device: only one number per row travels
    there, none back."""

    temperature: float
    top_p: float
    seeds: list[int]

    def __call__(self, scores: torch.Tensor, index: list[int], steps: list[int]) -> torch.Tensor:
        probs = nucleus_probs(scores.float(), self.temperature, self.top_p)
        u = torch.tensor([self.uniform(i, t) for i, t in zip(index, steps)], dtype=torch.float64)
        return inverse_cdf(probs, u.to(scores.device))

    def uniform(self, i: int, step: int) -> float:
        """Row ``i``'s uniform number in [0, 1) at ``step`` (float64, drawn on the CPU)."""
        g = torch.Generator().manual_seed((self.seeds[i] * 1_000_003 + step) % 2**63)
        return float(torch.rand((), generator=g, dtype=torch.float64))


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row of ``probs`` ``[B, V]`` (each summing to about 1), the token whose cumulative
    probability interval holds ``u[b]`` times the row's total ``[B]``: the first id whose
    cumulative sum (float64) exceeds it, never an id of probability 0."""
    cdf = probs.double().cumsum(-1)
    target = (u * cdf[:, -1])[:, None]
    ids = torch.searchsorted(cdf, target, right=True)[:, 0]
    last = (probs > 0).cumsum(-1).argmax(-1)  # the last id with probability > 0
    return torch.minimum(ids, last)


def nucleus_probs(scores: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """``softmax(scores / temperature)`` ``[B, V]`` restricted to the top-p nucleus and renormalised."""
    probs = torch.softmax(scores / temperature, dim=-1)
    if top_p >= 1:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass of the tokens ranked above each one
    drop = before >= top_p
    drop[..., 0] = False  # the most likely token always stays
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return kept / kept.sum(-1, keepdim=True)


def greedy_decode(
    models: PreTrainedModel | list[PreTrainedModel],
    prompts: list[list[int]],
    max_new_tokens: int,
    stop_ids: list[int],
    pad_id: int,
    batch_size: int,
    keep_logits: bool = False,
    combine: Combine = first_logits,
    on_result: Callable[[int, Completion], None] | None = None,
    pick: Pick = _argmax,
) -> list[Completion]:
    """Greedy completions of ``prompts`` (token ids, no padding), in input order.

    At most ``batch_size`` sequences are decoded together (0: as many as fit in memory, see
    :func:`batch_capacity`; a given size is also lowered to what fits); finished ones leave
    the batch and waiting prompts (longest first) take their place. With several ``models``
    each keeps its own cache and ``combine`` turns their logits into scores (contrastive
    decoding); the kept logits are always the first model's. ``on_result(i, completion)`` is
    called as soon as prompt ``i`` is finished; the kept logits then go to it alone (the
    returned completions have none), so memory holds only the running sequences' logits.
    On out-of-memory the running sequences are restarted with half the batch size (results
    do not change: decoding is deterministic). ``pick`` replaces the argmax (e.g.
    :class:`TopPSampler` for sampled solutions).
    """
    models = models if isinstance(models, list) else [models]
    if not prompts:
        return []
    longest = max(map(len, prompts)) + max_new_tokens
    batch_size = batch_capacity(models, longest, batch_size, keep_logits)
    results: dict[int, Completion] = {}
    queue = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    stops = set(stop_ids)
    while queue:
        try:
            _decode(
                models,
                prompts,
                queue,
                max_new_tokens,
                stops,
                pad_id,
                batch_size,
                keep_logits,
                combine,
                results,
                on_result,
                pick,
            )
            continue
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
        # out of the except block: the traceback, which holds the failed batch's KV cache, is gone
        batch_size //= 2
        log.warning("out of memory; decoding again with batch size %d", batch_size)
        release_memory()
        queue = sorted((i for i in range(len(prompts)) if i not in results), key=lambda i: -len(prompts[i]))
    return [results[i] for i in range(len(prompts))]


def _decode(
    models, prompts, queue, max_new_tokens, stops, pad_id, batch_size, keep_logits, combine, results, on_result, pick
) -> None:
    batches = [_Batch(m) for m in models]
    rows = _Rows()
    pending = torch.empty(0, dtype=torch.long)  # [B] the token each row feeds next
    refill_at = max(1, batch_size // 8)  # join new prompts once this many slots are free

    def choose(logits: list[torch.Tensor], start: int) -> None:
        """Pick the next token of rows ``start:``; finish rows that stop or reach the budget."""
        nonlocal pending
        for x in logits:
            require_finite(x, "decoding")
        at = range(start, len(rows.index))
        tokens = pick(combine(logits), [rows.index[r] for r in at], [len(rows.ids[r]) for r in at])
        for r, tok in enumerate(tokens.tolist(), start):
            rows.ids[r].append(tok)
            if keep_logits:
                rows.logits[r].append(logits[0][r - start].clone())
        pending = torch.cat([pending[:start], tokens.to(pending.device)])

    while queue or rows.index:
        free = batch_size - len(rows.index)
        if queue and (free >= refill_at or not rows.index) and all(b.can_join() for b in batches):
            take = [queue.pop(0) for _ in range(min(free, len(queue)))]
            start = len(rows.index)
            logits = [b.admit([prompts[i] for i in take], pad_id) for b in batches]
            pending = pending.to(logits[0].device)
            rows.index += take
            rows.ids += [[] for _ in take]
            rows.logits += [[] for _ in take]
            choose(logits, start)
        else:
            choose([b.step(pending) for b in batches], 0)
        done = [r for r, ids in enumerate(rows.ids) if ids[-1] in stops or len(ids) >= max_new_tokens]
        if not done:
            continue
        for r in done:
            ids = rows.ids[r]
            logits = torch.stack(rows.logits[r]) if keep_logits else None
            comp = Completion(ids, ids[-1] in stops, logits)
            if on_result is not None:
                on_result(rows.index[r], comp)
                comp = Completion(ids, comp.finished)  # the callback owns the logits
            results[rows.index[r]] = comp
        finished = set(done)
        keep = [r for r in range(len(rows.index)) if r not in finished]
        rows.index = [rows.index[r] for r in keep]
        rows.ids = [rows.ids[r] for r in keep]
        rows.logits = [rows.logits[r] for r in keep]
        idx = torch.tensor(keep, dtype=torch.long, device=pending.device)
        pending = pending[idx]
        for b in batches:
            b.keep(idx)
