"""The arithmetic of LightReasoner: step selection and contrastive soft labels.

Pure tensor functions, no I/O. Every function takes probabilities (not logits)
over one shared vocabulary: ``p_expert`` and ``p_amateur`` are ``[..., vocab]``
and rows sum to 1. See ``ALGORITHM`` in the docs for the definitions.
"""

from __future__ import annotations

import torch

EPS = 1e-12
"""Added to probabilities before taking logs, as in the original release."""


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def kl_divergence(p_expert: torch.Tensor, p_amateur: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """D_KL(π_E ‖ π_A) in nats over the full vocabulary.

    ``[..., vocab]`` → ``[...]``: Σ_v π_E(v) · (log(π_E(v)+ε) − log(π_A(v)+ε)),
    accumulated in float32 at least.
    """
    pe = _upcast(p_expert)
    pa = _upcast(p_amateur)
    return (pe * ((pe + eps).log() - (pa + eps).log())).sum(-1)


def plausible_mask(p_expert: torch.Tensor, alpha: float) -> torch.Tensor:
    """V_t = {v : π_E(v) ≥ α · max_u π_E(u)}. ``[..., vocab]`` → bool ``[..., vocab]``."""
    return p_expert >= alpha * p_expert.max(dim=-1, keepdim=True).values


def select_steps(kl: torch.Tensor, beta: float) -> torch.Tensor:
    """Informative step selection: keep steps with KL ≥ β. ``[...]`` → bool ``[...]``.

    ``beta = -inf`` keeps every step (the "w/o Select" ablation). The one place the rule is
    applied: by sampling (``sampling.label_steps``) and by the selection from a pool
    (``sampling.select_from_pool``, on the pool's float32 KLs).
    """
    return kl >= beta


def contrastive_weights(
    p_expert: torch.Tensor, p_amateur: torch.Tensor, mask: torch.Tensor, eps: float = EPS
) -> torch.Tensor:
    """v_C = softmax over V_t of log π_E − log π_A, zero outside V_t.

    ``[..., vocab]`` → ``[..., vocab]`` (rows sum to 1 where the mask is non-empty).
    """
    score = (_upcast(p_expert) + eps).log() - (_upcast(p_amateur) + eps).log()
    score = score.masked_fill(~mask, float("-inf"))
    return torch.softmax(score, dim=-1)


def expert_weights(p_expert: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The "w/o Contrast" target: π_E renormalised over V_t, zero elsewhere. ``[..., vocab]``."""
    p = _upcast(p_expert).masked_fill(~mask, 0.0)
    return p / p.sum(-1, keepdim=True)


def soft_label_kl(target: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """D_KL(target ‖ q) per row, in nats, with 0·log 0 = 0.

    ``target`` ``[..., k]`` (probabilities, zero-padded), ``log_q`` ``[..., k]`` the
    model's log-probabilities at the same ids → ``[...]``.
    """
    pos = target > 0
    safe = torch.where(pos, target, torch.ones_like(target))
    terms = torch.where(pos, target * (safe.log() - log_q), torch.zeros_like(target))
    return terms.sum(-1)
