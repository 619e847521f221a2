"""The score stage on a tiny model: deterministic and batch-independent, equal to a plain pass over each
whole sequence, empty answers, majority votes, and the stage without CDM (score.cdm off)."""
import math

import pytest
import torch

from depthtune import cdm


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
    cfg = ScoreConfig(cdm=True, batch_size=4)
    a = score.score_rows(model, tok, rows, cfg)
    b = score.score_rows(model, tok, rows, cfg)
    single = score.score_rows(model, tok, rows, ScoreConfig(cdm=True, batch_size=1))
    for x, y, z in zip(a, b, single):
        assert x["cdm"] == y["cdm"]
        assert x["cdm"] == pytest.approx(z["cdm"], abs=0.05)
        for p in cdm.PARTS:
            assert 0.0 <= x[p] <= 1.0
    other_seed = score.score_rows(model, tok, rows, ScoreConfig(cdm=True, batch_size=4, seed=1, noise=3.0))
    assert any(abs(x["basin_resistance"] - o["basin_resistance"]) > 1e-4 for x, o in zip(a, other_seed))


def test_no_noise_gives_full_resistance_on_a_model(tiny_model_dir):
    from depthtune import models
    from depthtune.config import ScoreConfig
    from depthtune.stages import score

    tok, model = models.load_tokenizer(str(tiny_model_dir)), models.load_model(str(tiny_model_dir))
    out = score.score_rows(model, tok, _rows(tok), ScoreConfig(cdm=True, noise=0.0))
    assert all(r["basin_resistance"] == pytest.approx(1.0, abs=1e-4) for r in out)


def test_empty_completion_scores_zero(tiny_model_dir):
    from depthtune import models
    from depthtune.config import ScoreConfig
    from depthtune.stages import score

    tok, model = models.load_tokenizer(str(tiny_model_dir)), models.load_model(str(tiny_model_dir))
    rows = _rows(tok, 2)
    rows[1]["completion_ids"] = []
    out = score.score_rows(model, tok, rows, ScoreConfig(cdm=True))
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


def test_without_cdm_the_stage_judges_and_counts_votes_from_the_samplers_log_probs(tiny_model_dir):
    from depthtune import models
    from depthtune.config import ScoreConfig
    from depthtune.stages import score

    tok = models.load_tokenizer(str(tiny_model_dir))
    rows = [{**r, "logprobs": [-0.5, -1.5], "completion": c} for r, c in zip(_rows(tok, 3), ["4", "The answer is 4", "5"])]
    rows = [{**r, "prompt_id": "p", "completion_ids": [1, 2]} for r in rows]
    out = score.votes(score.score_rows(None, tok, rows, ScoreConfig(cdm=False)))
    assert all(r["cdm"] is None and r["mean_logprob"] == pytest.approx(-1.0) for r in out)
    assert [r["majority"] for r in out] == [True, True, False] and out[0]["agreement"] == pytest.approx(2 / 3, abs=1e-4)
    assert [r["correct"] for r in out] == [False, True, False]  # references 2, 4, 6 against 4, 4, 5
