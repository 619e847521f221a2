"""CDM, the 0-100 depth score, as pure tensor functions.

Every function here is a plain function of tensors: no model, no I/O. The
scoring stage (``depthtune.stages.score``) runs the forward passes and feeds the
results in. docs/cdm.md gives the formulas and the reasons behind them.

Shapes: B = batch, T = positions, V = vocabulary, H = heads, K = keys.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Weights of the three parts in the 0-100 total (they sum to 1).
WEIGHTS = {"entropy_collapse": 0.4, "attention_sparsification": 0.2, "basin_resistance": 0.4}
# Share of entropy collapse given by the last third of the answer (the "falling" part).
TAIL_WEIGHT = 0.25
PARTS = tuple(WEIGHTS)


def token_certainty(logits: torch.Tensor) -> torch.Tensor:
    """[..., V] -> [...]: (sum p^2 - 1/V) / (1 - 1/V), 0 for a flat, 1 for a one-hot distribution.

    sum p^2 = exp(-H2), the collision form of entropy (Renyi order 2): the chance that two
    independent draws from the next-token distribution agree. The affine map pins a
    uniform distribution to 0. docs/cdm.md says why order 2 rather than Shannon.
    """
    p = F.softmax(logits.float(), dim=-1)
    floor = 1.0 / logits.shape[-1]
    return ((p * p).sum(-1) - floor) / (1.0 - floor)


def token_jsd(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """[..., V] x2 -> [...]: Jensen-Shannon divergence divided by log 2, so in [0, 1]."""
    logp = F.log_softmax(logits_p.float(), dim=-1)
    logq = F.log_softmax(logits_q.float(), dim=-1)
    logm = torch.logsumexp(torch.stack([logp, logq]), dim=0) - math.log(2.0)
    kl_pm = (logp.exp() * (logp - logm)).sum(-1)
    kl_qm = (logq.exp() * (logq - logm)).sum(-1)
    return (0.5 * (kl_pm + kl_qm) / math.log(2.0)).clamp(0.0, 1.0)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T], [B, T] bool -> [B]; rows with no masked position give 0."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def entropy_collapse(certainty: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T] per-token certainty, [B, T] bool completion mask -> [B] in [0, 1].

    (1 - TAIL_WEIGHT) * mean certainty + TAIL_WEIGHT * max(mean, mean of the last third):
    a sharp answer scores high, and one whose distribution sharpens towards its end
    earns the tail bonus; one that grows less certain is not punished twice.
    """
    level = _masked_mean(certainty, mask)
    rank = mask.long().cumsum(-1)  # 1..n along each row's completion
    n = mask.long().sum(-1, keepdim=True)
    tail = mask & (rank * 3 > n * 2)
    tail_level = _masked_mean(certainty, tail)
    return (1.0 - TAIL_WEIGHT) * level + TAIL_WEIGHT * torch.maximum(level, tail_level)


def attention_sparsity(attn: torch.Tensor, attention_mask: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
    """One layer: [B, H, T, K=T] weights, [B, T] key mask, [B, T] bool queries -> ([B] sum, [B] count).

    Per query row: 1 - H(a) / log(n_visible), where n_visible counts the real keys the
    causal mask lets it see. Uniform attention gives 0, attention on one key gives 1.
    Rows that see a single key carry no information and are left out. Returns the
    sum over heads and rows and the number of rows, so layers can be pooled.
    """
    a = attn.float().clamp_min(0.0)
    ent = -(a * torch.log(a.clamp_min(1e-12))).sum(-1)  # [B, H, T]
    visible = attention_mask.long().cumsum(-1).float()  # [B, T] real keys at or before q
    rows = query_mask & (visible > 1.5)
    sparsity = 1.0 - ent / torch.log(visible.clamp_min(2.0)).unsqueeze(1)
    sparsity = sparsity.clamp(0.0, 1.0) * rows.unsqueeze(1)
    return sparsity.sum((1, 2)), rows.sum(-1).float() * attn.shape[1]


def basin_resistance(jsd: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T] normalised JSD between clean and perturbed passes -> [B]: 1 - mean JSD."""
    return 1.0 - _masked_mean(jsd, mask)


def combine(parts: dict[str, torch.Tensor], weights: dict[str, float] | None = None) -> torch.Tensor:
    """{part: [B] in [0, 1]} -> [B] CDM in [0, 100]."""
    weights = weights or WEIGHTS
    total = sum(weights.values())
    return 100.0 * sum(weights[k] * parts[k] for k in PARTS) / total
