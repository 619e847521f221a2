"""Samplers: where the answers come from.

local   in this process: continuous batching over the model's forward pass (depthtune.backends.local)

A sampler has `sample_chunk(items, k=, temperature=, top_p=, max_new_tokens=, seed=,
system_prompt=, topk=, taus=) -> (rows, seconds, cached)` and `vocab_size`; the generate and evaluate
stages drive it chunk by chunk (resume, sharding) and never look inside. Every sampler makes
the same row (completion_row), so the stages after generate cannot tell them apart.
"""
from __future__ import annotations

import hashlib

import torch

PROMPT_KEYS = ("answer", "checker", "suite", "category", "level")


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


def completion_row(item: dict, j: int, prompt: list[int], completion: list[int], tok, *,
                   logprobs: list[float] | None, finished: bool, seconds: float, text: str | None = None) -> dict:
    """One sample as every stage reads it: the j-th completion of `item`, in the local tokenizer's ids.

    logprobs: the chosen tokens' log-probs under the sampling model (None when the sampler gives
    none; the score stage recomputes them). seconds: the sample's share of its batch's wall time.
    """
    return {
        "sample_id": f"{item['id']}#{j}", "prompt_id": item["id"],
        **({"messages": item["messages"]} if item.get("messages") else {"prompt": item["prompt"]}),
        **{key: item.get(key) for key in PROMPT_KEYS},
        "prompt_ids": prompt, "completion_ids": completion,
        "completion": text if text is not None else tok.decode(completion, skip_special_tokens=True),
        "logprobs": None if logprobs is None else [round(x, 5) for x in logprobs],
        "finished": finished,
        "gen_seconds": round(seconds, 6),
    }


def request_seed(seed: int, prompt_id: str, j: int) -> int:
    """A stable 31-bit seed per (seed, prompt, sample): a sample is the same however the prompts were cut
    into chunks or batches, and a redone chunk asks for the same answers."""
    return int.from_bytes(hashlib.blake2b(f"{seed}/{prompt_id}/{j}".encode(), digest_size=4).digest(), "big") >> 1
