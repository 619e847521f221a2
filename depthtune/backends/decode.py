"""Continuous batching for in-process sampling: a fixed number of sequences decode together, a finished
sequence leaves the batch at once and a waiting one takes its place.

    decode(model, requests, pad_id=, stop_ids=, max_batch=32, temperature=0.8, top_p=0.95, max_new_tokens=128,
           topk=20, taus=(1.0, 2.0)) -> one Decoded per request, in order

Why by hand: `model.generate` decodes a batch until its longest answer ends, so with answers of 5 to
128 tokens most of the work went into padding (48 tok/s on the embedded model on 2 CPU cores, 28 tok/s
at a 128-token cap); transformers' own continuous batching (`generate_batch`, paged attention) ran at
33 tok/s on the same CPU and keeps neither per-request seeds nor the per-step top-k rows and tempered
tail masses the teacher cache needs. bench/bench_generate.py measures all three side by side.

How: each request is prefilled once per prompt (its k samples share the prompt's KV cache, repeated),
its cache is left-padded to the batch's length and joined to the running DynamicCache; every step runs
the batch one token forward with explicit position ids; finished rows are dropped from the cache, and
columns no row attends to any more are cut. Sampling draws one uniform number per step from the
request's own generator (seeded per sample), so a sample does not depend on which other samples shared
its batch: a chunk redone after a crash gives the same answers, and one cut differently gives the same
answers up to the rounding of batched float32 matmuls (which can move a draw that lies within ~1e-7 of a
boundary of the distribution; in float64 they round alike, tests/stages/test_generate.py).

Per step and sequence it keeps only: the chosen token's log-prob (raw distribution, temperature 1,
before top-p, as the score stage and the teacher cache use it), and with topk > 0 the top-k ids and
log-probs and, per temperature tau in `taus`, the tail's tempered log-mass log sum_{i not in top-k}
p_i^(1/tau), which makes a cached teacher exact at those temperatures (depthtune.distill.losses).
Nothing of size [batch, steps, vocabulary] is kept.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

NUCLEUS = 512  # candidates searched for the top-p nucleus before a full sort


@dataclass
class Request:
    prompt: list[int]
    seed: int
    group: int = 0
    """Requests of one group share a prompt: it is prefilled once and its cache repeated."""


@dataclass
class Decoded:
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finished: bool = False
    """True when the model chose a stop token (which is not in `tokens`); False at the token limit."""
    top_ids: list[torch.Tensor] = field(default_factory=list)  # per step [k] int32
    top_logp: list[torch.Tensor] = field(default_factory=list)  # per step [k] fp32
    tails: list[torch.Tensor] = field(default_factory=list)  # per step [len(taus)] fp32


def supports(model) -> bool:
    """Continuous batching joins caches along the batch: every layer must be a plain growing cache (no
    sliding window, no static or paged cache)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # a config DynamicCache cannot read
        return False
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


