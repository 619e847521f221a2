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


def attention_sparsity(attn: torch.Tensor, key_mask: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
    """One layer: [B, H, Q, K] weights of the last Q positions over K keys, [B, K] key mask (1 = real
    token), [B, Q] bool queries to count -> ([B] sum, [B] count).

    Per query row: sum_j a_j^2, the attention's collision probability (Renyi order 2, as in entropy
    collapse): 1 / the effective number of keys attended. One key gives 1, an even spread over m keys
    gives 1/m. It depends on the pattern only, not on how many keys the query could have seen, so the
    same pattern scores the same at any length (1 - H/log n, used before, rose with n: 0.6 on the first
    token and 0.4 over the last 8 scored 0.45 at 20 keys and 0.72 at 200). Rows that see a single real
    key carry no information (their weight is 1 by force) and are left out. Returns the sum over heads
    and rows and the number of rows, so layers can be pooled.
    """
    a = attn.float().clamp_min(0.0)
    collision = (a * a).sum(-1)  # [B, H, Q]
    seen = key_mask.long().cumsum(-1)[:, -attn.shape[-2]:]  # [B, Q] real keys at or before each query
    rows = query_mask & (seen > 1)
    return (collision * rows.unsqueeze(1)).sum((1, 2)), rows.sum(-1).float() * attn.shape[1]


def basin_resistance(jsd: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T] normalised JSD between clean and perturbed passes -> [B]: 1 - mean JSD."""
    return 1.0 - _masked_mean(jsd, mask)


def combine(parts: dict[str, torch.Tensor], weights: dict[str, float] | None = None) -> torch.Tensor:
    """{part: [B] in [0, 1]} -> [B] CDM in [0, 100]."""
    weights = weights or WEIGHTS
    total = sum(weights.values())
    return 100.0 * sum(weights[k] * parts[k] for k in PARTS) / total
