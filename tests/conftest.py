"""Shared fixtures: a tiny random-weight Llama with the embedded model's tokenizer, saved as an HF dir."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import make_tiny_model


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2's tokenizer (read from the embedded GGUF once), saved as a plain tokenizer dir."""
    from depthtune.models import load_tokenizer

    out = tmp_path_factory.mktemp("tok")
    load_tokenizer(None).save_pretrained(out)
    return out


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
