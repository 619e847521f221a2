"""A teacher behind a server scoring tokens someone else wrote: what on-policy distillation from a served
teacher needs (depthtune.distill.onpolicy, losses.onpolicy_pg_loss).

    score_tokens(sampler, prompt_ids, completion_ids, topk=20) -> {logprobs, ids, logp, misses, requests}

One request per position, the prompt given as token ids up to that position (max_tokens=1, top_logprobs
topk): llama.cpp's server has no `echo` of prompt log-probs, and its prompt cache makes each request
compute one new token. A token outside the teacher's top-k gets the k-th log-prob (an upper bound on its
own) and is counted in `misses`. The ids are the local tokenizer's: the server must serve a model with the
same vocabulary (a token-id prompt means nothing to another one).
"""
from __future__ import annotations

import openai
import torch

from ..errors import DepthtuneError
from .openai import AllServersLost, OpenAISampler
from .vocab import parse_steps


def score_tokens(sampler: OpenAISampler, prompt: list[int], completion: list[int], topk: int = 20) -> dict:
    """The teacher's log-prob of each completion token and its top-k there (see the module docstring)."""
    depth = sampler.depth_for(prompt, topk) if topk else 1
    futures = [sampler.pool.submit(step_at, sampler, prompt + completion[:t], depth) for t in range(len(completion))]
    steps = [f.result() for f in futures]
    out_lp, misses = [], 0
    ids, logp = torch.zeros(len(steps), topk, dtype=torch.long), torch.zeros(len(steps), topk)
    for t, step in enumerate(steps):
        row: dict[int, float] = {}
        for alt in step.top:
            i = sampler.tmap.local_id(alt)
            if i is not None and i not in row:
                row[i] = alt.logprob
        if completion[t] in row:
            out_lp.append(row[completion[t]])
        else:
            out_lp.append(min(row.values()) if row else -30.0)
            misses += 1
        kept = list(row.items())[:topk]
        ids[t, :len(kept)] = torch.tensor([i for i, _ in kept])
        logp[t, :len(kept)] = torch.tensor([v for _, v in kept])
    return {"logprobs": torch.tensor(out_lp), "ids": ids, "logp": logp, "misses": misses, "requests": len(steps)}


def step_at(sampler: OpenAISampler, ids: list[int], depth: int):
    """The teacher's next-token distribution after `ids` (one request, one token)."""
    try:
        choice = sampler.ask(ids, max_tokens=1, temperature=1.0, top_p=1.0, seed=0, depth=depth)
    except AllServersLost:
        raise DepthtuneError(f"lost every server ({sampler.url}); run the same command again to resume") from None
    except openai.APIError as e:
        raise sampler.fail(e, midway=True) from None
    steps = parse_steps(choice.get("logprobs"))
    if not steps:
        raise DepthtuneError(f"the server at {sampler.url} returned no log-probs; on-policy distillation from a "
                             f"server needs a teacher that returns them (vLLM, llama.cpp, SGLang)")
    return steps[0]
