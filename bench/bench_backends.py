"""Benchmark the samplers side by side on the embedded model: in-process (continuous batching, and
transformers' generate) vs llama.cpp's server.

    python bench/bench_backends.py                     # 48 built-in prompts x 4 samples x 128 new tokens
    python bench/bench_backends.py --concurrency 16    # more requests in flight (and server slots)
    python bench/bench_backends.py --per-suite 2       # 6 prompts: a quick look

Every sampler gets the same prompts in the chunks the generate stage uses (4 x generate.batch_size
sequences), the default sampling settings (temperature 0.8, top-p 0.95, generate.max_new_tokens), with
and without top-20 log-probs (a cached teacher). They take turns chunk by chunk, so that a machine whose
load changes meanwhile slows all alike. The in-process samplers run the GGUF dequantised to fp32 (the
continuous batcher with generate.batch_size sequences at once; transformers' generate on the same
batches, as models whose cache the batcher cannot join are sampled); OpenAISampler talks to a managed
llama-server (Q4_1 as shipped, all CPU threads, one slot per request in flight). Prints tokens per second
and the ratio to the continuous batcher. A benchmark, not a test: nothing here asserts a time; the load
average printed before and after says whether the machine was idle.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from depthtune.backends.llama_server import LlamaServer  # noqa: E402
from depthtune.backends.local import LocalSampler  # noqa: E402
from depthtune.backends.openai import OpenAISampler  # noqa: E402
from depthtune.config import BackendConfig, GenerateConfig  # noqa: E402
from depthtune.models import embedded_gguf, load_model, load_tokenizer, quiet  # noqa: E402
from depthtune.stages.generate import chunk_prompts  # noqa: E402
from depthtune.suites import load_suites  # noqa: E402

_G = GenerateConfig()
GEN = {"k": _G.k, "temperature": _G.temperature, "top_p": _G.top_p, "max_new_tokens": _G.max_new_tokens,
       "system_prompt": None}


def prompts(n_per_suite: int = 8) -> list[dict]:
    """The first n training prompts of each built-in suite (24 by default)."""
    train, _ = load_suites(["arithmetic", "word_problems", "facts"])
    return [it for suite in ("arithmetic", "word_problems", "facts")
            for it in [x for x in train if x["suite"] == suite][:n_per_suite]]


def chunk_tokens(sampler, chunk: list[dict], seed: int, topk: int) -> tuple[int, float]:
    """-> (completion tokens, wall seconds) of one chunk."""
    rows, secs, _ = sampler.sample_chunk(chunk, seed=seed, topk=topk, **GEN)
    return sum(len(r["completion_ids"]) for r in rows), secs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight (= server slots)")
    ap.add_argument("--per-suite", type=int, default=16, help="prompts per built-in suite (3 suites)")
    args = ap.parse_args()
    quiet()
    items, tok = prompts(args.per_suite), load_tokenizer(None)
    per = chunk_prompts(_G.batch_size, GEN["k"])
    chunks = [items[c:c + per] for c in range(0, len(items), per)]  # as the generate stage chunks them
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs", flush=True)
    model = load_model(None)
    local = LocalSampler(model, tok, batch_size=_G.batch_size)
    generate = LocalSampler(model, tok, batch_size=_G.batch_size)
    generate.engine = "transformers generate"
    names = {"local": f"in-process, continuous batching ({_G.batch_size})",
             "generate": "in-process, transformers generate", "served": f"llama-server ({args.concurrency} in flight)"}
    totals = {(name, topk): [0, 0.0] for topk in (0, 20) for name in names}
    # transformers' generate decodes a batch until its longest answer ends: it gets the same sequences in
    # batches of generate.batch_size, as it would sample them
    with LlamaServer(embedded_gguf(), log=lambda *_: None, parallel=args.concurrency) as url:
        served = OpenAISampler(BackendConfig(kind="llama-server", base_url=url, concurrency=args.concurrency), tok,
                               log=lambda *_: None)
        samplers = {"local": local, "generate": generate, "served": served}
        for sampler in samplers.values():  # warm-up: first-call allocations, kernels, the server's prompt cache
            chunk_tokens(sampler, items[:2], 0, 0)
        for topk in (0, 20):
            for c, chunk in enumerate(chunks):  # alternate chunk by chunk, so both see the same machine load
                for name, sampler in samplers.items():
                    tokens, secs = chunk_tokens(sampler, chunk, c, topk)
                    totals[name, topk][0] += tokens
                    totals[name, topk][1] += secs
                    print(f"  {name} top-k {topk} chunk {c + 1}/{len(chunks)}: {tokens / secs:.1f} tok/s", flush=True)
        served.close()
    print(f"\n{len(items)} prompts x {GEN['k']} samples x <= {GEN['max_new_tokens']} new tokens, "
          f"T = {GEN['temperature']}, top-p = {GEN['top_p']}")
    print(f"{'sampler':<44}{'top-k':>6}{'tokens':>8}{'seconds':>9}{'tok/s':>8}{'vs batcher':>11}")
    for (name, topk), (tokens, secs) in totals.items():
        base = totals["local", topk][0] / totals["local", topk][1]
        print(f"{names[name]:<44}{topk:>6}{tokens:>8}{secs:>9.1f}{tokens / secs:>8.1f}{tokens / secs / base:>10.2f}x")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
