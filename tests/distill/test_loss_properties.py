"""Properties every distillation loss must have, whatever its implementation, and agreement with TRL.

For every divergence, tau in {1, 2, 4} and k in {1, 20, V}: a student equal to its teacher has zero
loss and zero gradient; at k = V the sparse (cached top-k) loss equals the dense one; chunked, dense
and sparse agree; -inf logits give no NaN; bf16 inputs give the fp32 answer; grad_accum = 2 at batch b
makes the same update as batch 2b. Values are checked against TRL's generalized JSD and its chunked
divergence (an independent implementation), not against a copy of ours.
"""
import pytest
import torch
import torch.nn.functional as F

from depthtune.distill import losses

V, D, N = 37, 8, 19
KINDS = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.1)]
TAUS = [1.0, 2.0, 4.0]
KS = [1, 20, V]


def data(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g, dtype=dtype)
    w = torch.randn(V, D, generator=g, dtype=dtype) * 0.7
    ht = torch.randn(N, D, generator=g, dtype=dtype)
    wt = torch.randn(V, D, generator=g, dtype=dtype) * 0.7
    labels = torch.randint(0, V, (N,), generator=g)
    labels[:3] = -100
    return h, w, ht, wt, labels


def topk(logits, k):
    logp, ids = F.log_softmax(logits, -1).topk(k, dim=-1)
    return ids, logp


def value_and_grads(fn, *xs):
    xs = [x.detach().clone().requires_grad_(True) for x in xs]
    loss = fn(*xs)
    grads = torch.autograd.grad(loss, xs)
    return loss.detach(), grads


@pytest.mark.parametrize("kind, beta", KINDS)
@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("k", KS)
def test_a_student_equal_to_its_teacher_has_zero_loss_and_zero_gradient(kind, beta, tau, k):
    h, w, _, _, labels = data(1)
    z = h @ w.T
    ids, logp = topk(z, k)
    opts = dict(kind=kind, beta=beta, tau=tau, alpha=1.0)
    variants = {
        "dense": lambda z_: losses.kd_loss(z_, z, labels, **opts),
        "sparse": lambda z_: losses.sparse_kd_loss(z_, ids, logp, labels, **opts),
        "chunked online": lambda z_: losses.chunked_kd_loss(z_, torch.eye(V, dtype=z.dtype), labels,
                                                            teacher_hidden=z, teacher_weight=torch.eye(V, dtype=z.dtype),
                                                            chunk=5, **opts),
        "chunked cached": lambda z_: losses.chunked_kd_loss(z_, torch.eye(V, dtype=z.dtype), labels, top_ids=ids,
                                                            top_logp=logp, chunk=5, **opts),
    }
    for name, fn in variants.items():
        loss, (grad,) = value_and_grads(fn, z)
        assert abs(loss.item()) < 1e-10, f"{name}: loss {loss.item()}"
        assert grad.abs().max().item() < 1e-10, f"{name}: gradient {grad.abs().max().item()}"


@pytest.mark.parametrize("kind, beta", KINDS)
@pytest.mark.parametrize("tau", TAUS)
def test_sparse_at_full_vocabulary_equals_dense(kind, beta, tau):
    h, w, ht, wt, labels = data(2)
    ids, logp = topk(ht @ wt.T, V)
    opts = dict(kind=kind, beta=beta, tau=tau, alpha=0.5)
    dense = value_and_grads(lambda h_, w_: losses.kd_loss(h_ @ w_.T, ht @ wt.T, labels, **opts), h, w)
    sparse = value_and_grads(lambda h_, w_: losses.sparse_kd_loss(h_ @ w_.T, ids, logp, labels, **opts), h, w)
    assert sparse[0].item() == pytest.approx(dense[0].item(), rel=1e-10, abs=1e-12)
    for a, b in zip(sparse[1], dense[1]):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind, beta", KINDS)
