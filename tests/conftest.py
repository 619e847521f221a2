"""Shared fixtures: a tiny random-weight Llama with the embedded model's tokenizer, saved as an HF dir."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2's tokenizer (read from the embedded GGUF once), saved as a plain tokenizer dir."""
    from depthtune.models import load_tokenizer

    out = tmp_path_factory.mktemp("tok")
    load_tokenizer(None).save_pretrained(out)
    return out


def make_tiny_model(path: Path, tokenizer_dir: Path, layers: int = 2, seed: int = 0) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny"), tokenizer_dir)


@pytest.fixture
def prompt_file(tmp_path) -> Path:
    """A prompt/answer file in a layout the project did not choose: context + completion columns."""
    rows = [{"context": f"What is {a} + {b}?", "completion": f" {a + b}"} for a in range(2, 8) for b in (3, 5)]
    path = tmp_path / "user.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_args(model_dir: Path, run_dir: Path) -> list[str]:
    """CLI settings that make a full run on the tiny model take seconds."""
    return ["--run-dir", str(run_dir), "--model", str(model_dir), "--threshold", "0",
            "--set", "generate.max_new_tokens=6", "--set", "evaluate.max_new_tokens=6",
            "--set", "select.require_correct=false", "--set", "train.epochs=1", "--set", "train.batch_size=4",
            "--k", "2"]
