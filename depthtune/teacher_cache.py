"""Cached teacher logits: the teacher's top-k next-token log-probs for every generated token.

On disk, one safetensors shard per generation chunk, <run>/generate/topk/chunk-NNNNN.safetensors:

    ids      int32   [tokens, k]  token ids of the k most likely next tokens, most likely first
    logp     float16 [tokens, k]  their log-probabilities at temperature 1 (raw logits)
    offsets  int64   [samples+1]  rows of sample i are ids[offsets[i]:offsets[i+1]]
    metadata sample_ids (JSON list), k, vocab_size

A sample that stopped by itself has one more row than completion tokens: the step that chose
eos, which training also learns.

Bytes per generated token: 6k (k = 20: 120 bytes), against 4V = 196,608 for fp32 logits
of a 49,152-word vocabulary. int32 rather than uint16 so that vocabularies past 65,536 fit;
fp16 keeps ~3 significant digits of a log-prob, far finer than the KD loss can use.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from .artifacts import atomic_path
from .errors import DepthtuneError


def topk_rows(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, V] raw logits -> ([T, k] int32 ids, [T, k] fp16 log-probs)."""
    logp, ids = F.log_softmax(logits.float(), dim=-1).topk(k, dim=-1)
    return ids.to(torch.int32), logp.to(torch.float16)


def write_shard(path: Path, sample_ids: list[str], per_sample: list[tuple[torch.Tensor, torch.Tensor]],
                vocab_size: int) -> int:
    """Write one shard atomically; -> bytes written."""
    from safetensors.torch import save_file

    k = per_sample[0][0].shape[-1] if per_sample else 0
    lengths = torch.tensor([0] + [ids.shape[0] for ids, _ in per_sample])
    tensors = {"ids": torch.cat([i for i, _ in per_sample]) if per_sample else torch.zeros(0, k, dtype=torch.int32),
               "logp": torch.cat([lp for _, lp in per_sample]) if per_sample else torch.zeros(0, k, dtype=torch.float16),
               "offsets": lengths.cumsum(0)}
    meta = {"sample_ids": json.dumps(sample_ids), "k": str(k), "vocab_size": str(vocab_size)}
    with atomic_path(path) as tmp:
        save_file({n: t.contiguous() for n, t in tensors.items()}, str(tmp), metadata=meta)
    return path.stat().st_size


def load_cache(folder: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """-> {sample_id: (ids [n, k], logp [n, k])} from every shard in folder."""
    from safetensors import safe_open

    out = {}
    for shard in sorted(Path(folder).glob("chunk-*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            sample_ids = json.loads(f.metadata()["sample_ids"])
            ids, logp, offsets = f.get_tensor("ids"), f.get_tensor("logp"), f.get_tensor("offsets")
        for i, sid in enumerate(sample_ids):
            out[sid] = (ids[offsets[i]:offsets[i + 1]], logp[offsets[i]:offsets[i + 1]])
    return out


def cached_ids(folder: Path) -> set[str]:
    """The sample ids a folder of shards covers, read from the shard headers only (no tensors)."""
    from safetensors import safe_open

    out = set()
    for shard in Path(folder).glob("chunk-*.safetensors"):
        with safe_open(str(shard), framework="pt") as f:
            out.update(json.loads(f.metadata()["sample_ids"]))
    return out


def check_matches(cache: dict, rows: list[dict]) -> None:
    """Every sample must have cached rows for exactly its completion tokens (+ eos if it stopped)."""
    for r in rows:
        got = cache.get(r["sample_id"])
        if got is None:
            raise DepthtuneError(f"cached teacher logits have no entry for sample {r['sample_id']}; "
                                 f"regenerate with --set generate.topk=K or use an online teacher")
        want = len(r["completion_ids"]) + bool(r.get("finished"))
        if got[0].shape[0] != want:
            raise DepthtuneError(f"cached teacher logits do not match sample {r['sample_id']}: "
                                 f"{got[0].shape[0]} cached positions for {want} target tokens; "
                                 f"the cache and samples come from different runs; regenerate them together")
