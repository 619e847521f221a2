"""Helpers the tests share: a tiny random-weight Llama saved as an HF dir, and fast CLI settings."""
from __future__ import annotations

from pathlib import Path

import torch


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


def tiny_args(model_dir: Path, run_dir: Path) -> list[str]:
    """CLI settings that make a full run on the tiny model take seconds."""
    return ["--run-dir", str(run_dir), "--model", str(model_dir), "--threshold", "0",
            "--set", "generate.max_new_tokens=6", "--set", "evaluate.max_new_tokens=6",
            "--set", "select.require_correct=false", "--set", "select.exclude_degenerate=false",
            "--set", "select.min_kept=0", "--set", "train.epochs=1", "--set", "train.batch_size=4", "--k", "2",
            "--set", "evaluate.cdm=true"]  # the depth rows too, which the default leaves out


def assert_self_contained_html(path: Path, min_images: int) -> None:
    """The page parses, and every image in it is an inlined PNG (no file it depends on)."""
    import base64
    from html.parser import HTMLParser

    sources = []

    class Images(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag == "img":
                sources.append(dict(attrs).get("src", ""))

    Images().feed(Path(path).read_text())
    assert len(sources) >= min_images, f"{path}: {len(sources)} images"
    for src in sources:
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
