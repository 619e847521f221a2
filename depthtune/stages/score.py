"""Stage 2, score: CDM, its parts, the mean token log-prob, degenerate flags, correctness and majority
votes per sample.

Reads  <run>/generate/samples.jsonl
Writes <run>/score/scored.jsonl (+ manifest.json)

Per batch (whole prompts with all their samples), two passes, each in two steps:
  prompts once  -> their KV cache, repeated for each of the prompt's k samples (the prompt is about
                   half of the tokens; it is not recomputed k times)
  completions   -> on top of that cache. The clean pass runs with eager attention, and a forward hook on
                   every attention module reduces that layer's [B, H, L, T] weights to the CDM statistic
                   as the layer runs, so memory holds one layer's attention, never all of them.
The perturbed pass (Gaussian noise on the input embeddings: seeded per prompt for the prompt's
positions, so its cache is shared too, and per sample for the completion) needs no attention weights
and runs with the model's fast attention. The LM head runs chunk by chunk over positions: no
[batch, length, vocabulary] logits are kept. The maths lives in depthtune.cdm.

With score.cdm off there is no forward pass: the mean log-prob is the sampler's own record.

Votes (self-consistency): each sample's answer_key (the number it answers with, else its stated text,
depthtune.checking), its agreement (the share of its prompt's samples that give the same answer) and
`majority` (its answer is the prompt's single most common one, given by two samples or more).
"""
from __future__ import annotations

import dataclasses
import inspect
import zlib
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import artifacts, cdm, distributed, models
from ..backends import left_pad
from ..checking import answer_key
from ..config import RunConfig, ScoreConfig
from ..degenerate import FLAGS, flags
from ..errors import DepthtuneError
from ..progress import Progress
from ..verifiers import judge

HEAD_CHUNK = 256  # positions per LM-head chunk


@contextmanager
def attention(model, impl: str):
    """Run with attention implementation `impl`; put the model's own back afterwards."""
    before = model.config._attn_implementation
    if before != impl:
        model.set_attn_implementation(impl)
    try:
        yield
    finally:
        if before != impl:
            model.set_attn_implementation(before)


def attention_modules(model) -> list:
    found = [m for name, m in model.named_modules() if name.endswith("self_attn")]
    if not found:
        raise DepthtuneError(f"{type(model).__name__}: no attention modules named 'self_attn' to read CDM's "
                             f"attention part from; set score.weights.attention_sparsification to 0")
    return found


class SparsityMeter:
    """Inside `with`: every attention layer adds its CDM statistic for the completion queries to
    .sum and .count ([B] each) as it runs; the layer's weights are dropped right after."""

    def __init__(self, model, key_mask: torch.Tensor, query_mask: torch.Tensor):
        self.modules, self.key_mask, self.query_mask = attention_modules(model), key_mask, query_mask
        self.sum = torch.zeros(key_mask.shape[0], device=key_mask.device)
        self.count = torch.zeros_like(self.sum)
        self.handles = []

    def _hook(self, module, args, output):
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if weights is None:
            raise DepthtuneError("the attention layers returned no weights; CDM's attention part needs eager attention")
        s, n = cdm.attention_sparsity(weights, self.key_mask, self.query_mask)
        self.sum += s
        self.count += n

    def __enter__(self):
        self.handles = [m.register_forward_hook(self._hook) for m in self.modules]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    def value(self) -> torch.Tensor:
        return self.sum / self.count.clamp_min(1.0)


@contextmanager
def _measured(model, meter: SparsityMeter):
    """Eager attention and the meter's hooks: only the clean completions' attention is CDM's."""
    with attention(model, "eager"), meter:
        yield


