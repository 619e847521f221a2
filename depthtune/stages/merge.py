"""Stage 5, merge: fold the LoRA adapter into the base weights; save a plain HF model directory.

Reads  <run>/train/manifest.json (names the base model) and <run>/train/adapter/
Writes <run>/merge/model/ (safetensors + config + tokenizer), + manifest.json

After --full training the trained model already is the tuned model: the manifest
points at <run>/train/model and nothing is copied.

A QLoRA adapter (trained over a 4-bit or 8-bit base) is merged into the base loaded in full
precision, never into the quantised weights: folding B A into NF4 weights would round the update
away. The merged model is a plain float model.
"""
from __future__ import annotations

from pathlib import Path

from .. import artifacts
from ..config import RunConfig
from ..distributed import sharded
from ..models import is_quantized


def merge_adapter(base_model, adapter_dir: Path):
    """PeftModel.from_pretrained + merge_and_unload: W = W0 + (alpha / r) B A, adapter gone."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, str(adapter_dir)).merge_and_unload()


def run(run_dir: Path, cfg: RunConfig, load_base, trained_model=None) -> tuple[dict, object]:
    """-> (manifest, tuned model or None).

    `load_base(name)` loads the base model named in the train manifest, in full precision; `run` passes
    the (model, tokenizer) it just trained instead, which saves loading the base again (unless it is
    quantised).
    """
    run_dir = Path(run_dir)
    stage_dir = run_dir / "merge"
    trained = artifacts.read_manifest(run_dir / "train", "train")
    if trained["method"] == "full":
        return artifacts.write_manifest(stage_dir, "merge", cfg.to_dict(), model_dir="train/model",
                                        base_model=trained["base_model"], merged=False), trained_model[0] if trained_model else None
    if trained_model is not None and not is_quantized(trained_model[0]) and not sharded():
        merged, tok = trained_model[0].merge_and_unload(), trained_model[1]
    else:
        base, tok = load_base(trained["base_model"])
        merged = merge_adapter(base, run_dir / "train" / "adapter")
    with artifacts.atomic_path(stage_dir / "model") as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return artifacts.write_manifest(stage_dir, "merge", cfg.to_dict(), model_dir="merge/model",
                                    base_model=trained["base_model"], merged=True), merged
