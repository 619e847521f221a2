"""CDM's parts on constructed inputs: anchors, length-fairness, bounds, the weighted combination."""

import pytest
import torch

from depthtune import cdm


def test_certainty_anchors():
    flat = torch.zeros(5, 100)
    onehot = torch.full((5, 100), -1e4)
    onehot[:, 3] = 0
    assert torch.allclose(cdm.token_certainty(flat), torch.zeros(5), atol=1e-6)
    assert torch.allclose(cdm.token_certainty(onehot), torch.ones(5), atol=1e-6)


def test_peaked_distribution_scores_higher_entropy_collapse_than_flat():
    torch.manual_seed(0)
    mask = torch.ones(2, 6, dtype=torch.bool)
    flat = torch.randn(2, 6, 50) * 0.01
    peaked = flat.clone()
    peaked[..., 7] += 8.0
    e_flat = cdm.entropy_collapse(cdm.token_certainty(flat), mask)
    e_peak = cdm.entropy_collapse(cdm.token_certainty(peaked), mask)
    assert (e_peak > e_flat + 0.5).all()
    assert (e_flat < 0.01).all()


def test_entropy_collapse_rewards_sharpening_towards_the_end():
    mask = torch.ones(1, 6, dtype=torch.bool)
    rising = torch.tensor([[0.2, 0.2, 0.2, 0.2, 0.9, 0.9]])
    falling = rising.flip(-1)
    assert cdm.entropy_collapse(rising, mask) > cdm.entropy_collapse(falling, mask)
    # falling is scored on its level alone: the mean, 2.6 / 6
    assert cdm.entropy_collapse(falling, mask).item() == pytest.approx(2.6 / 6)


def test_entropy_collapse_ignores_masked_positions():
    c = torch.tensor([[0.9, 0.9, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False, False]])
    assert cdm.entropy_collapse(c, mask).item() == pytest.approx(0.9)


def _uniform_causal(B, H, T, pad):
    attn = torch.zeros(B, H, T, T)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[:, :pad] = 0
    for q in range(pad, T):
        attn[:, :, q, pad:q + 1] = 1.0 / (q + 1 - pad)
    return attn, mask


def test_uniform_attention_scores_one_over_the_keys_seen():
    attn, mask = _uniform_causal(2, 3, 8, pad=2)
    queries = torch.zeros(2, 8, dtype=torch.bool)
    queries[:, 4:] = True
    total, count = cdm.attention_sparsity(attn, mask, queries)
    assert count.tolist() == [12.0, 12.0]  # 4 queries x 3 heads
    want = sum(1 / n for n in (3, 4, 5, 6)) / 4  # queries 4..7 see 3..6 real keys, evenly
    assert torch.allclose(total / count, torch.full((2,), want), atol=1e-6)


def test_single_key_attention_scores_full_sparsification():
    attn, mask = _uniform_causal(1, 2, 6, pad=0)
    attn.zero_()
    attn[..., 0] = 1.0  # everything on the first (sink) token
    queries = torch.ones(1, 6, dtype=torch.bool)
    total, count = cdm.attention_sparsity(attn, mask, queries)
    assert count.item() == 10  # the first query sees one key and is left out
    assert (total / count).item() == pytest.approx(1.0, abs=1e-5)


def _sink_pattern(T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last query of a T-key sequence: 0.6 on the first token, 0.4 spread over the last 8."""
    attn = torch.zeros(1, 1, 1, T)
    attn[..., 0] = 0.6
    attn[..., -8:] = 0.05
    return attn, torch.ones(1, T, dtype=torch.long)


def test_attention_part_is_length_fair():
    """The same pattern scores the same at 20, 60 and 200 keys (1 - H/log n gave 0.45, 0.63, 0.72)."""
    scores = []
    for T in (20, 60, 200):
        attn, mask = _sink_pattern(T)
        total, count = cdm.attention_sparsity(attn, mask, torch.ones(1, 1, dtype=torch.bool))
        scores.append((total / count).item())
    assert scores == pytest.approx([0.36 + 8 * 0.05 ** 2] * 3, abs=1e-6)


def test_entropy_and_resistance_parts_are_length_fair():
    """The same per-token values give the same part at 3, 30 and 300 answer tokens."""
    for n_tokens in (3, 30, 300):
        mask = torch.ones(1, n_tokens, dtype=torch.bool)
        certainty = torch.full((1, n_tokens), 0.7)
        jsd = torch.full((1, n_tokens), 0.04)
        assert cdm.entropy_collapse(certainty, mask).item() == pytest.approx(0.7)
        assert cdm.basin_resistance(jsd, mask).item() == pytest.approx(0.96)


def test_perturbation_free_pass_scores_full_resistance():
    logits = torch.randn(3, 5, 40)
    jsd = cdm.token_jsd(logits, logits.clone())
    assert torch.allclose(jsd, torch.zeros(3, 5), atol=1e-6)
    r = cdm.basin_resistance(jsd, torch.ones(3, 5, dtype=torch.bool))
    assert torch.allclose(r, torch.ones(3))


def test_jsd_is_bounded_and_symmetric():
    a = torch.full((1, 10), -1e4)
    a[0, 0] = 0
    b = torch.full((1, 10), -1e4)
    b[0, 1] = 0
    assert cdm.token_jsd(a, b).item() == pytest.approx(1.0, abs=1e-4)  # disjoint supports: log 2 / log 2
    x, y = torch.randn(4, 30), torch.randn(4, 30)
    assert torch.allclose(cdm.token_jsd(x, y), cdm.token_jsd(y, x), atol=1e-6)


def test_combine_is_a_weighted_mean_on_0_100():
    parts = {p: torch.tensor([1.0, 0.0]) for p in cdm.PARTS}
    assert cdm.combine(parts).tolist() == pytest.approx([100.0, 0.0])
    parts = {"entropy_collapse": torch.tensor([1.0]), "attention_sparsification": torch.tensor([0.0]),
             "basin_resistance": torch.tensor([0.5])}
    assert cdm.combine(parts).item() == pytest.approx(100 * (0.4 + 0.2) / 1.0)
    assert cdm.combine(parts, {"entropy_collapse": 1, "attention_sparsification": 0, "basin_resistance": 0}).item() \
        == pytest.approx(100.0)
