"""Stage 2, score: CDM (and, with references, a correctness verdict) for every sample.

Reads  <run>/generate/samples.jsonl
Writes <run>/score/scored.jsonl (+ manifest.json)

Two forward passes per batch over prompt + completion: a clean one with attention
weights (eager attention) and one with seeded Gaussian noise on the input embeddings.
The maths lives in depthtune.cdm; this module only runs the model.
"""
from __future__ import annotations

import zlib
from contextlib import contextmanager
from pathlib import Path

import torch

from .. import artifacts, cdm
from ..backends import left_pad
from ..checking import is_correct
from ..config import RunConfig, ScoreConfig


@contextmanager
def eager_attention(model):
    """Attention weights need the eager implementation; restore the faster one afterwards."""
    before = model.config._attn_implementation
    if before != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if before != "eager":
            model.set_attn_implementation(before)


def _noise(seed: int, sample_id: str, shape, scale: float, device, dtype) -> torch.Tensor:
    """Seeded per sample, so a score does not depend on which batch the sample landed in."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{sample_id}".encode()))
    return (torch.randn(shape, generator=gen) * scale).to(device=device, dtype=dtype)


@torch.no_grad()
def score_batch(model, rows: list[dict], pad_id: int, noise: float, seed: int,
                weights: dict[str, float]) -> list[dict]:
    device = next(model.parameters()).device
    seqs = [r["prompt_ids"] + r["completion_ids"] for r in rows]
    lengths = torch.tensor([len(r["completion_ids"]) for r in rows], device=device)  # [B]
    input_ids, attn_mask = left_pad(seqs, pad_id, device)  # [B, T]
    B, T = input_ids.shape
    L = int(lengths.max())
    if L == 0:
        return [dict(cdm=0.0, **{p: 0.0 for p in cdm.PARTS}) for _ in rows]
    keep = L + 1  # logits at the last L+1 positions cover every completion-predicting position
    col = torch.arange(keep, device=device).unsqueeze(0)
    pred_mask = (col >= L - lengths.unsqueeze(1)) & (col < L)  # [B, L+1]
    pos = torch.arange(T, device=device).unsqueeze(0)
    query_mask = pos >= T - lengths.unsqueeze(1)  # [B, T] completion tokens as queries

    clean = model(input_ids=input_ids, attention_mask=attn_mask, output_attentions=True, logits_to_keep=keep)
    certainty = cdm.token_certainty(clean.logits)  # [B, L+1]
    sums = torch.zeros(B, device=device)
    counts = torch.zeros(B, device=device)
    for layer_attn in clean.attentions:  # each [B, H, T, T]
        s, n = cdm.attention_sparsity(layer_attn, attn_mask, query_mask)
        sums, counts = sums + s, counts + n
    sparsity = sums / counts.clamp_min(1.0)

    embeds = model.get_input_embeddings()(input_ids)  # [B, T, D]
    if noise > 0:
        for b, r in enumerate(rows):
            real = embeds[b, T - len(seqs[b]):]
            scale = noise * real.float().pow(2).mean().sqrt().item()
            embeds[b, T - len(seqs[b]):] += _noise(seed, r["sample_id"], real.shape, scale, device, embeds.dtype)
    noisy = model(inputs_embeds=embeds, attention_mask=attn_mask, logits_to_keep=keep)
    jsd = cdm.token_jsd(clean.logits, noisy.logits)  # [B, L+1]

    parts = {"entropy_collapse": cdm.entropy_collapse(certainty, pred_mask),
             "attention_sparsification": sparsity,
             "basin_resistance": cdm.basin_resistance(jsd, pred_mask)}
    total = cdm.combine(parts, weights)
    out = []
    for b in range(B):
        if lengths[b] == 0:  # an empty answer has no depth
            out.append(dict(cdm=0.0, **{p: 0.0 for p in cdm.PARTS}))
        else:
            out.append(dict(cdm=round(total[b].item(), 3), **{p: round(parts[p][b].item(), 5) for p in cdm.PARTS}))
    return out


def judge(row: dict) -> bool | None:
    """The reference-answer verdict (None when the prompt has no reference)."""
    return is_correct(row["completion"], row["answer"], row["checker"]) if row.get("answer") is not None else None


def score_rows(model, tok, rows: list[dict], cfg: ScoreConfig, partial: Path | None = None,
               progress=print) -> list[dict]:
    """Score rows in batches (sorted by length to limit padding); resumable through `partial`."""
    done = {r["sample_id"]: r for r in (artifacts.repair_partial(partial) if partial else [])}
    if done:
        progress(f"  resuming: {len(done)} samples already scored")
    todo = sorted((r for r in rows if r["sample_id"] not in done),
                  key=lambda r: len(r["prompt_ids"]) + len(r["completion_ids"]))
    with eager_attention(model):
        for i in range(0, len(todo), cfg.batch_size):
            batch = todo[i:i + cfg.batch_size]
            scores = score_batch(model, batch, tok.pad_token_id, cfg.noise, cfg.seed, cfg.weights)
            new = []
            for r, s in zip(batch, scores):
                new.append({**r, **s, "correct": judge(r)})
            if partial:
                artifacts.append_jsonl(partial, new)
            done.update((n["sample_id"], n) for n in new)
            if (i // cfg.batch_size) % 5 == 4:
                progress(f"  scored {len(rows) - len(todo) + i + len(batch)}/{len(rows)}")
    return [done[r["sample_id"]] for r in rows]


def run(run_dir: Path, cfg: RunConfig, model, tok) -> dict:
    stage_dir = Path(run_dir) / "score"
    stage_dir.mkdir(parents=True, exist_ok=True)
    rows = artifacts.read_jsonl(Path(run_dir) / "generate" / "samples.jsonl")
    scored = score_rows(model, tok, rows, cfg.score, stage_dir / "scored.partial.jsonl")
    artifacts.write_jsonl(stage_dir / "scored.jsonl", scored)
    judged = [r["correct"] for r in scored if r["correct"] is not None]
    manifest = artifacts.write_manifest(
        stage_dir, "score", cfg.to_dict(), samples=len(scored),
        mean_cdm=round(sum(r["cdm"] for r in scored) / max(1, len(scored)), 3),
        accuracy=round(sum(judged) / len(judged), 4) if judged else None)
    (stage_dir / "scored.partial.jsonl").unlink(missing_ok=True)
    return manifest
