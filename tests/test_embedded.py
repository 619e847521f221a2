"""Integration: the whole pipeline on the embedded SmolLM2-135M-Instruct, with tiny settings."""
import json

import pytest

from depthtune.cli import main

pytestmark = pytest.mark.slow  # a real server, several processes or the embedded model


def test_run_on_the_embedded_model(tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["run", "--run-dir", str(run_dir), "--max-train-prompts", "3", "--max-eval-prompts", "3", "--k", "2",
            "--threshold", "0", "--epochs", "1", "--set", "generate.max_new_tokens=12",
            "--set", "evaluate.max_new_tokens=12", "--set", "select.require_correct=false",
            "--set", "select.min_kept=0", "--set", "select.exclude_degenerate=false", "--set", "evaluate.cdm=true"]
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


def test_sweep_on_the_embedded_model(tmp_path, capsys):
    """Prompt distillation and LoRA on the real model: the context teacher's soft targets reach the
    student, and every cell reports both capabilities against its own teacher."""
    import yaml

    spec = {"base": {"data": {"max_eval_prompts": 6}, "generate": {"max_new_tokens": 10},
                     "evaluate": {"max_new_tokens": 10}, "train": {"epochs": 1},
                     "select": {"require_correct": False}, "distill": {"generate": {"k": 1}}},
            "teachers": {"smol": {}}, "axes": {"method": ["lora", "prompt"], "size": [3], "student": ["self"]}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["sweep", str(path), "--sweep-dir", str(tmp_path / "out")]) == 0
    m = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert len(m["done"]) == 2 and not m["failed"]
    for r in m["done"]:
        assert r["params"] == 134_515_008 and r["examples"] == 3
        assert {"knowledge", "reasoning"} == set(r["battery"]["category"]) == set(r["teacher"]["category"])
    from depthtune import artifacts
    from depthtune.experiments.grid import DEFAULT_CONTEXT

    plain, context = (next((tmp_path / "out" / "teachers").glob(f"{name}-*")) for name in ("smol-answers", "smol+context"))
    assert artifacts.read_json(context / "job.json")["system_prompt"] == DEFAULT_CONTEXT
    with_context = {r["prompt_id"]: len(r["prompt_ids"]) for r in artifacts.read_jsonl(context / "samples.jsonl")}
    for r in artifacts.read_jsonl(plain / "samples.jsonl"):  # the context teacher saw the few-shot examples
        assert with_context[r["prompt_id"]] > len(r["prompt_ids"]) + 100
    assert "sweep_report.md" in capsys.readouterr().out
