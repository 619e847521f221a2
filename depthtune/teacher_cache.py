"""Cached teacher logits: the teacher's top-k next-token log-probs for every generated token, and the
tempered mass of everything outside the top-k.

On disk, one safetensors shard per generation chunk, <run>/generate/topk/chunk-NNNNN.safetensors:

    packed   uint8   [tokens, k, 3]  per entry 24 bits: the token id in the low id_bits bits, and in the
                                     rest a code for -log p on a square-root grid (finest where the mass is)
    tail     float16 [tokens, n]     per temperature tau in `taus`: log sum over the ids outside the top-k
                                     of p^(1/tau), the tail's tempered log-mass
    offsets  int64   [samples+1]     rows of sample i are rows offsets[i]:offsets[i+1]
    metadata format "packed-v2", sample_ids (JSON list), k, vocab_size, taus (JSON list), id_bits

A sample that stopped by itself has one more row than completion tokens: the step that chose eos,
which training also learns.

Why the tail per temperature: at tau != 1 the tempered distribution's tail is sum p_i^(1/tau) over the
ids outside the top-k, which the top-k alone cannot give (tempering the leftover 1 - sum(top-k) as one
bucket is another distribution: at tau = 2, k = 20 it held 0.09 of the mass where the true tail held
0.92). With it, the cached target is the tempered distribution folded onto top-k + tail, exactly
(depthtune.distill.losses). A teacher behind a server returns only its top-k: its tail is known at
tau = 1 (log(1 - sum)) and not at other temperatures (stored as NaN: the loss then tempers the bucket,
and the compare report says so).

Bytes: 3 per (id, log-prob) entry plus 2 per row and temperature: 62 bytes per token at k = 20 and one
temperature (3.1 per entry), where the earlier format (int32 ids, fp16 log-probs; still read) took 120,
and fp32 logits of a 49,152-word vocabulary 196,608. The 8-bit square-root grid (24 - 16 id bits for
that vocabulary) keeps -log p within 0.002 nats at p = 0.99 and 0.03 at p = 0.1; bench/bench_cache.py
measures the reconstruction error and what it does to the distillation loss.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .artifacts import atomic_path
from .errors import DepthtuneError

FORMAT = "packed-v2"
LOGP_FLOOR = 30.0  # -log p codes cover [0, 30]: e^-30 ~ 1e-13 is no mass a loss can use


@dataclass
class Rows:
    """One sample's cached teacher rows."""
    ids: torch.Tensor  # [n, k] int64
    logp: torch.Tensor  # [n, k] fp32, tau = 1
    tails: torch.Tensor | None = None  # [n, len(taus)] fp32 tempered tail log-masses (NaN: unknown)
    taus: tuple[float, ...] = ()

    def tail_at(self, tau: float) -> torch.Tensor | None:
        """[n] the tail's log-mass at tau, or None when this cache does not hold it (the loss falls back)."""
        if self.tails is None:
            return None
        for i, t in enumerate(self.taus):
            if abs(t - tau) < 1e-9 and not torch.isnan(self.tails[:, i]).any():
                return self.tails[:, i]
        return None


def id_bits(vocab_size: int) -> int:
    return max(1, math.ceil(math.log2(max(2, vocab_size))))


def _width(vocab_size: int) -> int:
    """Bytes per entry: 3 while the ids leave at least 6 bits for the log-prob code, else 4."""
    return 3 if id_bits(vocab_size) <= 18 else 4


