"""In-process sampling: continuous batching over the model's own forward pass (depthtune.backends.decode).

Models whose cache cannot be joined along the batch (sliding-window or static caches) go through
transformers' `generate` instead, with StepRecorder, a logits processor that runs before the temperature
and top-p warpers and keeps the chosen token's log-prob (read one step later, when the token is known)
and, for a cached teacher, the step's top-k ids, log-probs and tempered tail masses. Either way nothing
of size [batch, steps, vocabulary] is kept. (`generate(output_logits=True)` kept every step's fp32
logits: at a 152k vocabulary, 1,024 new tokens and 64 sequences that is ~40 GB for one batch.)

Log-probs are of the raw next-token distribution (temperature 1, before top-p), the same quantity the
teacher cache and the score stage use. Every sample has its own seed (backends.request_seed), so the
samples do not depend on how prompts were cut into chunks or batched (up to float rounding, see decode).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from ..prompting import prompt_ids, resolve_template
from . import completion_row, left_pad, request_seed
from .decode import Request, decode, supports


class StepRecorder(LogitsProcessor):
    """Keeps per step only [B] chosen-token log-probs and [B, k] top-k rows (+ [B, len(taus)] tails)."""

    def __init__(self, topk: int = 0, taus: tuple[float, ...] = (1.0,)):
        self.topk, self.taus = topk, taus
        self.prev: torch.Tensor | None = None  # [B, V] log-probs of the step before; the only [B, V] kept
        self.chosen: list[torch.Tensor] = []  # per step [B] fp32
        self.top_ids: list[torch.Tensor] = []  # per step [B, k] int32
        self.top_logp: list[torch.Tensor] = []  # per step [B, k] fp32
        self.tails: list[torch.Tensor] = []  # per step [B, len(taus)] fp32

    def _take_chosen(self, tokens: torch.Tensor) -> None:
        self.chosen.append(self.prev.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).float().cpu())

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.prev is not None:  # the token chosen at the step before is the last input id now
            self._take_chosen(input_ids[:, -1])
        logp = F.log_softmax(scores.float(), dim=-1)  # [B, V]
        if self.topk:
            values, ids = logp.topk(self.topk, dim=-1)
            rest = logp.scatter(-1, ids, -torch.inf)
            self.top_ids.append(ids.to(torch.int32).cpu())
            self.top_logp.append(values.cpu())
            self.tails.append(torch.stack([torch.logsumexp(rest / t, -1) for t in self.taus], -1).cpu())
        self.prev = logp
        return scores

    def finish(self, new_tokens: torch.Tensor):
        """[B, steps] generated ids -> ([B, steps] chosen log-probs, [B, steps, k] ids, logp, [B, steps, n] tails
        or None)."""
        if self.prev is not None and len(self.chosen) < new_tokens.shape[1]:
            self._take_chosen(new_tokens[:, -1].to(self.prev.device))
        self.prev = None
        chosen = torch.stack(self.chosen, 1) if self.chosen else torch.zeros(new_tokens.shape[0], 0)
        if not self.topk:
            return chosen, None, None, None
        return chosen, torch.stack(self.top_ids, 1), torch.stack(self.top_logp, 1), torch.stack(self.tails, 1)


def stop_ids(model, tok=None) -> set[int]:
    """Every id generation stops on: the generation config's end tokens, the model config's and the tokenizer's."""
    ids = set()
    for eos in (model.generation_config.eos_token_id, getattr(model.config, "eos_token_id", None),
                getattr(tok, "eos_token_id", None)):
        ids |= set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    return ids


class LocalSampler:
    """Answers from a model in this process (any device it sits on); `batch_size` sequences decode together."""

    name = "local"

    def __init__(self, model, tok, template: str = "auto", batch_size: int = 32):
        self.model, self.tok, self.batch_size = model, tok, batch_size
        self.template = resolve_template(tok, template)  # chat or raw; the generate manifest records it
        self.engine = "continuous batching" if supports(model) else "transformers generate"

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    @torch.no_grad()
    def sample_chunk(self, items: list[dict], *, k: int, temperature: float, top_p: float, max_new_tokens: int,
                     seed: int, system_prompt: str | None, topk: int = 0,
                     taus: tuple[float, ...] = (1.0,)) -> tuple[list[dict], float, list]:
        """k completions per item -> (rows, wall seconds, per row (ids [n, topk] int32, logp [n, topk] fp32,
        tails [n, len(taus)] fp32) when topk > 0)."""
        model, tok = self.model, self.tok
        prompts = [prompt_ids(tok, it, system_prompt, self.template) for it in items]
        requests = [Request(prompts[i], request_seed(seed, it["id"], j), group=i)
                    for i, it in enumerate(items) for j in range(k)]
        start = time.perf_counter()
        opts = dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, topk=topk, taus=tuple(taus))
        if self.engine == "continuous batching":
            results = decode(model, requests, pad_id=tok.pad_token_id, stop_ids=stop_ids(model, tok),
                             max_batch=self.batch_size, **opts)
        else:  # batches of batch_size sequences, each decoded until its longest answer ends
            per = max(1, self.batch_size // k)
            results = [res for b in range(0, len(prompts), per) for res in self._generate(prompts[b:b + per], k, seed, **opts)]
        if next(model.parameters()).device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        rows, cached = [], []
        for r, res in enumerate(results):
            rows.append(completion_row(items[r // k], r % k, prompts[r // k], res.tokens, tok, logprobs=res.logprobs,
                                       finished=res.finished, seconds=seconds / len(results)))
            if topk:  # one row per completion token, plus the step that chose the stop token when it stopped
                cached.append((torch.stack(res.top_ids), torch.stack(res.top_logp), torch.stack(res.tails)))
        return rows, seconds, cached

    def _generate(self, prompts: list[list[int]], k: int, seed: int, *, temperature: float, top_p: float,
                  max_new_tokens: int, topk: int, taus: tuple[float, ...]) -> list:
        """The same results through transformers' generate (one seed for the batch: models whose cache the
        continuous batcher cannot join)."""
        from .decode import Decoded

        model, tok = self.model, self.tok
        input_ids, mask = left_pad(prompts, tok.pad_token_id, next(model.parameters()).device)
        recorder = StepRecorder(topk, taus)
        processors = [recorder]
        if temperature > 0:  # the warpers after the recorder, so it sees the raw distribution
            processors += [TemperatureLogitsWarper(temperature)] + ([TopPLogitsWarper(top_p)] if top_p < 1 else [])
            sampling = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
        else:
            sampling = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        torch.manual_seed(seed)
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             num_return_sequences=k, logits_processor=LogitsProcessorList(processors),
                             return_dict_in_generate=True, pad_token_id=tok.pad_token_id, **sampling)
        new = out.sequences[:, input_ids.shape[1]:]  # [B*k, steps]
        chosen, top_ids, top_logp, tails = recorder.finish(new)
        new, stops, results = new.cpu(), stop_ids(model, tok), []
        for r in range(new.shape[0]):
            seq = new[r].tolist()
            end = next((t for t, x in enumerate(seq) if x in stops), len(seq))
            res = Decoded(seq[:end], chosen[r, :end].tolist(), end < len(seq))
            if topk:
                n = end + 1 if end < len(seq) else end
                res.top_ids, res.top_logp, res.tails = list(top_ids[r, :n]), list(top_logp[r, :n]), list(tails[r, :n])
            results.append(res)
        return results
