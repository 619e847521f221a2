"""Each distillation loss against a naive full-vocabulary reference written here: values and gradients."""
import pytest
import torch

from depthtune.distill import losses

V, D, N = 37, 8, 23


def naive_divergence(pt, ps, kind, beta):
    """Textbook divergence between probability vectors (teacher pt, student ps)."""
    if kind == "forward_kl" or (kind == "jsd" and beta == 0):
        return (pt * (pt.log() - ps.log())).sum()
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1):
        return (ps * (ps.log() - pt.log())).sum()
    m = beta * pt + (1 - beta) * ps
    return beta * (pt * (pt.log() - m.log())).sum() + (1 - beta) * (ps * (ps.log() - m.log())).sum()


def naive(student_logits, teacher_logits, labels, kind, tau, alpha, beta):
    """Textbook formulas on full probability vectors, one token at a time."""
    total, count = 0.0, 0
    for i in range(student_logits.shape[0]):
        if labels[i] == -100:
            continue
        count += 1
        ps = torch.softmax(student_logits[i] / tau, -1)
        pt = torch.softmax(teacher_logits[i] / tau, -1)
        ce = -torch.log(torch.softmax(student_logits[i], -1)[labels[i]])
        total = total + (1 - alpha) * ce + alpha * tau**2 * naive_divergence(pt, ps, kind, beta)
    return total / count


def setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g, dtype=torch.float64)
    w = torch.randn(V, D, generator=g, dtype=torch.float64) * 0.7
    ht = torch.randn(N, D, generator=g, dtype=torch.float64)
    wt = torch.randn(V, D, generator=g, dtype=torch.float64) * 0.7
    labels = torch.randint(0, V, (N,), generator=g)
    labels[:4] = -100  # prompt
    labels[-3:] = -100  # padding
    return h, w, ht, wt, labels


CASES = [("forward_kl", 1.0, 0.5, 0.5), ("forward_kl", 2.0, 1.0, 0.5), ("reverse_kl", 2.0, 0.7, 0.5),
         ("jsd", 1.5, 0.5, 0.5), ("jsd", 1.0, 0.9, 0.1), ("jsd", 1.0, 0.5, 0.0), ("jsd", 3.0, 0.5, 1.0),
         ("forward_kl", 1.0, 0.0, 0.5)]


def grads(fn, h, w):
    h, w = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    loss = fn(h, w)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("kind, tau, alpha, beta", CASES)
def test_dense_loss_matches_naive(kind, tau, alpha, beta):
    h, w, ht, wt, labels = setup()
    opts = dict(kind=kind, tau=tau, alpha=alpha, beta=beta)
    ref = grads(lambda h, w: naive(h @ w.T, ht @ wt.T, labels, kind, tau, alpha, beta), h, w)
    got = grads(lambda h, w: losses.kd_loss(h @ w.T, ht @ wt.T, labels, **opts), h, w)
    for r, g in zip(ref, got):
        assert torch.allclose(r, g, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind, tau, alpha, beta", CASES)
@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_chunked_loss_matches_naive(kind, tau, alpha, beta, chunk):
    h, w, ht, wt, labels = setup(1)
    opts = dict(kind=kind, tau=tau, alpha=alpha, beta=beta)
    ref = grads(lambda h, w: naive(h @ w.T, ht @ wt.T, labels, kind, tau, alpha, beta), h, w)
    got = grads(lambda h, w: losses.chunked_kd_loss(h, w, labels, teacher_hidden=ht, teacher_weight=wt,
                                                    chunk=chunk, **opts), h, w)
    for r, g in zip(ref, got):
        assert torch.allclose(r, g, rtol=1e-6, atol=1e-8)


def test_chunked_loss_with_a_frozen_head_gives_hidden_gradients_only():
    h, w, ht, wt, labels = setup(2)
    h = h.clone().requires_grad_(True)
    losses.chunked_kd_loss(h, w, labels, teacher_hidden=ht, teacher_weight=wt, chunk=4).backward()
    assert h.grad is not None and h.grad[:4].abs().sum() == 0  # masked prompt rows get no gradient


def naive_sparse(student_logits, top_ids, top_logp, labels, kind, tau, alpha, beta):
    """Reference, in probabilities: k + 1 bucket masses for each side at temperature 1 (the top-k ids,
    then everything else), each bucket tempered as mass^(1/tau) and renormalised."""
    total, count = 0.0, 0
    for i in range(student_logits.shape[0]):
        if labels[i] == -100:
            continue
        count += 1
        p = torch.cat([top_logp[i].exp(), (1 - top_logp[i].exp().sum()).reshape(1)])
        pt = p ** (1 / tau) / (p ** (1 / tau)).sum()
        full = torch.softmax(student_logits[i], -1)
        q = torch.cat([full[top_ids[i]], (1 - full[top_ids[i]].sum()).reshape(1)])
        qs = q ** (1 / tau) / (q ** (1 / tau)).sum()
        ce = -torch.log(full[labels[i]])
        total = total + (1 - alpha) * ce + alpha * tau**2 * naive_divergence(pt, qs, kind, beta)
    return total / count


@pytest.mark.parametrize("kind, tau, alpha, beta", [("forward_kl", 1.0, 0.5, 0.5), ("forward_kl", 2.0, 0.8, 0.5),
                                                    ("reverse_kl", 1.0, 0.5, 0.5), ("jsd", 1.5, 1.0, 0.3)])
@pytest.mark.parametrize("chunked", [False, True])
def test_sparse_topk_loss_matches_naive(kind, tau, alpha, beta, chunked):
    h, w, ht, wt, labels = setup(3)
    t_logp_full = torch.log_softmax(ht @ wt.T, -1)
    top_logp, top_ids = t_logp_full.topk(5, dim=-1)
    opts = dict(kind=kind, tau=tau, alpha=alpha, beta=beta)
    ref = grads(lambda h, w: naive_sparse(h @ w.T, top_ids, top_logp, labels, kind, tau, alpha, beta), h, w)
    if chunked:
        fn = lambda h, w: losses.chunked_kd_loss(h, w, labels, top_ids=top_ids, top_logp=top_logp, chunk=6, **opts)  # noqa: E731
    else:
        fn = lambda h, w: losses.sparse_kd_loss(h @ w.T, top_ids, top_logp, labels, **opts)  # noqa: E731
    for r, g in zip(ref, grads(fn, h, w)):
        assert torch.allclose(r, g, rtol=1e-6, atol=1e-8)


def test_sparse_with_full_vocabulary_equals_dense_at_tau_1():
    h, w, ht, wt, labels = setup(4)
    t_logp = torch.log_softmax(ht @ wt.T, -1)
    top_logp, top_ids = t_logp.topk(V, dim=-1)
    dense = losses.kd_loss(h @ w.T, ht @ wt.T, labels, alpha=1.0)
    sparse = losses.sparse_kd_loss(h @ w.T, top_ids, top_logp, labels, alpha=1.0)
    assert sparse.item() == pytest.approx(dense.item(), abs=1e-5)


def test_identical_models_have_zero_divergence_and_bad_settings_fail():
    h, w, _, _, labels = setup(5)
    for kind in losses.KINDS:
        assert losses.kd_loss(h @ w.T, h @ w.T, labels, kind=kind, alpha=1.0, tau=2.0).item() == pytest.approx(0, abs=1e-10)
    with pytest.raises(ValueError, match="temperature"):
        losses.kd_loss(h @ w.T, h @ w.T, labels, tau=0)
    with pytest.raises(ValueError, match="unknown divergence"):
        losses.kd_loss(h @ w.T, h @ w.T, labels, kind="tv")
