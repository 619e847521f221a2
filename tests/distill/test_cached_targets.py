"""A cached teacher is the tempered teacher folded onto top-k + tail, exactly, at every cached temperature.

The reference here is written independently of depthtune.distill.losses: probabilities (not log-space),
tempered over the whole vocabulary first, then summed into the k + 1 buckets, then KL / JSD by the
textbook formula. Each test failed on the code before tails were cached per temperature (where the
leftover 1 - sum(top-k) was tempered as one bucket and floored at 1e-6).
"""
import pytest
import torch
import torch.nn.functional as F

from depthtune.distill import losses
from depthtune.teacher_cache import Rows, load_cache, pack, topk_rows, unpack, write_shard

V, N, K = 50, 7, 5
TAUS = [1.0, 2.0, 4.0]


def logits(seed: int, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, V, generator=g, dtype=torch.float64) * scale


def folded_reference(zs, zt, ids, tau, kind="forward_kl"):
    """Independent: tempered softmax over the vocabulary, buckets by summing probabilities, KL in probability space."""
    ps, pt = torch.softmax(zs / tau, -1), torch.softmax(zt / tau, -1)
    mask = torch.zeros_like(ps, dtype=torch.bool).scatter(-1, ids, True)
    bs = torch.cat([ps.gather(-1, ids), (ps * ~mask).sum(-1, keepdim=True)], -1)
    bt = torch.cat([pt.gather(-1, ids), (pt * ~mask).sum(-1, keepdim=True)], -1)
    if kind == "forward_kl":
        d = (bt * (bt.log() - bs.log())).sum(-1)
    elif kind == "reverse_kl":
        d = (bs * (bs.log() - bt.log())).sum(-1)
    else:  # JSD with beta = 0.5
        m = 0.5 * (bt + bs)
        d = 0.5 * (bt * (bt.log() - m.log())).sum(-1) + 0.5 * (bs * (bs.log() - m.log())).sum(-1)
    return tau**2 * d.mean()


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_cached_loss_equals_the_dense_loss_folded_onto_the_same_buckets(tau, kind):
    zs, zt = logits(0), logits(1)
    ids, logp, tails = topk_rows(zt, K, tuple(TAUS))
    tail = tails[:, TAUS.index(tau)]
    labels = torch.arange(N)
    zs1 = zs.clone().requires_grad_(True)
    ours = losses.sparse_kd_loss(zs1, ids, logp.double(), labels, kind=kind, tau=tau, alpha=1.0, tail=tail.double())
    zs2 = zs.clone().requires_grad_(True)
    ref = folded_reference(zs2, zt, ids, tau, kind)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-9)
    (g1,), (g2,) = torch.autograd.grad(ours, zs1), torch.autograd.grad(ref, zs2)
    assert torch.allclose(g1, g2, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("tau", TAUS)
def test_the_chunked_cached_loss_is_the_same_objective(tau):
    zs, zt = logits(2), logits(3)
    ids, logp, tails = topk_rows(zt, K, (tau,))
    labels = torch.arange(N)
    eye = torch.eye(V, dtype=torch.float64)
    chunked = losses.chunked_kd_loss(zs, eye, labels, top_ids=ids, top_logp=logp.double(), tail=tails[:, 0].double(),
                                     tau=tau, alpha=1.0, chunk=3)
    assert chunked.item() == pytest.approx(folded_reference(zs, zt, ids, tau).item(), rel=1e-9)


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("real_tail", [1e-5, 1e-8, 1e-12])
@pytest.mark.parametrize("storage", ["fp32", "fp16"])
def test_a_student_equal_to_its_teacher_has_zero_loss_however_small_the_tail(tau, real_tail, storage):
    """A peaked teacher whose top-k holds all but `real_tail` of the mass; the cache rounded as stored."""
    z = torch.full((N, V), 0.0, dtype=torch.float64)
    z[:, :K] = torch.linspace(2.0, 0.0, K, dtype=torch.float64)
    # lower the rest until they hold real_tail of the mass
    rest = torch.logsumexp(z[:, :K], -1, keepdim=True) + torch.log(torch.tensor(real_tail / (V - K), dtype=torch.float64))
    z[:, K:] = rest
    ids, logp, tails = topk_rows(z, K, (tau,))
    assert (1 - logp.exp().sum(-1)).mean().item() == pytest.approx(real_tail, rel=1e-3)
    if storage == "fp16":  # the precision the cache keeps: tails in fp16, log-probs rounded on disk
        logp, tails = logp.half().double(), tails.half().double()
    loss = losses.sparse_kd_loss(z, ids, logp.double(), torch.arange(N), tau=tau, alpha=1.0, tail=tails[:, 0].double())
    bound = 1e-10 if storage == "fp32" else 1e-6  # fp16 rounding of the stored log-probs, not of the tail
    assert abs(loss.item()) < bound, loss.item()


def test_without_a_tail_the_fallback_is_exact_at_tau_one_only():
    zs, zt = logits(4), logits(5)
    ids, logp, _ = topk_rows(zt, K)
    labels = torch.arange(N)
    at1 = losses.sparse_kd_loss(zs, ids, logp.double(), labels, tau=1.0, alpha=1.0)
    assert at1.item() == pytest.approx(folded_reference(zs, zt, ids, 1.0).item(), rel=1e-9)
    at2 = losses.sparse_kd_loss(zs, ids, logp.double(), labels, tau=2.0, alpha=1.0)
    assert abs(at2.item() - folded_reference(zs, zt, ids, 2.0).item()) > 1e-3  # another objective: said in reports


def test_soft_capped_logits_are_the_models_own():
    """Gemma-2's final logit soft-capping: the chunked loss must see the logits the model's forward makes."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=16, final_logit_softcapping=0.5, attn_logit_softcapping=None)
    student, teacher = Gemma2ForCausalLM(cfg).double().eval(), Gemma2ForCausalLM(cfg).double().eval()
    ids = torch.randint(0, 64, (2, 9))
    labels = ids[:, 1:].reshape(-1)
    with torch.no_grad():
        real_s = student(input_ids=ids).logits[:, :-1].reshape(-1, 64)
        real_t = teacher(input_ids=ids).logits[:, :-1].reshape(-1, 64)
        hs = student.model(input_ids=ids).last_hidden_state[:, :-1].reshape(-1, 32)
        ht = teacher.model(input_ids=ids).last_hidden_state[:, :-1].reshape(-1, 32)
    assert real_s.abs().max() <= 0.5  # the cap bites: these are not h @ W
    want = losses.kd_loss(real_s, real_t, labels, tau=2.0, alpha=0.5)
    got = losses.chunked_kd_loss(hs, student.lm_head.weight, labels, teacher_hidden=ht,
                                 teacher_weight=teacher.lm_head.weight, tau=2.0, alpha=0.5, chunk=5, cap=0.5,
                                 teacher_cap=0.5)
    assert got.item() == pytest.approx(want.item(), rel=1e-9)


def test_packed_entries_round_trip_within_the_grid():
    z = logits(6, scale=4.0).float()
    ids, logp, _ = topk_rows(z, 20 if V > 20 else V)
    back_ids, back_logp = unpack(pack(ids, logp, V), V)
    assert torch.equal(back_ids, ids.long())
    err = (back_logp - logp).abs()
    x = -logp
    assert (err <= 0.0108 * x.clamp_min(1e-4).sqrt() + 1e-6).all()  # half a grid step: sqrt(30) / 255 / 2


def test_a_shard_keeps_ids_log_probs_and_tails_and_old_shards_still_read(tmp_path):
    from safetensors.torch import save_file

    z = logits(7).float()
    ids, logp, tails = topk_rows(z, K, (1.0, 2.0))
    write_shard(tmp_path / "chunk-00000.safetensors", ["a", "b"], [(ids[:3], logp[:3], tails[:3]),
                                                                   (ids[3:], logp[3:], tails[3:])], V, (1.0, 2.0))
    old = {"ids": ids[:2].int(), "logp": logp[:2].half(), "offsets": torch.tensor([0, 2])}
    save_file(old, str(tmp_path / "chunk-00001.safetensors"), metadata={"sample_ids": '["c"]', "k": str(K),
                                                                          "vocab_size": str(V)})
    cache = load_cache(tmp_path)
    assert torch.equal(cache["a"].ids, ids[:3].long()) and cache["b"].ids.shape == (N - 3, K)
    assert torch.allclose(cache["b"].tail_at(2.0), tails[3:, 1], atol=2e-3)
    assert cache["a"].tail_at(4.0) is None  # a temperature that was not cached: the loss falls back
    assert isinstance(cache["c"], Rows) and cache["c"].tails is None and cache["c"].tail_at(1.0) is None
    assert torch.allclose(cache["c"].logp, logp[:2].half().float())


def test_folding_is_what_the_buckets_say():
    """bucket_teacher with a tail at tau is the tempered teacher distribution summed into buckets."""
    zt = logits(8)
    ids, logp, tails = topk_rows(zt, K, (2.0,))
    got = losses.bucket_teacher(ids, logp.double(), 2.0, V, tails[:, 0].double()).exp()
    pt = F.softmax(zt / 2.0, -1)
    want = torch.cat([pt.gather(-1, ids), 1 - pt.gather(-1, ids).sum(-1, keepdim=True)], -1)
    assert torch.allclose(got, want, atol=1e-12)
