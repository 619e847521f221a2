"""Integration: the whole pipeline on the embedded SmolLM2-135M-Instruct, with tiny settings."""
import json

import pytest

from depthtune.cli import main


@pytest.mark.slow
def test_run_on_the_embedded_model(tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["run", "--run-dir", str(run_dir), "--max-train-prompts", "3", "--max-eval-prompts", "3", "--k", "2",
            "--threshold", "0", "--epochs", "1", "--set", "generate.max_new_tokens=12",
            "--set", "evaluate.max_new_tokens=12", "--set", "select.require_correct=false"]
    assert main(args) == 0
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["base_params"] == 134_515_008  # SmolLM2-135M, dequantised from the GGUF
    assert m["selection"]["total"] == 6 and m["before"]["accuracy"] is not None
    assert 0 < m["before"]["mean_cdm"] <= 100 and 0 < m["after"]["mean_cdm"] <= 100
    scored = [json.loads(line) for line in (run_dir / "score" / "scored.jsonl").read_text().splitlines()]
    assert all(s["completion"] and s["logprobs"] for s in scored)
    assert all(lp <= 0 for s in scored for lp in s["logprobs"])
    config = json.loads((run_dir / "merge" / "model" / "config.json").read_text())
    assert "quantization_config" not in config  # a plain float model, loadable as is
    assert "Mean CDM" in capsys.readouterr().out
