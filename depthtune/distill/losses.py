"""Distillation losses: pure functions of tensors, no trainer state.

    loss = (1 - alpha) * CE(student, labels) + alpha * tau^2 * D(teacher_tau || student_tau)

D is forward KL, reverse KL or the generalised Jensen-Shannon divergence of Agarwal et al.
(GKD, as in TRL): JSD_beta = beta * KL(p_t || m) + (1 - beta) * KL(p_s || m),
m = beta * p_t + (1 - beta) * p_s, with beta = 0 meaning forward KL(p_t || p_s) and
beta = 1 reverse KL(p_s || p_t) (the mixture degenerates there, so the endpoints are
defined as the two KLs). Temperature tau divides both models' logits; the tau^2 factor
keeps the soft-target gradients on the scale of the hard ones (Hinton et al., 2015).
Positions whose label is -100 (prompt, padding) count in neither term; the loss is the
mean over the remaining tokens.

Three entry points:
- kd_loss: from full logits [N, V]; the simple version, for small sizes.
- sparse_kd_loss: the teacher given as top-k ids and log-probs (a cached teacher) and, per
  temperature, the tail's tempered log-mass: the tempered distribution folded onto top-k + one tail
  bucket, exactly; the student's tempered distribution is folded onto the same k + 1 buckets
  (bucket_teacher says what happens without the tail).
- chunked_kd_loss: from hidden states and the LM-head weights. Logits are made chunk by
  chunk and each chunk's gradient is taken at once, so neither model's [N, V] logits
  exist in full at any time. PyTorch and transformers have no such fused head+loss on
  CPU (Liger's kernels are Triton/GPU only), hence this hand-written autograd Function.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..teacher_cache import leftover_logmass

IGNORE = -100
KINDS = ("forward_kl", "reverse_kl", "jsd")


def _up(x: torch.Tensor) -> torch.Tensor:
    """Half precision -> fp32 for the softmax maths; fp32 and fp64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """[N, K] x2 -> [N]: KL(p || q) from log-probs. Outcomes p gives no mass add 0 (also when q gives
    none either, where logp - logq would be NaN); q giving no mass where p does gives +inf, the true value,
    and its gradient is not finite (reverse KL against a teacher that masks logits to -inf: only such
    teachers can hit it; cached teachers store finite log-softmax values). The `where` keeps NaN out of
    the gradient of the zero-mass terms (0 * NaN in the product's backward)."""
    gap = torch.where(torch.isneginf(logp), torch.zeros_like(logp), logp - logq)
    return (logp.exp() * gap).sum(-1)


def divergence(student_logp: torch.Tensor, teacher_logp: torch.Tensor, kind: str = "forward_kl",
               beta: float = 0.5) -> torch.Tensor:
    """[N, K] student and teacher log-probs over the same K outcomes -> [N] divergence."""
    if kind == "forward_kl" or (kind == "jsd" and beta == 0):
        return _kl(teacher_logp, student_logp)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1):
        return _kl(student_logp, teacher_logp)
    if kind != "jsd":
        raise ValueError(f"unknown divergence {kind!r}; use one of {KINDS}")
    if not 0 < beta < 1:
        raise ValueError("jsd beta must be in [0, 1]")
    # log(beta p_t + (1 - beta) p_s); outcomes neither model can produce stay -inf without a NaN gradient
    none = torch.isneginf(teacher_logp) & torch.isneginf(student_logp)
    mix = torch.logaddexp(torch.where(none, 0.0, teacher_logp + math.log(beta)),
                          torch.where(none, 0.0, student_logp + math.log(1 - beta)))
    mix = torch.where(none, -torch.inf, mix)
    return beta * _kl(teacher_logp, mix) + (1 - beta) * _kl(student_logp, mix)