def pack(ids: torch.Tensor, logp: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[T, k] ids and fp32 log-probs -> [T, k, width] uint8."""
    width, bits = _width(vocab_size), id_bits(vocab_size)
    levels = 2 ** (8 * width - bits) - 1
    code = torch.round((-logp.float()).clamp(0, LOGP_FLOOR).sqrt() * (levels / math.sqrt(LOGP_FLOOR))).long()
    word = ids.long() | (code << bits)
    return torch.stack([(word >> (8 * b)) & 0xFF for b in range(width)], -1).to(torch.uint8)


def unpack(packed: torch.Tensor, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, k, width] uint8 -> ([T, k] int64 ids, [T, k] fp32 log-probs)."""
    width, bits = packed.shape[-1], id_bits(vocab_size)
    levels = 2 ** (8 * width - bits) - 1
    word = sum(packed[..., b].long() << (8 * b) for b in range(width))
    code = (word >> bits).float()
    return word & ((1 << bits) - 1), -(code * (math.sqrt(LOGP_FLOOR) / levels)) ** 2


def write_shard(path: Path, sample_ids: list[str], per_sample: list[tuple], vocab_size: int,
                taus: tuple[float, ...] = (1.0,)) -> int:
    """Write one shard atomically; per_sample holds (ids [n, k], logp [n, k], tails [n, len(taus)] or None).
    -> bytes written."""
    from safetensors.torch import save_file

    k = per_sample[0][0].shape[-1] if per_sample else 0
    ids = torch.cat([p[0] for p in per_sample]) if per_sample else torch.zeros(0, k, dtype=torch.long)
    logp = torch.cat([p[1].float() for p in per_sample]) if per_sample else torch.zeros(0, k)
    tails = torch.cat([p[2].float() if len(p) > 2 and p[2] is not None else
                       torch.full((p[0].shape[0], len(taus)), float("nan")) for p in per_sample]) \
        if per_sample else torch.zeros(0, len(taus))
    lengths = torch.tensor([0] + [p[0].shape[0] for p in per_sample])
    tensors = {"packed": pack(ids, logp, vocab_size), "tail": tails.to(torch.float16), "offsets": lengths.cumsum(0)}
    meta = {"format": FORMAT, "sample_ids": json.dumps(sample_ids), "k": str(k), "vocab_size": str(vocab_size),
            "taus": json.dumps(list(taus)), "id_bits": str(id_bits(vocab_size))}
    with atomic_path(path) as tmp:
        save_file({n: t.contiguous() for n, t in tensors.items()}, str(tmp), metadata=meta)
    return path.stat().st_size


def _read(shard: Path) -> tuple[list[str], list[Rows]]:
    from safetensors import safe_open

    with safe_open(str(shard), framework="pt") as f:
        meta = f.metadata()
        sample_ids, offsets = json.loads(meta["sample_ids"]), f.get_tensor("offsets")
        if meta.get("format") == FORMAT:
            ids, logp = unpack(f.get_tensor("packed"), int(meta["vocab_size"]))
            tails, taus = f.get_tensor("tail").float(), tuple(json.loads(meta["taus"]))
        else:  # the earlier format: int32 ids, fp16 log-probs, no tail
            ids, logp, tails, taus = f.get_tensor("ids").long(), f.get_tensor("logp").float(), None, ()
    rows = [Rows(ids[a:b], logp[a:b], None if tails is None else tails[a:b], taus)
            for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    return sample_ids, rows


def load_cache(folder: Path) -> dict[str, Rows]:
    """-> {sample_id: Rows} from every shard in folder."""
    out = {}
    for shard in sorted(Path(folder).glob("chunk-*.safetensors")):
        sample_ids, rows = _read(shard)
        out.update(zip(sample_ids, rows))
    return out


def cached_ids(folder: Path) -> set[str]:
    """The sample ids a folder of shards covers, read from the shard headers only (no tensors)."""
    from safetensors import safe_open

    out = set()
    for shard in Path(folder).glob("chunk-*.safetensors"):
        with safe_open(str(shard), framework="pt") as f:
            out.update(json.loads(f.metadata()["sample_ids"]))
    return out


TAIL_FLOOR = 1e-6  # least leftover mass: log-probs rounded for storage can sum to 1


def leftover_logmass(top_logp: torch.Tensor) -> torch.Tensor:
    """[N, k] top-k log-probs at tau = 1 -> [N] log(1 - sum of them), floored at TAIL_FLOOR: all that a top-k
    alone says of the tail (a server's cache, or one written before tails were kept)."""
    up = top_logp.float() if top_logp.dtype in (torch.float16, torch.bfloat16) else top_logp
    return torch.log1p(-up.exp().sum(-1).clamp(max=1.0 - TAIL_FLOOR))


def topk_rows(logits: torch.Tensor, k: int, taus: tuple[float, ...] = (1.0,)) -> tuple[torch.Tensor, ...]:
    """[T, V] raw logits -> ([T, k] ids, [T, k] fp32 log-probs, [T, len(taus)] tempered tail log-masses)."""
    logp = torch.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim=-1)
    values, ids = logp.topk(k, dim=-1)
    rest = logp.scatter(-1, ids, -torch.inf)
    return ids, values, torch.stack([torch.logsumexp(rest / t, -1) for t in taus], -1)


def check_matches(cache: dict, rows: list[dict]) -> None:
    """Every sample must have cached rows for exactly its completion tokens (+ eos if it stopped)."""
    for r in rows:
        got = cache.get(r["sample_id"])
        if got is None:
            raise DepthtuneError(f"cached teacher logits have no entry for sample {r['sample_id']}; "
                                 f"regenerate with --set generate.topk=K or use an online teacher")
        want = len(r["completion_ids"]) + bool(r.get("finished"))
        if got.ids.shape[0] != want:
            raise DepthtuneError(f"cached teacher logits do not match sample {r['sample_id']}: "
                                 f"{got.ids.shape[0]} cached positions for {want} target tokens; "
                                 f"the cache and samples come from different runs; regenerate them together")
