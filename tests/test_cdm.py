"""CDM parts on constructed inputs, and the scorer's determinism on a tiny model."""
import math

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


def _rows(tok, n=4):
    from depthtune.prompting import prompt_ids

    rows = []
    for i in range(n):
        p = prompt_ids(tok, {"prompt": f"What is {i} + {i + 2}?"})
        rows.append({"sample_id": f"p{i}#0", "prompt_ids": p, "completion_ids": p[-3 - i:] + [42, 43],
                     "completion": "x", "answer": str(2 * i + 2), "checker": "numeric"})
    return rows


def test_score_is_deterministic_and_batch_independent(tiny_model_dir):
    from depthtune import models
    from depthtune.config import ScoreConfig
    from depthtune.stages import score

    tok, model = models.load_tokenizer(str(tiny_model_dir)), models.load_model(str(tiny_model_dir))
    rows = _rows(tok)
    cfg = ScoreConfig(batch_size=4)
    a = score.score_rows(model, tok, rows, cfg)
    b = score.score_rows(model, tok, rows, cfg)
    single = score.score_rows(model, tok, rows, ScoreConfig(batch_size=1))
    for x, y, z in zip(a, b, single):
        assert x["cdm"] == y["cdm"]
        assert x["cdm"] == pytest.approx(z["cdm"], abs=0.05)
        for p in cdm.PARTS:
            assert 0.0 <= x[p] <= 1.0
    other_seed = score.score_rows(model, tok, rows, ScoreConfig(batch_size=4, seed=1, noise=3.0))
    assert any(abs(x["basin_resistance"] - o["basin_resistance"]) > 1e-4 for x, o in zip(a, other_seed))


def test_no_noise_gives_full_resistance_on_a_model(tiny_model_dir):
    from depthtune import models
    from depthtune.config import ScoreConfig
    from depthtune.stages import score

    tok, model = models.load_tokenizer(str(tiny_model_dir)), models.load_model(str(tiny_model_dir))
    out = score.score_rows(model, tok, _rows(tok), ScoreConfig(noise=0.0))
    assert all(r["basin_resistance"] == pytest.approx(1.0, abs=1e-4) for r in out)


def test_empty_completion_scores_zero(tiny_model_dir):
    from depthtune import models
    from depthtune.config import ScoreConfig
    from depthtune.stages import score

    tok, model = models.load_tokenizer(str(tiny_model_dir)), models.load_model(str(tiny_model_dir))
    rows = _rows(tok, 2)
    rows[1]["completion_ids"] = []
    out = score.score_rows(model, tok, rows, ScoreConfig())
    assert out[1]["cdm"] == 0.0 and out[0]["cdm"] > 0
    assert math.isfinite(out[0]["cdm"])


def test_scorer_matches_a_plain_pass_over_each_whole_sequence(tiny_model_dir):
    """Batched scoring (shared prompt caches, left padding, hooks, chunked head) against the textbook
    computation: one unpadded forward pass per sample over prompt + completion, eager attention."""
    from depthtune import models
    from depthtune.stages import score

    tok, model = models.load_tokenizer(str(tiny_model_dir)), models.load_model(str(tiny_model_dir), "float32", "cpu")
    rows = _rows(tok, 3)
    rows += [{**r, "sample_id": r["sample_id"][:-1] + "1", "completion_ids": r["completion_ids"][:2]} for r in rows]
    got = score.score_batch(model, rows, tok.pad_token_id, noise=0.0, seed=0, weights=cdm.WEIGHTS)
    model.set_attn_implementation("eager")
    for r, g in zip(rows, got):
        ids = torch.tensor([r["prompt_ids"] + r["completion_ids"]])
        P, n = len(r["prompt_ids"]), len(r["completion_ids"])
        out = model(input_ids=ids, output_attentions=True)
        logits = out.logits[0, P - 1:P - 1 + n]  # the positions that predict the completion
        mask = torch.ones(1, n, dtype=torch.bool)
        e = cdm.entropy_collapse(cdm.token_certainty(logits).unsqueeze(0), mask).item()
        a = torch.stack([(w[0, :, P:] ** 2).sum(-1) for w in out.attentions]).mean().item()
        lp = torch.log_softmax(logits, -1)[torch.arange(n), r["completion_ids"]].mean().item()
        assert g["entropy_collapse"] == pytest.approx(e, abs=1e-4)
        assert g["attention_sparsification"] == pytest.approx(a, abs=1e-4)
        assert g["mean_logprob"] == pytest.approx(lp, abs=1e-4)
        assert g["basin_resistance"] == pytest.approx(1.0, abs=1e-5)


def test_degenerate_flags():
    from depthtune.degenerate import flags

    base = {"prompt": "Tom has 5 apples and gets 3 more. How many apples does Tom have now?", "finished": True}
    ok = {**base, "completion_ids": list(range(20)), "completion": "Tom starts with 5 and gets 3, so 8 apples."}
    loop = {**base, "completion_ids": [7, 8, 9] * 8, "completion": "8 8 8"}
    cut = {**ok, "finished": False}
    echo = {**base, "completion_ids": list(range(14)), "completion": "Tom has 5 apples and gets 3 more. How many"}
    restated = {**ok, "completion": "Tom has 5 apples and gets 3 more, so Tom has 8 apples now."}
    assert flags(ok) == [] and flags(restated) == []
    assert flags(loop) == ["repetition"] and flags(cut) == ["unfinished"] and flags(echo) == ["echo"]
    assert flags({**base, "completion_ids": [5, 5, 5], "completion": "8"}) == []  # short answers are not loops