def _check(tau: float, alpha: float) -> None:
    if tau <= 0:
        raise ValueError(f"temperature must be > 0, got {tau}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


def dense_view(tau: float):
    """Student logits [n, V] (and the rows kept) -> log-probs at tau over the whole vocabulary."""
    return lambda z, keep: F.log_softmax(z / tau, dim=-1)


def _token_losses(student_logits: torch.Tensor, teacher_logp_tau: torch.Tensor, labels: torch.Tensor, *,
                  kind: str, tau: float, alpha: float, beta: float, view=None) -> torch.Tensor:
    """Sum over the valid tokens of one chunk. [n, V] student logits; the teacher's log-probs at tau over
    some outcomes, and `view(z, keep)` mapping the kept rows of the student's logits to log-probs at tau
    over the same outcomes (default: the whole vocabulary).

    Masked rows (label -100) are dropped before any maths: a row there may hold anything (an all -inf
    teacher row, say), and even a zero upstream gradient times an infinite local one is NaN.
    """
    keep = labels != IGNORE
    z, y = _up(student_logits)[keep], labels[keep]
    total = z.new_zeros(())
    if alpha < 1:
        total = total + (1 - alpha) * F.cross_entropy(z, y, reduction="sum")
    if alpha > 0:
        d = divergence((view or dense_view(tau))(z, keep), teacher_logp_tau[keep], kind, beta)
        total = total + alpha * tau**2 * d.sum()
    return total


def _mean(total: torch.Tensor, labels: torch.Tensor, normalizer) -> torch.Tensor:
    """Summed token losses -> per token: over `normalizer` tokens when given (the Trainer's
    num_items_in_batch, which spans every micro-batch of a gradient-accumulation step), else over the
    valid tokens here."""
    if normalizer is None:
        return total / (labels != IGNORE).sum().clamp_min(1)
    return total / normalizer


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
            kind: str = "forward_kl", tau: float = 1.0, alpha: float = 0.5, beta: float = 0.5,
            normalizer=None) -> torch.Tensor:
    """[N, V] student and teacher logits, [N] labels -> scalar mean loss over valid tokens."""
    _check(tau, alpha)
    t_logp = F.log_softmax(_up(teacher_logits.detach()) / tau, dim=-1)
    total = _token_losses(student_logits, t_logp, labels, kind=kind, tau=tau, alpha=alpha, beta=beta)
    return _mean(total, labels, normalizer)


