"""Several teachers, one set of soft targets: their next-token distributions averaged.

Each teacher reads every pooled sample (its own and the others'), under its own system
prompt, in one forward pass; the per-position probabilities are averaged over teachers
and the top-k of the average is cached in the same safetensors format as a single
teacher's (depthtune.teacher_cache), so training reads one cache either way.

    p_avg(. | x, y<t) = (1/T) sum_i p_i(. | context_i, x, y<t)

Averaging probabilities (not logits) keeps the mixture a proper distribution that puts
mass wherever any teacher does (the "multi-teacher KD" of You et al., 2017).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..prompting import prompt_ids
from ..teacher_cache import topk_rows, write_shard


@torch.no_grad()
def target_logprobs(model, rows: list[dict], prompts: list[list[int]], pad_id: int) -> list[torch.Tensor]:
    """Log-probs [n_i, V] at every target position of each row: its completion tokens, plus the
    step that chose eos when the sample stopped by itself (as generation caches them)."""
    device = next(model.parameters()).device
    seqs = [p + r["completion_ids"] for p, r in zip(prompts, rows)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()  # [B, T, V]
    out = []
    for i, (p, r) in enumerate(zip(prompts, rows)):
        n = len(r["completion_ids"]) + bool(r.get("finished"))
        start = len(p) - 1  # the logits at position t predict token t + 1
        out.append(F.log_softmax(logits[i, start:start + n], dim=-1).cpu())
    return out


def average_topk(teachers: list[tuple], rows: list[dict], k: int, batch_size: int = 8, template: str = "auto",
                 taus: tuple[float, ...] = (1.0,)):
    """teachers: [(model, tok, system_prompt)]; -> per row (ids [n, k], logp [n, k], tempered tails [n, len(taus)])."""
    out = []
    for b in range(0, len(rows), batch_size):
        batch = rows[b:b + batch_size]
        total = None
        for model, tok, system in teachers:
            prompts = [prompt_ids(tok, r, system, template) for r in batch]
            lps = target_logprobs(model, batch, prompts, tok.pad_token_id)
            probs = [lp.exp() for lp in lps]
            total = probs if total is None else [a + p for a, p in zip(total, probs)]
        for p in total:
            out.append(topk_rows((p / len(teachers)).clamp_min(1e-30).log(), k, taus))
    return out


def build(folder: Path, teachers: list[tuple], rows: list[dict], k: int, vocab_size: int,
          shard_rows: int = 64, log=print, template: str = "auto", taus: tuple[float, ...] = (1.0,)) -> int:
    """Write the averaged rows of `rows` as new shards after those already in folder (each shard
    atomic, so an interrupted build keeps what it finished). -> the number of samples cached."""
    folder = Path(folder)
    first = len(list(folder.glob("chunk-*.safetensors")))
    for s, start in enumerate(range(0, len(rows), shard_rows)):
        part = rows[start:start + shard_rows]
        write_shard(folder / f"chunk-{first + s:05d}.safetensors", [r["sample_id"] for r in part],
                    average_topk(teachers, part, k, template=template, taus=taus), vocab_size, taus)
        log(f"  top-k rows: {min(start + shard_rows, len(rows))}/{len(rows)} samples, {len(teachers)} teacher(s)")
    return len(rows)