def _cache_kw(model) -> str:
    """transformers renamed past_key_values to cache (5.24 warns, 5.17 knows only the old name)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    if t.shape[dim] == width:
        return t
    shape = list(t.shape)
    shape[dim] = width - t.shape[dim]
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class Batch:
    """The running sequences: their cache, attention mask [B, T], next positions [B] and last logits [B, V]."""

    def __init__(self):
        self.cache = None
        self.mask = self.pos = self.logits = None
        self.rows: list[int] = []  # request index of each batch row

    def __len__(self) -> int:
        return len(self.rows)

    def join(self, cache, mask: torch.Tensor, pos: torch.Tensor, logits: torch.Tensor, rows: list[int]) -> None:
        if self.cache is None:
            self.cache, self.mask, self.pos, self.logits, self.rows = cache, mask, pos, logits, rows
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for mine, new in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([_pad_left(mine.keys, width, 2), _pad_left(new.keys, width, 2)])
            mine.values = torch.cat([_pad_left(mine.values, width, 2), _pad_left(new.values, width, 2)])
        self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(mask, width, 1)])
        self.pos, self.logits = torch.cat([self.pos, pos]), torch.cat([self.logits, logits])
        self.rows = self.rows + rows

    def keep(self, keep: list[int]) -> None:
        """Only these batch rows go on; columns no remaining row attends to are cut."""
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.__init__()
            return
        idx = torch.tensor(keep, device=self.mask.device)
        mask = self.mask[idx]
        start = int(mask.any(0).long().argmax())  # first column some row still attends to
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[idx, :, start:], layer.values[idx, :, start:]
        self.mask, self.pos, self.logits = mask[:, start:], self.pos[idx], self.logits[idx]
        self.rows = [self.rows[i] for i in keep]


def _prefill(model, prompts: list[list[int]], repeats: list[int], pad_id: int):
    """Prompts once, left-padded; -> (cache with each prompt's rows repeated, mask, next positions, last logits)."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                **{_cache_kw(model): cache})
    cache = getattr(out, "cache", None) or out.past_key_values
    idx = torch.repeat_interleave(torch.arange(len(prompts), device=device), torch.tensor(repeats, device=device))
    cache.reorder_cache(idx)
    return cache, mask[idx], mask.sum(-1)[idx], out.logits[:, -1].float()[idx]


def _sample(logits: torch.Tensor, gens: list[torch.Generator], temperature: float, top_p: float) -> torch.Tensor:
    """[B, V] raw logits -> [B] tokens: greedy at temperature 0, else temperature + top-p (nucleus) with one
    uniform draw per row from the row's own generator (inverse CDF over the kept tokens, most likely first).
    The nucleus is looked for among the top NUCLEUS tokens (a full sort of the vocabulary per step cost more
    than the model's forward pass at batch 64 on CPU); rows whose nucleus is wider are sorted in full."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = F.softmax(logits / temperature, dim=-1)
    sorted_p, order = probs.topk(min(NUCLEUS, probs.shape[-1]), dim=-1)
    wide = (sorted_p.sum(-1) < top_p) if top_p < 1 else torch.ones(len(probs), dtype=torch.bool, device=probs.device)
    if wide.any():  # the nucleus is not inside the top NUCLEUS tokens (or there is no top-p): every token
        full_p, full_order = probs[wide].sort(-1, descending=True)
        sorted_p = torch.cat([sorted_p, sorted_p.new_zeros(len(probs), probs.shape[-1] - sorted_p.shape[-1])], -1)
        order = torch.cat([order, order.new_zeros(len(probs), probs.shape[-1] - order.shape[-1])], -1)
        sorted_p[wide], order[wide] = full_p, full_order
    cum = sorted_p.cumsum(-1)
    if top_p < 1:  # the smallest set of top tokens whose mass reaches top_p (the one that crosses included)
        sorted_p = sorted_p.masked_fill(cum - sorted_p >= top_p, 0.0)
        cum = sorted_p.cumsum(-1)
    u = torch.stack([torch.rand((), generator=g) for g in gens]).to(cum) * cum[:, -1]
    pick = torch.searchsorted(cum, u.unsqueeze(-1)).clamp_max(cum.shape[-1] - 1)
    return order.gather(-1, pick).squeeze(-1)


@torch.no_grad()
def decode(model, requests: list[Request], *, pad_id: int, stop_ids: set[int], max_batch: int = 32,
           temperature: float = 0.8, top_p: float = 0.95, max_new_tokens: int = 128, topk: int = 0,
           taus: tuple[float, ...] = (1.0,)) -> list[Decoded]:
    """Every request decoded (see the module docstring); -> results in request order."""
    device = next(model.parameters()).device
    results = [Decoded() for _ in requests]
    gens = [torch.Generator().manual_seed(r.seed) for r in requests]
    stops = torch.tensor(sorted(stop_ids), device=device)
    waiting = list(range(len(requests)))
    batch = Batch()
    while waiting or len(batch):
        if waiting and len(batch) < max_batch:  # refill: the next requests, whole groups where they fit
            take, free = [], max_batch - len(batch)
            while waiting and len(take) < free:
                take.append(waiting.pop(0))
            groups: dict[int, list[int]] = {}
            for i in take:
                groups.setdefault(requests[i].group, []).append(i)
            order = [i for g in groups.values() for i in g]
            batch.join(*_prefill(model, [requests[g[0]].prompt for g in groups.values()],
                                 [len(g) for g in groups.values()], pad_id), order)
        logp = F.log_softmax(batch.logits, dim=-1)  # [B, V], the raw next-token distribution
        tokens = _sample(batch.logits, [gens[i] for i in batch.rows], temperature, top_p)
        chosen = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        if topk:
            top_logp, top_ids = logp.topk(topk, dim=-1)
            rest = logp.scatter(-1, top_ids, -torch.inf)
            tails = torch.stack([torch.logsumexp(rest / tau, -1) for tau in taus], -1)  # [B, len(taus)]
        is_stop = torch.isin(tokens, stops)
        keep, tok_list = [], tokens.tolist()
        for b, i in enumerate(batch.rows):
            res = results[i]
            if topk:  # the step that chose a stop token is learned too: its row is kept
                res.top_ids.append(top_ids[b].to(torch.int32).cpu())
                res.top_logp.append(top_logp[b].cpu())
                res.tails.append(tails[b].cpu())
            if bool(is_stop[b]):
                res.finished = True
                continue
            res.tokens.append(tok_list[b])
            res.logprobs.append(float(chosen[b]))
            if len(res.tokens) < max_new_tokens:
                keep.append(b)
        batch.keep(keep)
        if not len(batch):
            continue
        step_ids = tokens[torch.tensor(keep, device=device)] if len(keep) != len(tokens) else tokens
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch), 1)], dim=1)
        out = model(input_ids=step_ids.unsqueeze(-1), attention_mask=batch.mask, position_ids=batch.pos.unsqueeze(-1),
                    use_cache=True, **{_cache_kw(model): batch.cache})
        batch.pos = batch.pos + 1
        batch.logits = out.logits[:, -1].float()
    return results