def _folded(top: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """[N, k] and [N] log-masses -> [N, k + 1] log-probs over top-k + one tail bucket."""
    return F.log_softmax(torch.cat([top, rest.unsqueeze(-1)], dim=-1), dim=-1)


def leftover(top_logp: torch.Tensor) -> torch.Tensor:
    """[N, k] top-k log-probs at tau = 1 -> [N] log(1 - sum of them), floored (teacher_cache.leftover_logmass)."""
    return leftover_logmass(top_logp)


def bucket_teacher(top_ids: torch.Tensor, top_logp: torch.Tensor, tau: float, vocab: int | None = None,
                   tail: torch.Tensor | None = None) -> torch.Tensor:
    """[N, k] cached ids and log-probs (tau = 1) -> [N, k + 1] teacher log-probs over top-k + tail, at tau.

    Exact: with `tail` = [N] log sum over the ids outside the top-k of p^(1/tau) (the cache keeps it per
    temperature), the buckets are the tempered distribution folded: top-k entries p_i^(1/tau) and the tail
    sum_{j not in top-k} p_j^(1/tau), normalised. bucket_student folds the tempered student the same way,
    so a student equal to its teacher has zero loss at any tau, and at k = V (no tail) this is dense
    tempering. Without `tail` (a server teacher at tau != 1, or an older cache) the tail's leftover mass
    1 - sum(top-k) is tempered as one bucket, and the student is folded then tempered to match (fold_first):
    exact at tau = 1 only.
    """
    top = _up(top_logp)
    if vocab is not None and top_ids.shape[-1] >= vocab:  # the top-k is the whole vocabulary: an empty tail
        return _folded(top / tau, torch.full(top.shape[:-1], -torch.inf, dtype=top.dtype, device=top.device))
    if tail is not None:
        return _folded(top / tau, _up(tail))
    return _folded(top, leftover(top)) if tau == 1 else F.log_softmax(_folded(top, leftover(top)) / tau, dim=-1)


def bucket_student(student_logits: torch.Tensor, top_ids: torch.Tensor, tau: float,
                   fold_first: bool = False) -> torch.Tensor:
    """[N, V] raw student logits -> [N, k + 1] log-probs over the teacher's top-k ids and the rest, at tau:
    the tempered distribution folded (fold_first: folded, then the buckets tempered, to match a teacher
    whose tail is known only at tau = 1). The rest's log-mass is a logsumexp over the ids outside the
    top-k (stable; no 1 - sum), and -inf when the top-k covers the vocabulary."""
    ids = top_ids.long()
    z = student_logits if fold_first else student_logits / tau
    top = z.gather(-1, ids)
    rest = z.scatter(-1, ids, -torch.inf)
    has_rest = torch.isfinite(rest).any(-1)
    lse = torch.logsumexp(torch.where(has_rest.unsqueeze(-1), rest, 0.0), dim=-1)  # finite input: no NaN grads
    folded = _folded(top, torch.where(has_rest, lse, -torch.inf))
    return F.log_softmax(folded / tau, dim=-1) if fold_first and tau != 1 else folded


def _cached_views(top_ids, top_logp, tau: float, vocab: int, tail):
    """The teacher's buckets and the student view that matches them (see bucket_teacher)."""
    exact = tail is not None or tau == 1 or top_ids.shape[-1] >= vocab
    t_logp = bucket_teacher(top_ids, top_logp, tau, vocab, tail)
    return t_logp, lambda z, keep: bucket_student(z, top_ids[keep], tau, fold_first=not exact)


def sparse_kd_loss(student_logits: torch.Tensor, top_ids: torch.Tensor, top_logp: torch.Tensor,
                   labels: torch.Tensor, *, kind: str = "forward_kl", tau: float = 1.0, alpha: float = 0.5,
                   beta: float = 0.5, normalizer=None, tail: torch.Tensor | None = None) -> torch.Tensor:
    """[N, V] student logits, teacher [N, k] top ids and log-probs (and [N] tempered tail log-mass at tau),
    [N] labels -> scalar."""
    _check(tau, alpha)
    t_logp, view = _cached_views(top_ids, top_logp, tau, student_logits.shape[-1], tail)
    total = _token_losses(student_logits, t_logp, labels, kind=kind, tau=tau, alpha=alpha, beta=beta, view=view)
    return _mean(total, labels, normalizer)


def softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Gemma-style final logit soft-capping, cap * tanh(z / cap), as the model's own forward applies it."""
    return cap * torch.tanh(logits / cap) if cap else logits


class _ChunkedHeadLoss(torch.autograd.Function):
    """Loss of a linear LM head + distillation loss, gradients computed chunk by chunk in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, teacher_chunk, chunk, opts, cap):
        grad_h = torch.zeros_like(hidden)
        grad_w = torch.zeros_like(weight) if weight.requires_grad else None
        total = hidden.new_zeros((), dtype=_up(hidden).dtype)
        for start in range(0, hidden.shape[0], chunk):
            sl = slice(start, start + chunk)
            y = labels[sl]
            if not (y != IGNORE).any():
                continue
            h = hidden[sl].detach()
            with torch.enable_grad():
                z = (h @ weight.detach().T).requires_grad_(True)  # [c, V], the only logits alive
                t_logp, view = teacher_chunk(sl)
                loss = _token_losses(softcap(z, cap), t_logp, y, view=view, **opts)
                (g,) = torch.autograd.grad(loss, z)  # through the soft-cap, when the model has one
            total += loss.detach()
            g = g.to(weight.dtype)
            grad_h[sl] = g @ weight
            if grad_w is not None:
                grad_w += g.T @ h
        ctx.save_for_backward(grad_h, grad_w if grad_w is not None else torch.empty(0))
        ctx.has_w = grad_w is not None
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, (grad_w * grad_out if ctx.has_w else None), None, None, None, None, None


def chunked_kd_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                    teacher_hidden: torch.Tensor | None = None, teacher_weight: torch.Tensor | None = None,
                    top_ids: torch.Tensor | None = None, top_logp: torch.Tensor | None = None,
                    tail: torch.Tensor | None = None, kind: str = "forward_kl", tau: float = 1.0, alpha: float = 0.5,
                    beta: float = 0.5, chunk: int = 512, normalizer=None, cap: float | None = None,
                    teacher_cap: float | None = None) -> torch.Tensor:
    """Student [N, D] hidden states and [V, D] head weight, [N] labels; the teacher as hidden
    states + head weight (online) or as top-k ids + log-probs (+ [N] tempered tail log-masses; cached).
    cap / teacher_cap: the models' final logit soft-capping (Gemma 2), applied as their forward does.
    -> scalar mean loss (over `normalizer` tokens when given, see _mean)."""
    _check(tau, alpha)
    if (teacher_hidden is None) == (top_ids is None):
        raise ValueError("give the teacher either as teacher_hidden + teacher_weight or as top_ids + top_logp")

    def teacher_chunk(sl):
        if top_ids is not None:
            return _cached_views(top_ids[sl], top_logp[sl], tau, weight.shape[0], None if tail is None else tail[sl])
        with torch.no_grad():
            zt = softcap(teacher_hidden[sl].to(teacher_weight.dtype) @ teacher_weight.T, teacher_cap)
            return F.log_softmax(_up(zt) / tau, dim=-1), None

    opts = dict(kind=kind, tau=tau, alpha=alpha, beta=beta)
    total = _ChunkedHeadLoss.apply(hidden, weight, labels, teacher_chunk, chunk, opts, cap)
    return _mean(total, labels, normalizer)


def uld_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Universal Logit Distillation (Boizard et al. 2024) for a student and teacher with different
    vocabularies: [N, Vs] and [N, Vt] logits at N aligned positions -> scalar mean over positions of the
    Wasserstein-1 distance between the two next-token distributions under the uniform cost, which is the
    L1 distance between their probabilities sorted in descending order (the shorter vector padded with
    zeros). It compares the shapes of the distributions, not which token is which, so it needs no map
    between the vocabularies; both are tempered by tau first."""
    _check(tau, 1.0)
    ps = F.softmax(_up(student_logits) / tau, dim=-1).sort(dim=-1, descending=True).values
    pt = F.softmax(_up(teacher_logits.detach()) / tau, dim=-1).sort(dim=-1, descending=True).values
    width = max(ps.shape[-1], pt.shape[-1])
    ps, pt = F.pad(ps, (0, width - ps.shape[-1])), F.pad(pt, (0, width - pt.shape[-1]))
    return (ps - pt).abs().sum(-1).mean() if ps.shape[0] else ps.new_zeros(())


def onpolicy_pg_loss(student_logp: torch.Tensor, teacher_logp: torch.Tensor, normalizer=None) -> torch.Tensor:
    """On-policy distillation from a teacher that returns log-probs only (a server): [N] the student's
    log-probs of the tokens it sampled itself (with gradient), [N] the teacher's log-probs of the same
    tokens -> scalar.

    The per-token reverse KL is the advantage, A = log p_teacher - log p_student (no gradient), of an
    importance-weighted policy-gradient loss, -sum(r * A) / n with r = p_student / p_sampler; the sampler is
    the student as it was when it sampled, so r is 1 in value and its gradient is grad log p_student. In
    expectation over the student's own samples the gradient is that of KL(student || teacher) per token
    (the score-function identity; tests/distill/test_onpolicy.py checks it exactly on small distributions).
    This is the recipe of on-policy distillation with a sampled-token teacher (GKD with lambda = 1 and the
    reverse KL; Thinking Machines' write-up), and it needs nothing of the teacher but these log-probs."""
    lp = _up(student_logp)
    advantage = (_up(teacher_logp).to(lp.device) - lp).detach()
    ratio = torch.exp(lp - lp.detach())
    total = -(ratio * advantage).sum()
    return total / (normalizer if normalizer is not None else max(1, lp.numel()))