def _noise(seed: int, key: str, shape, scale: float, device, dtype) -> torch.Tensor:
    """Seeded by (seed, key): a score does not depend on which batch the sample landed in."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{key}".encode()))
    return (torch.randn(shape, generator=gen) * scale).to(device=device, dtype=dtype)


def _noisy(embeds: torch.Tensor, mask: torch.Tensor, keys: list[str], noise: float, seed: int) -> torch.Tensor:
    """[B, T, D] embeddings + noise of std noise * RMS(the row's real embeddings) on its real positions."""
    out = embeds.clone()
    for b, key in enumerate(keys):
        real = mask[b].bool()
        if noise > 0 and real.any():
            x = embeds[b, real]
            scale = noise * x.float().pow(2).mean().sqrt().item()
            out[b, real] += _noise(seed, key, x.shape, scale, embeds.device, embeds.dtype)
    return out


def _two_step(backbone, prompt_in: dict, comp_in: dict, idx: torch.Tensor, p_mask, full_mask, pos,
              during_completion=None):
    """Prompts once, their cache repeated for each sample (index_select along the batch), then the
    completions on top. -> (the prompt's last hidden state per sample [B, D], completions' [B, L, D])."""
    p_pos = (p_mask.cumsum(-1) - 1).clamp_min(0)
    out = backbone(**prompt_in, attention_mask=p_mask, position_ids=p_pos, use_cache=True)
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    cache.reorder_cache(idx)
    last = out.last_hidden_state[:, -1][idx]
    # transformers renamed past_key_values to cache (5.24 warns, 5.17 knows only the old name)
    name = "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"
    with during_completion or nullcontext():
        comp = backbone(**comp_in, attention_mask=full_mask, position_ids=pos, use_cache=True, **{name: cache})
    return last, comp.last_hidden_state


def _position_stats(model, head, clean_h, noisy_h, targets, mask) -> tuple[torch.Tensor, ...]:
    """Per predicting position, chunk by chunk through the head: certainty, JSD(clean, noisy), the log-prob
    of the sampled token. Inputs [B, L, D] x2, [B, L] ids and mask -> three [B, L]."""
    B, L, _ = clean_h.shape
    cert, jsd, logp = (torch.zeros(B, L, device=clean_h.device) for _ in range(3))
    for s in range(0, L, max(1, HEAD_CHUNK // B)):
        sl = slice(s, s + max(1, HEAD_CHUNK // B))
        zc = models.head_logits(model, head, clean_h[:, sl]).float()
        zn = models.head_logits(model, head, noisy_h[:, sl]).float()
        cert[:, sl] = cdm.token_certainty(zc)
        jsd[:, sl] = cdm.token_jsd(zc, zn)
        logp[:, sl] = F.log_softmax(zc, -1).gather(-1, targets[:, sl].unsqueeze(-1)).squeeze(-1)
    return cert * mask, jsd * mask, logp * mask


@torch.no_grad()
def score_batch(model, rows: list[dict], pad_id: int, noise: float, seed: int,
                weights: dict[str, float]) -> list[dict]:
    device = next(model.parameters()).device
    empty = dict(cdm=0.0, mean_logprob=None, **{p: 0.0 for p in cdm.PARTS})
    lengths = torch.tensor([len(r["completion_ids"]) for r in rows], device=device)
    L = int(lengths.max())
    if L == 0:  # an empty answer has no depth
        return [dict(empty) for _ in rows]
    keys = list(dict.fromkeys(tuple(r["prompt_ids"]) for r in rows))
    idx = torch.tensor([keys.index(tuple(r["prompt_ids"])) for r in rows], device=device)  # [B] row -> prompt
    p_ids, p_mask = left_pad([list(k) for k in keys], pad_id, device)  # [P, Tp]
    c_ids = torch.full((len(rows), L), pad_id, dtype=torch.long, device=device)
    for b, r in enumerate(rows):
        c_ids[b, :len(r["completion_ids"])] = torch.tensor(r["completion_ids"], device=device)
    c_mask = (torch.arange(L, device=device).unsqueeze(0) < lengths.unsqueeze(1)).long()  # [B, L]
    full_mask = torch.cat([p_mask[idx], c_mask], dim=1)  # [B, Tp + L]
    pos = p_mask.sum(-1)[idx].unsqueeze(1) + torch.arange(L, device=device).unsqueeze(0)  # [B, L]
    backbone, head = models.split_head(model)

    meter = SparsityMeter(model, full_mask, c_mask.bool())
    clean_last, clean = _two_step(backbone, {"input_ids": p_ids}, {"input_ids": c_ids}, idx, p_mask, full_mask, pos,
                                  during_completion=_measured(model, meter))
    embed = model.get_input_embeddings()
    noisy_p = _noisy(embed(p_ids), p_mask, [f"prompt:{zlib.crc32(str(k).encode())}" for k in keys], noise, seed)
    noisy_c = _noisy(embed(c_ids), c_mask, [r["sample_id"] for r in rows], noise, seed)
    noisy_last, noisy = _two_step(backbone, {"inputs_embeds": noisy_p}, {"inputs_embeds": noisy_c}, idx, p_mask,
                                  full_mask, pos)

    # the hidden state before token t predicts it: the prompt's last one, then the completion's own
    clean_h = torch.cat([clean_last.unsqueeze(1), clean[:, :-1]], dim=1)
    noisy_h = torch.cat([noisy_last.unsqueeze(1), noisy[:, :-1]], dim=1)
    pred = c_mask.bool()
    cert, jsd, logp = _position_stats(model, head, clean_h, noisy_h, c_ids, pred)
    parts = {"entropy_collapse": cdm.entropy_collapse(cert, pred), "attention_sparsification": meter.value(),
             "basin_resistance": cdm.basin_resistance(jsd, pred)}
    total = cdm.combine(parts, weights)
    mean_logp = logp.sum(-1) / lengths.clamp_min(1)
    out = []
    for b in range(len(rows)):
        if lengths[b] == 0:
            out.append(dict(empty))
        else:
            out.append(dict(cdm=round(total[b].item(), 3), mean_logprob=round(mean_logp[b].item(), 5),
                            **{p: round(parts[p][b].item(), 5) for p in cdm.PARTS}))
    return out


def batches(rows: list[dict], size: int) -> list[list[dict]]:
    """Whole prompts per batch (their samples share the prompt's cache), shortest first to limit padding;
    a prompt with more samples than `size` gets batches of its own."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r["prompt_ids"]), []).append(r)
    ordered = sorted(groups.values(), key=lambda g: len(g[0]["prompt_ids"]) + max(len(r["completion_ids"]) for r in g))
    out, cur = [], []
    for g in ordered:
        for part in (g[i:i + size] for i in range(0, len(g), size)):
            if cur and len(cur) + len(part) > size:
                out.append(cur)
                cur = []
            cur = cur + part
    return out + ([cur] if cur else [])


def cost(batch: list[dict]) -> int:
    """Tokens a batch runs through the model: each prompt once (its cache is shared), every completion.
    Batches go shortest first, so progress counted in samples would promise too early an end."""
    prompts = {tuple(r["prompt_ids"]) for r in batch}
    return sum(map(len, prompts)) + sum(len(r["completion_ids"]) for r in batch)


def judged(row: dict, checker: str | None) -> dict:
    correct, check = judge(row, checker)
    return {"correct": correct, **({"check": check} if check is not None else {})}


def without_cdm(row: dict) -> dict:
    """What the score stage records when it runs no model: the sampler's mean log-prob, no CDM."""
    lp = row.get("logprobs")
    return dict(cdm=None, mean_logprob=round(sum(lp) / len(lp), 5) if lp else None, **{p: None for p in cdm.PARTS})


def score_rows(model, tok, rows: list[dict], cfg: ScoreConfig, partial: Path | None = None,
               progress=print, desc: str = "score", hint: str | None = None, checker: str | None = None) -> list[dict]:
    """Score rows batch by batch; resumable through `partial` (each finished batch appended). Progress
    (a bar on a terminal, else `progress` lines) counts tokens; `hint` names the caps of a long stage.
    `checker` is data.checker (a verifier's module:function, or a built-in name)."""
    done = {r["sample_id"]: r for r in (artifacts.repair_partial(partial) if partial else [])}
    if done:
        progress(f"  resuming: {len(done)} samples already scored")
    todo = batches([r for r in rows if r["sample_id"] not in done], cfg.batch_size)
    bar = Progress(sum(map(cost, todo)), desc, unit="token", log=progress, hint=hint)
    for batch in todo:
        scores = score_batch(model, batch, tok.pad_token_id, cfg.noise, cfg.seed, cfg.weights) if cfg.cdm \
            else [without_cdm(r) for r in batch]
        new = [{**r, **s, **judged(r, checker), "degenerate": flags(r)} for r, s in zip(batch, scores)]
        if partial:
            artifacts.append_jsonl(partial, new)
        done.update((n["sample_id"], n) for n in new)
        bar.update(cost(batch), samples=f"{len(done)}/{len(rows)}")
    bar.close()
    return [done[r["sample_id"]] for r in rows]


def votes(rows: list[dict]) -> list[dict]:
    """Each row with its answer_key, agreement (share of its prompt's samples giving the same answer) and
    majority (its answer is the prompt's unique most common one, given at least twice)."""
    from collections import Counter

    keys = [answer_key(r["completion"]) if r["completion_ids"] else None for r in rows]
    by: dict[str, Counter] = {}
    size: dict[str, int] = {}
    for r, k in zip(rows, keys):
        size[r["prompt_id"]] = size.get(r["prompt_id"], 0) + 1
        if k is not None:
            by.setdefault(r["prompt_id"], Counter())[k] += 1
    out = []
    for r, k in zip(rows, keys):
        tally = by.get(r["prompt_id"], Counter())
        top = tally.most_common(2)
        unique = bool(top) and top[0][1] >= 2 and (len(top) == 1 or top[0][1] > top[1][1])
        out.append({**r, "answer_key": k, "agreement": round(tally[k] / size[r["prompt_id"]], 4) if k else 0.0,
                    "majority": bool(unique and k == top[0][0])})
    return out


def score_shared(model, tok, rows: list[dict], cfg: ScoreConfig, partial: Path, **kw) -> list[dict]:
    """score_rows on this process's block of samples under `accelerate launch` (per-process partial files,
    see depthtune.distributed); -> every sample scored, in the order of `rows`, on every process."""
    def work(part: list[dict], path: Path, _first: int) -> list[dict]:
        return score_rows(model, tok, part, cfg, path, **kw)

    done = {r["sample_id"]: r for r in distributed.split_work(partial, rows, work, unit_key="sample_id",
                                                              row_key="sample_id")}
    return [done[r["sample_id"]] for r in rows]


def degenerate_counts(rows: list[dict]) -> dict:
    """{flag: samples with it} plus 'any' (a sample can carry several flags)."""
    counts = {f: sum(f in (r.get("degenerate") or []) for r in rows) for f in FLAGS}
    return {**counts, "any": sum(bool(r.get("degenerate")) for r in rows)}


def needs_cdm(run_dir: Path, cfg: RunConfig) -> bool:
    """score.cdm, or when it is None: whether the selector that will run ranks by CDM (or compare's
    distill.curriculum orders by it)."""
    from ..selectors import SELECTORS, resolve
    from ..verifiers import load_checker

    if cfg.score.cdm is not None:
        return cfg.score.cdm
    if cfg.distill.curriculum == "cdm":
        return True
    prompts = artifacts.read_json(Path(run_dir) / "prompts" / "manifest.json")
    labelled = cfg.select.require_correct and (bool(prompts.get("with_answers")) or
                                               load_checker(cfg.data.checker) is not None)
    return SELECTORS[resolve(cfg.select.selector, labelled, cfg.select.threshold)].cdm


def run(run_dir: Path, cfg: RunConfig, model, tok, cdm: bool = True) -> dict:
    stage_dir = Path(run_dir) / "score"
    stage_dir.mkdir(parents=True, exist_ok=True)
    rows = artifacts.read_jsonl(Path(run_dir) / "generate" / "samples.jsonl")
    scored = score_shared(model, tok, rows, dataclasses.replace(cfg.score, cdm=cdm), stage_dir / "scored.partial.jsonl",
                          hint="--max-train-prompts N or --k N", checker=cfg.data.checker)
    if not distributed.is_main():  # the main process writes the stage's files
        return distributed.others_read(stage_dir, "score")
    scored = votes(scored)
    artifacts.write_jsonl(stage_dir / "scored.jsonl", scored)
    judged = [r["correct"] for r in scored if r["correct"] is not None]
    with_cdm = [r["cdm"] for r in scored if r.get("cdm") is not None]
    manifest = artifacts.write_manifest(
        stage_dir, "score", cfg.to_dict(), samples=len(scored),
        mean_cdm=round(sum(with_cdm) / len(with_cdm), 3) if with_cdm else None,
        accuracy=round(sum(judged) / len(judged), 4) if judged else None, degenerate=degenerate_counts(scored),
        majority=sum(r["majority"] for r in scored))
    (stage_dir / "scored.partial.jsonl").unlink(missing_ok=True)
    return distributed.main_wrote(manifest)
