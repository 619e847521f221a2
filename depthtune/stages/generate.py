"""Stage 1, generate: sample k completions per training prompt, batched, log-probs kept.

Reads  <run>/prompts/train.jsonl
Writes <run>/generate/samples.jsonl (+ manifest.json)

Prompts go in fixed chunks; a finished chunk is appended to samples.partial.jsonl and fsynced. Every
sample's seed derives from (generate.seed, prompt id, sample index), not from its chunk or batch. A killed
run resumes at the first unfinished chunk, so no sample is lost or written twice and the result equals an
uninterrupted run's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .. import artifacts, distributed
from ..config import RunConfig
from ..progress import Progress
from ..teacher_cache import write_shard


def chunk_prompts(batch_size: int, k: int) -> int:
    """Prompts per chunk (the resume unit): 4 x batch_size sequences, so that continuous batching has
    answers waiting to take a finished one's place."""
    return max(1, 4 * batch_size // k)


def sample_all(sampler, items: list[dict], partial: Path, *, k: int, temperature: float, top_p: float,
               max_new_tokens: int, batch_size: int, seed: int, system_prompt: str | None = None,
               topk: int = 0, taus: tuple[float, ...] = (1.0,), progress: Callable[[str], None] = print,
               desc: str = "generate", hint: str | None = None) -> tuple[list[dict], float]:
    """Sample every item chunk by chunk, appending each finished chunk to `partial`.

    With topk > 0 each chunk's teacher top-k rows go to <partial's folder>/topk/chunk-NNNNN.safetensors,
    written before the chunk's rows are appended, so a resumed chunk rewrites its own shard.
    Progress (a bar on a terminal, else `progress` lines) counts prompts; `hint` names the caps that
    shorten a long stage. -> (all rows in prompt order, generation seconds of all of them, resumed chunks
    included).
    """
    per_chunk = chunk_prompts(batch_size, k)
    rows = artifacts.repair_partial(partial)
    done = {r["prompt_id"] for r in rows}
    if rows:
        progress(f"  resuming: {len(rows)} samples of {len(done)} prompts already generated")
    chunks = [items[i:i + per_chunk] for i in range(0, len(items), per_chunk)]
    bar = Progress(len(items), desc, unit="prompt", log=progress, initial=len(done), hint=hint)
    for c, chunk in enumerate(chunks):
        if all(it["id"] in done for it in chunk):
            continue
        new, secs, cached = sampler.sample_chunk(chunk, k=k, temperature=temperature, top_p=top_p,
                                                 max_new_tokens=max_new_tokens, seed=seed,
                                                 system_prompt=system_prompt, topk=topk, taus=taus)
        if topk:
            write_shard(partial.parent / "topk" / f"chunk-{c:05d}.safetensors", [r["sample_id"] for r in new],
                        cached, sampler.vocab_size, taus)
        artifacts.append_jsonl(partial, new)
        rows += new
        ntok = sum(len(r["completion_ids"]) for r in new)
        bar.update(sum(it["id"] not in done for it in chunk), tok_s=round(ntok / max(secs, 1e-9)))
    bar.close()
    order = {it["id"]: i for i, it in enumerate(items)}
    rows.sort(key=lambda r: (order[r["prompt_id"]], r["sample_id"]))
    return rows, sum(r["gen_seconds"] for r in rows)


def sample_shared(sampler, items: list[dict], partial: Path, **kw) -> tuple[list[dict], float]:
    """sample_all on this process's block of chunks under `accelerate launch` (see depthtune.distributed:
    every sample keeps its one-process seed; per-process partial files); -> every process's rows in
    prompt order and their generation seconds, as sample_all returns them in one process."""
    per_chunk = chunk_prompts(kw["batch_size"], kw["k"])  # sample_all's chunks

    def work(part: list[dict], path: Path, first_chunk: int) -> list[dict]:
        return sample_all(sampler, part, path, **kw)[0]

    rows = distributed.split_work(partial, items, work, unit_key="id", row_key="prompt_id", per_chunk=per_chunk,
                                  shards=kw.get("topk", 0) > 0)
    order = {it["id"]: i for i, it in enumerate(items)}
    rows.sort(key=lambda r: (order[r["prompt_id"]], r["sample_id"]))
    return rows, sum(r["gen_seconds"] for r in rows)


def run(run_dir: Path, cfg: RunConfig, sampler) -> dict:
    stage_dir = Path(run_dir) / "generate"
    stage_dir.mkdir(parents=True, exist_ok=True)
    items = artifacts.read_jsonl(Path(run_dir) / "prompts" / "train.jsonl")
    g = cfg.generate
    rows, seconds = sample_shared(sampler, items, stage_dir / "samples.partial.jsonl", k=g.k,
                               temperature=g.temperature, top_p=g.top_p, max_new_tokens=g.max_new_tokens,
                               batch_size=g.batch_size, seed=g.seed, system_prompt=cfg.data.system_prompt, topk=g.topk,
                               taus=tuple(g.topk_taus),
                               hint="--max-train-prompts N, --k N or --set generate.max_new_tokens=N")
    if not distributed.is_main():  # the main process writes the stage's files
        return distributed.others_read(stage_dir, "generate")
    artifacts.write_jsonl(stage_dir / "samples.jsonl", rows)
    tokens = sum(len(r["completion_ids"]) for r in rows)
    cache_bytes = sum(p.stat().st_size for p in (stage_dir / "topk").glob("*.safetensors")) if g.topk else 0
    manifest = artifacts.write_manifest(stage_dir, "generate", cfg.to_dict(), prompts=len(items), samples=len(rows),
                                        completion_tokens=tokens, seconds=round(seconds, 2), topk=g.topk,
                                        topk_bytes=cache_bytes,
                                        topk_bytes_per_token=round(cache_bytes / max(1, tokens), 1) if g.topk else None,
                                        backend=getattr(sampler, "name", "local"),
                                        served_model=getattr(sampler, "served_model", None),
                                        unmapped_tokens=getattr(sampler, "unmapped", None),
                                        template=getattr(sampler, "template", None),
                                        engine=getattr(sampler, "engine", None))
    (stage_dir / "samples.partial.jsonl").unlink(missing_ok=True)
    return distributed.main_wrote(manifest)
