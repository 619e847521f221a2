"""Stage 1, generate: sample k completions per training prompt, batched, log-probs kept.

Reads  <run>/prompts/train.jsonl
Writes <run>/generate/samples.jsonl (+ manifest.json)

Prompts go in fixed chunks, each with its own seed; a finished chunk is appended to
samples.partial.jsonl and fsynced. A killed run resumes at the first unfinished chunk,
so no sample is lost or written twice and the result equals an uninterrupted run's.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .. import artifacts
from ..config import RunConfig
from ..prompting import prompt_ids
from ..teacher_cache import topk_rows, write_shard

PROMPT_KEYS = ("answer", "checker", "suite", "category", "level")


def stop_ids(model, tok) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return ids


def left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """-> input_ids [B, T], attention_mask [B, T], padded on the left."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def sample_chunk(model, tok, items: list[dict], *, k: int, temperature: float, top_p: float,
                 max_new_tokens: int, seed: int, system_prompt: str | None,
                 topk: int = 0) -> tuple[list[dict], float, list]:
    """Generate k completions for each item.

    -> (sample rows, wall seconds, per-sample (ids, logp) top-k teacher rows when topk > 0).
    """
    device = next(model.parameters()).device
    prompts = [prompt_ids(tok, it, system_prompt) for it in items]
    input_ids, mask = left_pad(prompts, tok.pad_token_id, device)
    torch.manual_seed(seed)
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature > 0 \
        else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    start = time.perf_counter()
    out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                         num_return_sequences=k, output_logits=True, return_dict_in_generate=True,
                         pad_token_id=tok.pad_token_id, **sampling)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    new = out.sequences[:, input_ids.shape[1]:].cpu()  # [B*k, steps]
    logits = torch.stack(out.logits, dim=1).float()  # [B*k, steps, V] raw, before temperature/top-p
    logprobs = F.log_softmax(logits, -1).gather(-1, new.unsqueeze(-1).to(logits.device)).squeeze(-1).cpu()
    stops, rows, cached = stop_ids(model, tok), [], []
    for r in range(new.shape[0]):
        item, j = items[r // k], r % k
        seq = new[r].tolist()
        end = next((t for t, x in enumerate(seq) if x in stops), len(seq))
        ids = seq[:end]
        rows.append({
            "sample_id": f"{item['id']}#{j}", "prompt_id": item["id"],
            **({"messages": item["messages"]} if item.get("messages") else {"prompt": item["prompt"]}),
            **{key: item.get(key) for key in PROMPT_KEYS},
            "prompt_ids": prompts[r // k], "completion_ids": ids,
            "completion": tok.decode(ids, skip_special_tokens=True),
            "logprobs": [round(x, 5) for x in logprobs[r, :end].tolist()],
            "finished": end < len(seq),
            "gen_seconds": round(seconds / new.shape[0], 6),  # its share of the batch's wall time
        })
        if topk:  # one row per completion token, plus the step that chose eos when it stopped
            cached.append(topk_rows(logits[r, :end + 1 if end < len(seq) else end], topk))
    return rows, seconds, cached


def sample_all(model, tok, items: list[dict], partial: Path, *, k: int, temperature: float, top_p: float,
               max_new_tokens: int, batch_size: int, seed: int, system_prompt: str | None = None,
               topk: int = 0, progress: Callable[[str], None] = print) -> tuple[list[dict], float]:
    """Sample every item in seeded chunks, appending each finished chunk to `partial`.

    With topk > 0 each chunk's teacher top-k rows go to <partial's folder>/topk/chunk-NNNNN.safetensors,
    written before the chunk's rows are appended, so a resumed chunk rewrites its own shard.
    -> (all rows in prompt order, generation seconds of all of them, resumed chunks included).
    """
    per_chunk = max(1, batch_size // k)
    rows = artifacts.repair_partial(partial)
    done = {r["prompt_id"] for r in rows}
    if rows:
        progress(f"  resuming: {len(rows)} samples of {len(done)} prompts already generated")
    chunks = [items[i:i + per_chunk] for i in range(0, len(items), per_chunk)]
    for c, chunk in enumerate(chunks):
        if all(it["id"] in done for it in chunk):
            continue
        new, secs, cached = sample_chunk(model, tok, chunk, k=k, temperature=temperature, top_p=top_p,
                                         max_new_tokens=max_new_tokens, seed=seed * 1_000_003 + c,
                                         system_prompt=system_prompt, topk=topk)
        if topk:
            write_shard(partial.parent / "topk" / f"chunk-{c:05d}.safetensors", [r["sample_id"] for r in new],
                        cached, model.config.vocab_size)
        artifacts.append_jsonl(partial, new)
        rows += new
        ntok = sum(len(r["completion_ids"]) for r in new)
        progress(f"  chunk {c + 1}/{len(chunks)}: {len(new)} samples, {ntok} tokens, {ntok / max(secs, 1e-9):.0f} tok/s")
    order = {it["id"]: i for i, it in enumerate(items)}
    rows.sort(key=lambda r: (order[r["prompt_id"]], r["sample_id"]))
    return rows, sum(r["gen_seconds"] for r in rows)


def run(run_dir: Path, cfg: RunConfig, model, tok) -> dict:
    stage_dir = Path(run_dir) / "generate"
    stage_dir.mkdir(parents=True, exist_ok=True)
    items = artifacts.read_jsonl(Path(run_dir) / "prompts" / "train.jsonl")
    g = cfg.generate
    rows, seconds = sample_all(model, tok, items, stage_dir / "samples.partial.jsonl", k=g.k,
                               temperature=g.temperature, top_p=g.top_p, max_new_tokens=g.max_new_tokens,
                               batch_size=g.batch_size, seed=g.seed, system_prompt=cfg.data.system_prompt, topk=g.topk)
    artifacts.write_jsonl(stage_dir / "samples.jsonl", rows)
    tokens = sum(len(r["completion_ids"]) for r in rows)
    cache_bytes = sum(p.stat().st_size for p in (stage_dir / "topk").glob("*.safetensors")) if g.topk else 0
    manifest = artifacts.write_manifest(stage_dir, "generate", cfg.to_dict(), prompts=len(items), samples=len(rows),
                                        completion_tokens=tokens, seconds=round(seconds, 2), topk=g.topk,
                                        topk_bytes=cache_bytes,
                                        topk_bytes_per_token=round(cache_bytes / max(1, tokens), 1) if g.topk else None)
    (stage_dir / "samples.partial.jsonl").unlink(missing_ok=True)
    return manifest
