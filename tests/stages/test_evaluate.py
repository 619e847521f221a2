"""The evaluate stage on a tiny model: the summary it writes, held-out answers without CDM, a finished
evaluation reused, and an interrupted one resumed to the same answers."""
import pytest

from depthtune import artifacts, models
from depthtune.backends.local import LocalSampler
from depthtune.config import RunConfig
from depthtune.stages import evaluate


def held(n=10):
    return [{"id": f"h{i}", "prompt": f"What is {i} + 1?", "answer": str(i + 1), "checker": "numeric"} for i in range(n)]


def cfg(**evaluate_kw) -> RunConfig:
    c = RunConfig()
    c.evaluate.max_new_tokens, c.evaluate.batch_size = 5, 2
    for k, v in evaluate_kw.items():
        setattr(c.evaluate, k, v)
    return c


def test_the_summary_and_a_finished_evaluation_reused(tiny_model_dir, tmp_path):
    model, tok = models.load_model(str(tiny_model_dir)), models.load_tokenizer(str(tiny_model_dir))
    s = evaluate.evaluate_model(tmp_path, cfg(cdm=True), "base", model, tok, items=held(), log=lambda *a: None)
    assert s["samples"] == 10 and s["accuracy"] == 0.0 and 0 <= s["mean_cdm"] <= 100 and s["params"] > 0
    assert s["peak_memory_mb"] > 0 and s["mean_completion_tokens"] <= 5
    rows = artifacts.read_jsonl(tmp_path / "evaluate" / "base.jsonl")
    assert [r["prompt_id"] for r in rows] == [f"h{i}" for i in range(10)] and all("cdm" in r for r in rows)
    assert evaluate.evaluate_model(tmp_path, cfg(cdm=True), "base", None, None, items=held()) == s  # read, not redone


def test_without_cdm_the_answers_are_judged_only(tiny_model_dir, tmp_path):
    model, tok = models.load_model(str(tiny_model_dir)), models.load_tokenizer(str(tiny_model_dir))
    s = evaluate.evaluate_model(tmp_path, cfg(cdm=False), "base", model, tok, items=held(4), log=lambda *a: None)
    assert s["mean_cdm"] is None and s["deep_rate"] is None and s["accuracy"] == 0.0


def test_an_interrupted_evaluation_resumes_to_the_same_answers(tiny_model_dir, tmp_path, monkeypatch):
    model, tok = models.load_model(str(tiny_model_dir)), models.load_tokenizer(str(tiny_model_dir))
    whole = evaluate.evaluate_model(tmp_path / "whole", cfg(temperature=1.0), "base", model, tok, items=held(),
                                    log=lambda *a: None)
    real, calls = LocalSampler.sample_chunk, {"n": 0}

    def dying(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # after the warm-up and one chunk
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(LocalSampler, "sample_chunk", dying)
    with pytest.raises(KeyboardInterrupt):
        evaluate.evaluate_model(tmp_path / "cut", cfg(temperature=1.0), "base", model, tok, items=held(),
                                log=lambda *a: None)
    assert (tmp_path / "cut" / "evaluate" / "base.samples.partial.jsonl").exists()
    monkeypatch.setattr(LocalSampler, "sample_chunk", real)
    again = evaluate.evaluate_model(tmp_path / "cut", cfg(temperature=1.0), "base", model, tok, items=held(),
                                    log=lambda *a: None)
    read = lambda d: [r["completion_ids"] for r in artifacts.read_jsonl(d / "evaluate" / "base.jsonl")]  # noqa: E731
    assert read(tmp_path / "cut") == read(tmp_path / "whole") and again["accuracy"] == whole["accuracy"]
