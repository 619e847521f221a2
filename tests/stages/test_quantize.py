"""4-bit and 8-bit bases (bitsandbytes, which runs on CPU too): loading, sampling and scoring on them,
QLoRA training, merging into a full-precision base, and the one-line refusals."""
import json

import pytest
import torch

from depthtune import artifacts, models
from depthtune.cli import main
from depthtune.config import RunConfig, TrainConfig
from depthtune.stages import merge, score, train

pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def q_model_dir(tmp_path_factory, tokenizer_dir):
    """A tiny random Llama whose layers take 64 or more inputs: bitsandbytes quantises in blocks of 64."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("q64")
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def rows(n=6):
    return [{"sample_id": f"p{i}#0", "prompt_id": f"p{i}", "prompt_ids": [1, 10 + i, 11, 12],
             "completion_ids": [20 + i, 21, 22], "finished": i % 2 == 0, "completion": "x", "answer": None}
            for i in range(n)]


def _loss(model, tok, data):
    batch = train.collate([train.build_example(r, tok.eos_token_id) for r in data], tok.pad_token_id)
    with torch.no_grad():
        return model(**batch).loss.item()


def test_a_quantised_base_loads_samples_and_scores(q_model_dir):
    from bitsandbytes.nn import Linear4bit, Linear8bitLt

    from depthtune.backends.local import LocalSampler

    tok = models.load_tokenizer(str(q_model_dir))
    q4 = models.load_model(str(q_model_dir), quantize="4bit")
    assert models.is_quantized(q4) and isinstance(q4.model.layers[0].self_attn.q_proj, Linear4bit)
    item = {"id": "a", "prompt": "What is 2 + 3?", "answer": "5"}
    got, _, _ = LocalSampler(q4, tok).sample_chunk([item], k=2, temperature=0.8, top_p=0.95, max_new_tokens=5,
                                                    seed=0, system_prompt=None)
    assert len(got) == 2 and all(lp <= 0 for r in got for lp in r["logprobs"])
    scored = score.score_batch(q4, got, tok.pad_token_id, noise=0.3, seed=0,
                               weights=RunConfig().score.weights)  # attention hooks work over 4-bit layers
    assert all(0 <= s["cdm"] <= 100 for s in scored)
    q8 = models.load_model(str(q_model_dir), quantize="8bit")
    assert isinstance(q8.model.layers[0].mlp.up_proj, Linear8bitLt)
    full = models.load_model(str(q_model_dir))
    assert _loss(q8, tok, rows()) == pytest.approx(_loss(full, tok, rows()), abs=0.05)  # int8 stays close


def test_qlora_trains_and_merges_into_the_full_precision_base(tmp_path, q_model_dir):
    cfg = RunConfig()
    cfg.model.name, cfg.model.quantize = str(q_model_dir), "4bit"
    cfg.train = TrainConfig(epochs=2, batch_size=2, save_steps=100, learning_rate=5e-3, dropout=0.0)
    run_dir = tmp_path / "run"
    artifacts.write_jsonl(run_dir / "select" / "selected.jsonl", rows())
    tok = models.load_tokenizer(cfg.model.name)
    base = models.from_config(cfg.model.name, cfg.model)
    before = _loss(base, tok, rows())
    manifest, trained = train.run(run_dir, cfg, base, tok)
    assert manifest["quantize"] == "4bit" and 0 < manifest["trainable_params"] < manifest["base_params"]
    after = _loss(trained, tok, rows())
    assert after < before - 0.05
    lora = [p for n, p in trained.named_parameters() if "lora_" in n]
    assert lora and all(p.requires_grad and p.dtype == torch.float32 for p in lora)  # the adapter learns in fp32

    loaded = []

    def load_base(name):  # what Session.load gives merge: the base in full precision
        loaded.append(name)
        return models.from_config(name, cfg.model, full_precision=True), tok

    m, merged = merge.run(run_dir, cfg, load_base, (trained, tok))
    assert loaded == [cfg.model.name]  # never merged into the 4-bit weights in memory
    assert not models.is_quantized(merged) and not any("lora" in n for n, _ in merged.named_parameters())
    config = json.loads((run_dir / m["model_dir"] / "config.json").read_text())
    assert "quantization_config" not in config
    from peft import PeftModel

    reference = PeftModel.from_pretrained(models.load_model(cfg.model.name), str(run_dir / "train" / "adapter"))
    assert _loss(merged, tok, rows()) == pytest.approx(_loss(reference, tok, rows()), abs=1e-4)
    assert _loss(merged, tok, rows()) < before  # the adapter learnt on 4-bit weights helps the full model too


def test_a_run_with_quantize_reloads_the_tuned_model_quantised(tmp_path, q_model_dir, capsys):
    from helpers import tiny_args

    run_dir = tmp_path / "run"
    assert main(["run", "--quantize", "4bit", "--backend", "local", "--max-train-prompts", "6",
                 "--max-eval-prompts", "4", *tiny_args(q_model_dir, run_dir)]) == 0
    assert artifacts.read_manifest(run_dir / "train", "train")["quantize"] == "4bit"
    assert "quantization_config" not in json.loads((run_dir / "merge" / "model" / "config.json").read_text())
    assert "Mean CDM" in capsys.readouterr().out


def test_quantize_without_bitsandbytes_is_refused_in_one_line(tmp_path, q_model_dir, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    run_dir = tmp_path / "run"
    assert main(["generate", "--run-dir", str(run_dir), "--model", str(q_model_dir), "--quantize", "4bit"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install" in err and "bitsandbytes" in err
    assert not run_dir.exists()  # nothing half-written


def test_device_map_auto_is_refused_for_training_in_one_line(tmp_path, q_model_dir, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--run-dir", str(run_dir), "--model", str(q_model_dir),
                 "--set", "model.device_map=auto"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "accelerate launch" in err and not run_dir.exists()


def test_device_map_auto_serves_the_forward_stages(q_model_dir):
    model = models.load_model(str(q_model_dir), device_map="auto", max_memory={"cpu": "1GiB"})
    # one CPU and no GPU: accelerate places every layer on it (no map is kept for a single device)
    assert set(getattr(model, "hf_device_map", {"": "cpu"}).values()) == {"cpu"}
    tok = models.load_tokenizer(str(q_model_dir))
    assert _loss(model, tok, rows()) == pytest.approx(_loss(models.load_model(str(q_model_dir)), tok, rows()))


@pytest.mark.slow
def test_qlora_on_the_embedded_model(tmp_path):
    """The embedded GGUF, dequantised and re-quantised to NF4: QLoRA trains, and the merge loads the
    GGUF in full precision and folds the adapter in."""
    cfg = RunConfig()
    cfg.model.quantize = "4bit"
    cfg.train = TrainConfig(epochs=1, batch_size=3, save_steps=100, learning_rate=1e-3, dropout=0.0)
    run_dir = tmp_path / "run"
    tok = models.load_tokenizer(None)
    data = [{**r, "prompt_ids": tok(f"What is {i} + 2?")["input_ids"],
             "completion_ids": tok(f" {i + 2}")["input_ids"]} for i, r in enumerate(rows())]
    artifacts.write_jsonl(run_dir / "select" / "selected.jsonl", data)
    base = models.from_config(None, cfg.model)
    assert models.is_quantized(base)
    manifest, trained = train.run(run_dir, cfg, base, tok)
    assert manifest["quantize"] == "4bit" and manifest["final_loss"] > 0
    m, merged = merge.run(run_dir, cfg, lambda name: (models.from_config(name, cfg.model, full_precision=True), tok),
                          (trained, tok))
    assert not models.is_quantized(merged) and models.count_params(merged) == 134_515_008
    assert (run_dir / m["model_dir"] / "model.safetensors").exists()


def test_compare_with_quantize_needs_a_student_of_its_own(tmp_path, q_model_dir, capsys):
    run_dir = tmp_path / "cmp"
    assert main(["compare", "--run-dir", str(run_dir), "--teacher", str(q_model_dir), "--quantize", "4bit"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--student" in err and not run_dir.exists()