@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("k", KS)
def test_chunked_dense_and_sparse_agree(kind, beta, tau, k):
    h, w, ht, wt, labels = data(3)
    ids, logp = topk(ht @ wt.T, k)
    opts = dict(kind=kind, beta=beta, tau=tau, alpha=0.5)
    pairs = [
        (lambda h_, w_: losses.kd_loss(h_ @ w_.T, ht @ wt.T, labels, **opts),
         lambda h_, w_: losses.chunked_kd_loss(h_, w_, labels, teacher_hidden=ht, teacher_weight=wt, chunk=4, **opts)),
        (lambda h_, w_: losses.sparse_kd_loss(h_ @ w_.T, ids, logp, labels, **opts),
         lambda h_, w_: losses.chunked_kd_loss(h_, w_, labels, top_ids=ids, top_logp=logp, chunk=4, **opts)),
    ]
    for plain, chunked in pairs:
        a, b = value_and_grads(plain, h, w), value_and_grads(chunked, h, w)
        assert a[0].item() == pytest.approx(b[0].item(), rel=1e-10)
        for x, y in zip(a[1], b[1]):
            assert torch.allclose(x, y, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind, beta", KINDS)
@pytest.mark.parametrize("tau", TAUS)
def test_minus_infinity_logits_give_no_nan(kind, beta, tau):
    h, w, ht, wt, labels = data(4)
    zs, zt = h @ w.T, ht @ wt.T
    zt[:, ::3] = -torch.inf  # a teacher that rules out a third of the vocabulary (a masked head)
    zs[:, ::6] = -torch.inf  # a student that rules out some of the same tokens
    zt[:3, :] = -torch.inf  # masked prompt rows may hold anything, even an all -inf row
    zt[:3, 0] = 0.0
    opts = dict(kind=kind, beta=beta, tau=tau, alpha=1.0)
    loss, (grad,) = value_and_grads(lambda z: losses.kd_loss(z, zt, labels, **opts), zs)
    if kind == "reverse_kl":  # the student puts mass where the teacher puts none: the true value is +inf
        assert loss.item() == float("inf")
    else:
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
    ids, logp = topk(zt, 20)  # a top-20 reaching past the teacher's support holds -inf log-probs
    loss, (grad,) = value_and_grads(lambda z: losses.sparse_kd_loss(z, ids, logp, labels, **opts), zs)
    assert not torch.isnan(loss) and not torch.isnan(grad).any()
    if kind != "reverse_kl":
        assert torch.isfinite(loss)


@pytest.mark.parametrize("kind, beta", KINDS)
@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("k", [20, V])
def test_bf16_inputs_give_the_fp32_result(kind, beta, tau, k):
    h, w, ht, wt, labels = data(5, torch.float32)
    h, w, ht, wt = (x.to(torch.bfloat16) for x in (h, w, ht, wt))
    ids, logp = topk((ht @ wt.T).float(), k)
    opts = dict(kind=kind, beta=beta, tau=tau, alpha=0.5, chunk=6)
    for teacher in (dict(teacher_hidden=ht, teacher_weight=wt), dict(top_ids=ids, top_logp=logp.half())):
        low, low_grads = value_and_grads(lambda h_, w_: losses.chunked_kd_loss(h_, w_, labels, **teacher, **opts), h, w)
        t32 = {n: (v.float() if v.is_floating_point() else v) for n, v in teacher.items()}
        ref, _ = value_and_grads(lambda h_, w_: losses.chunked_kd_loss(h_, w_, labels, **t32, **opts), h.float(), w.float())
        assert low.dtype == torch.float32 and all(g.dtype == torch.bfloat16 for g in low_grads)
        assert low.item() == pytest.approx(ref.item(), rel=2e-2)  # bf16 logits carry ~3 significant digits
        # dense: the same bf16 logits give exactly the fp32 maths (computed in fp32 inside)
        z, zt = (h @ w.T), (ht @ wt.T)
        a = losses.kd_loss(z, zt, labels, **{k_: v for k_, v in opts.items() if k_ != "chunk"})
        b = losses.kd_loss(z.float(), zt.float(), labels, **{k_: v for k_, v in opts.items() if k_ != "chunk"})
        assert a.item() == pytest.approx(b.item(), rel=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_dense_matches_trl_generalized_jsd(beta, tau):
    from trl.experimental.gkd.gkd_trainer import GKDTrainer

    h, w, ht, wt, labels = data(6)
    zs, zt = h @ w.T, ht @ wt.T
    ours = value_and_grads(lambda z: losses.kd_loss(z, zt, labels, kind="jsd", beta=beta, tau=tau, alpha=1.0) / tau**2, zs)
    trl = value_and_grads(lambda z: GKDTrainer.generalized_jsd_loss(z[None], zt[None], labels=labels[None], beta=beta,
                                                                     temperature=tau), zs)
    assert ours[0].item() == pytest.approx(trl[0].item(), rel=1e-9)
    assert torch.allclose(ours[1][0], trl[1][0], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_chunked_matches_trl_chunked_divergence(beta, tau):
    from trl.trainer.distillation_trainer import _chunked_divergence_loss

    h, w, ht, wt, labels = data(7, torch.float32)
    valid = labels != -100
    ours = value_and_grads(lambda h_, w_: losses.chunked_kd_loss(h_, w_, labels, teacher_hidden=ht, teacher_weight=wt,
                                                                kind="jsd", beta=beta, tau=tau, alpha=1.0, chunk=5)
                           / tau**2, h, w)
    trl = value_and_grads(lambda h_, w_: _chunked_divergence_loss(h_[None], ht[None], w_, wt, valid[None].long(), beta,
                                                                  temperature=tau)[0], h, w)
    assert ours[0].item() == pytest.approx(trl[0].item(), rel=1e-5)
    for a, b in zip(ours[1], trl[1]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_gradient_accumulation_makes_the_update_of_one_double_batch(tmp_path, tiny_model_dir):
    """grad_accum = 2 at batch 2 and batch 4 at grad_accum = 1: the same SGD step, for the distilled student."""
    from transformers import TrainingArguments

    from depthtune import models
    from depthtune.config import DistillConfig
    from depthtune.distill.trainer import DistillTrainer, kd_collate, kd_examples
    from depthtune.teacher_cache import Rows

    tok = models.load_tokenizer(str(tiny_model_dir))
    g = torch.Generator().manual_seed(0)
    rows, cache = [], {}
    for i in range(4):  # samples of different lengths, so token counts differ between micro-batches
        n = 3 + 2 * i
        rows.append({"sample_id": f"s{i}", "prompt_ids": [1, 2, 3 + i], "completion_ids": torch.randint(5, 300, (n,),
                     generator=g).tolist(), "finished": True})
        logp, ids = torch.randn(n + 1, len(tok), generator=g).log_softmax(-1).topk(8, dim=-1)
        cache[f"s{i}"] = Rows(ids.long(), logp.half().float())
    examples = kd_examples(rows, tok.eos_token_id, cache)

    def one_step(batch, accum):
        model = models.load_model(str(tiny_model_dir), "float32", "cpu")
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        args = TrainingArguments(output_dir=str(tmp_path / f"b{batch}"), per_device_train_batch_size=batch,
                                 gradient_accumulation_steps=accum, max_steps=1, learning_rate=1.0, optim="sgd",
                                 lr_scheduler_type="constant", report_to="none", use_cpu=True, save_strategy="no",
                                 remove_unused_columns=False, train_sampling_strategy="sequential", seed=0)
        trainer = DistillTrainer(model=model, args=args, train_dataset=examples, vocab=len(tok),
                                 data_collator=lambda b: kd_collate(b, tok.pad_token_id),
                                 kd=DistillConfig(alpha=0.5, temperature=2.0))
        trainer.train()
        return {n: p.detach() - before[n] for n, p in model.named_parameters()}

    whole, accumulated = one_step(4, 1), one_step(2, 2)
    for name in whole:
        assert torch.allclose(whole[name], accumulated[name], rtol=1e-4, atol=1e-7), name
    assert any(d.abs().max() > 1e-4 for d in whole.values())  # the step did move the weights
