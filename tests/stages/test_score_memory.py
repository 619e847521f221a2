"""CDM's attention part holds one layer's attention weights at a time: memory grows with one layer,
not with the model's depth (bench/bench_score_memory.py measures it at 2,048 tokens)."""
import weakref

from depthtune import models
from depthtune.config import ScoreConfig
from depthtune.stages import score


def test_each_layers_attention_is_gone_before_the_next_layer_runs(tmp_path, tokenizer_dir, monkeypatch):
    from helpers import make_tiny_model

    path = make_tiny_model(tmp_path / "deep", tokenizer_dir, layers=6)
    model, tok = models.load_model(str(path)), models.load_tokenizer(str(path))
    refs, alive_at_each_layer = [], []
    real = score.cdm.attention_sparsity

    def spy(weights, key_mask, query_mask):  # called by the meter's hook, once per layer
        alive_at_each_layer.append(sum(r() is not None for r in refs))
        refs.append(weakref.ref(weights))
        return real(weights, key_mask, query_mask)

    monkeypatch.setattr(score.cdm, "attention_sparsity", spy)
    rows = [{"sample_id": f"a#{j}", "prompt_id": "a", "prompt_ids": [1, 5, 6, 7], "completion_ids": [8 + j, 9, 10],
             "completion": "x", "finished": True} for j in range(3)]
    out = score.score_batch(model, rows, tok.pad_token_id, ScoreConfig().noise, 0, ScoreConfig().weights)
    assert len(alive_at_each_layer) == 6  # the clean pass's completion forward: one call per layer
    assert alive_at_each_layer == [0] * 6  # no earlier layer's [B, H, L, T] weights were still alive
    assert all(r["attention_sparsification"] > 0 for r in out)
