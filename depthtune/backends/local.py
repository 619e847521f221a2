"""In-process sampling with transformers' `generate`, memory-safe at any vocabulary and length.

Each decoding step's logits pass through StepRecorder, a logits processor that runs before the
temperature and top-p warpers. It keeps the chosen token's log-prob (read one step later, when
the token is known) and, for a cached teacher, the step's top-k ids and log-probs. Nothing of
size [batch, steps, vocabulary] is kept: the largest live tensor is one step's [batch, V]
log-softmax. (`generate(output_logits=True)` kept every step's fp32 logits: at a 152k vocabulary,
1,024 new tokens and 64 sequences that is ~40 GB for one batch.)

Log-probs are of the raw next-token distribution (temperature 1, before top-p), the same
quantity the teacher cache and the score stage use.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from ..prompting import prompt_ids, resolve_template
from . import completion_row, left_pad


class StepRecorder(LogitsProcessor):
    """Keeps per step only [B] chosen-token log-probs and [B, k] top-k rows (k = 0: none)."""

    def __init__(self, topk: int = 0):
        self.topk = topk
        self.prev: torch.Tensor | None = None  # [B, V] log-probs of the step before; the only [B, V] kept
        self.chosen: list[torch.Tensor] = []  # per step [B] fp32
        self.top_ids: list[torch.Tensor] = []  # per step [B, k] int32
        self.top_logp: list[torch.Tensor] = []  # per step [B, k] fp16

    def _take_chosen(self, tokens: torch.Tensor) -> None:
        self.chosen.append(self.prev.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).float().cpu())

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.prev is not None:  # the token chosen at the step before is the last input id now
            self._take_chosen(input_ids[:, -1])
        logp = F.log_softmax(scores.float(), dim=-1)  # [B, V]
        if self.topk:
            values, ids = logp.topk(self.topk, dim=-1)
            self.top_ids.append(ids.to(torch.int32).cpu())
            self.top_logp.append(values.to(torch.float16).cpu())
        self.prev = logp
        return scores

    def finish(self, new_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """[B, steps] generated ids -> ([B, steps] chosen log-probs, [B, steps, k] ids, logp or None)."""
        if self.prev is not None and len(self.chosen) < new_tokens.shape[1]:
            self._take_chosen(new_tokens[:, -1].to(self.prev.device))
        self.prev = None
        chosen = torch.stack(self.chosen, 1) if self.chosen else torch.zeros(new_tokens.shape[0], 0)
        if not self.topk:
            return chosen, None, None
        return chosen, torch.stack(self.top_ids, 1), torch.stack(self.top_logp, 1)


def stop_ids(model, tok) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return ids


class LocalSampler:
    """Answers from a model in this process (any device it sits on)."""

    name = "local"

    def __init__(self, model, tok, template: str = "auto"):
        self.model, self.tok = model, tok
        self.template = resolve_template(tok, template)  # chat or raw; the generate manifest records it

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    @torch.no_grad()
    def sample_chunk(self, items: list[dict], *, k: int, temperature: float, top_p: float, max_new_tokens: int,
                     seed: int, system_prompt: str | None, topk: int = 0) -> tuple[list[dict], float, list]:
        """k completions per item -> (rows, wall seconds, per-row (ids [n, topk], logp [n, topk]) when topk > 0)."""
        model, tok = self.model, self.tok
        device = next(model.parameters()).device
        prompts = [prompt_ids(tok, it, system_prompt, self.template) for it in items]
        input_ids, mask = left_pad(prompts, tok.pad_token_id, device)
        recorder = StepRecorder(topk)
        processors = [recorder]
        if temperature > 0:  # the warpers after the recorder, so it sees the raw distribution
            processors += [TemperatureLogitsWarper(temperature)] + ([TopPLogitsWarper(top_p)] if top_p < 1 else [])
            sampling = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
        else:
            sampling = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        torch.manual_seed(seed)
        start = time.perf_counter()
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             num_return_sequences=k, logits_processor=LogitsProcessorList(processors),
                             return_dict_in_generate=True, pad_token_id=tok.pad_token_id, **sampling)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        new = out.sequences[:, input_ids.shape[1]:]  # [B*k, steps]
        chosen, top_ids, top_logp = recorder.finish(new)
        new = new.cpu()
        stops, rows, cached = stop_ids(model, tok), [], []
        for r in range(new.shape[0]):
            seq = new[r].tolist()
            end = next((t for t, x in enumerate(seq) if x in stops), len(seq))
            rows.append(completion_row(items[r // k], r % k, prompts[r // k], seq[:end], tok,
                                       logprobs=chosen[r, :end].tolist(), finished=end < len(seq),
                                       seconds=seconds / new.shape[0]))
            if topk:  # one row per completion token, plus the step that chose eos when it stopped
                n = end + 1 if end < len(seq) else end
                cached.append((top_ids[r, :n].contiguous(), top_logp[r, :n].contiguous()))
        return rows, seconds, cached
