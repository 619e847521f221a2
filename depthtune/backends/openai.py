"""Sampling from an OpenAI-compatible server: vLLM, SGLang, llama.cpp's server, TGI or a hosted API.

    depthtune run --backend openai --base-url http://127.0.0.1:8000/v1 [--served-model NAME] [--api-key-env VAR]

One request per sample, `backend.concurrency` of them in flight (a thread pool). The openai SDK gives
each request a timeout (`backend.timeout`) and retries timeouts, dropped connections, 429 and 5xx with
exponential backoff (`backend.retries`). Each request's seed derives from (chunk seed, prompt id, sample
index), so a chunk redone after a crash asks for the same answers; servers that honour seeds
(llama.cpp, vLLM) give them back.

Prompts: endpoint=completions sends the text of the local prompt ids (data.template: the chat template
or the raw text, as LocalSampler reads them), special tokens
spelled out, which llama.cpp and vLLM tokenise back to the same ids (tests check it on llama.cpp);
endpoint=chat sends the messages and lets the server template them (hosted chat APIs). Rows keep the
local prompt ids either way, for the score stage.

Returned tokens become local ids by the bytes they spell (vocab.TokenMap). A sample with a token the
local vocabulary cannot represent is re-tokenised from its text and loses its per-token log-probs;
such tokens are counted in `unmapped` (the generate manifest records it). Log-probs are of the
server's raw next-token distribution (llama.cpp's and vLLM's default), as LocalSampler's are.

Top-k rows (topk > 0) come from `top_logprobs`, asked HEADROOM deeper than needed so that a few
alternatives the local vocabulary lacks can be dropped (counted) and the row still holds k real
entries; a row that cannot be filled, or a sampled token that does not map, is an error, never a
padded or invented row. The eos step: llama.cpp and vLLM return the step that chose the end of
sequence as the last entry (llama.cpp names it with an empty string and its id); when a server
leaves it out (hosted APIs), its row is read with one more request on the completions endpoint
(prompt + answer, one token), and refused with a one-line error on the chat endpoint.

The API key is read once from the environment variable named by `backend.api_key_env` and held only
by the client; configs, manifests and logs carry the variable's name. Without api_key_env the key
sent is "none", never OPENAI_API_KEY, so a key meant for OpenAI does not go to another server.
"""
from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import openai
import torch

from ..errors import DepthtuneError
from ..prompting import prompt_ids, resolve_template
from . import completion_row, request_seed
from .vocab import Step, TokenMap, parse_steps

HEADROOM = 4  # extra top alternatives asked for, spare for those the local vocabulary cannot represent


@dataclass
class Sample:
    ids: list[int]
    logprobs: list[float] | None
    finished: bool
    text: str | None  # the server's text when the ids were re-tokenised from it, else None (decode the ids)
    top: tuple[torch.Tensor, torch.Tensor] | None = None
    unmapped: tuple[list[str], list[str]] = ((), ())  # (sampled tokens, top alternatives) that did not map


def api_key(env: str | None) -> str:
    if env is None:
        return "none"
    key = os.environ.get(env)
    if not key:
        raise DepthtuneError(f"--api-key-env {env}: the environment variable {env} is not set; export {env}=KEY")
    return key


def server_says(e: openai.APIStatusError) -> str:
    """The server's own error message, first line."""
    body = e.body if isinstance(e.body, dict) else {}
    err = body.get("error") if isinstance(body.get("error"), dict) else body
    return str(err.get("message") or e.message or f"HTTP {e.status_code}").splitlines()[0][:300]


class OpenAISampler:
    """Answers from an OpenAI-compatible server; the same rows and top-k rows as LocalSampler."""

    def __init__(self, cfg, tok, log=print, template: str = "auto"):
        self.cfg, self.tok, self.log = cfg, tok, log
        self.template = resolve_template(tok, template)  # chat or raw, as LocalSampler's
        if self.template == "raw" and cfg.endpoint == "chat":
            raise DepthtuneError("--template raw sends the prompt text as given, which the chat endpoint cannot "
                                 "(the server applies its chat template); use --set backend.endpoint=completions")
        self.name = cfg.kind if cfg.kind in ("openai", "llama-server") else "openai"
        self.url = cfg.base_url
        self.client = openai.OpenAI(base_url=cfg.base_url, api_key=api_key(cfg.api_key_env), timeout=cfg.timeout,
                                    max_retries=cfg.retries)
        self.served_model = self._pick_model(cfg.model)
        self.tmap = TokenMap(tok)
        self.pool = ThreadPoolExecutor(cfg.concurrency, thread_name_prefix="depthtune-openai")
        self.depths: dict[int, int] = {}  # top-k -> alternatives to ask for (probed once)
        self.unmapped = {"sampled": 0, "alternatives": 0, "examples": []}
        log(f"  sampling from {self.url} (model {self.served_model}, {cfg.endpoint} endpoint, {cfg.concurrency} in flight)")

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    # -- errors ---------------------------------------------------------------------------------

    def _fail(self, e: openai.APIError, midway: bool) -> DepthtuneError:
        """An SDK error (after its retries) -> one line that says what to do."""
        resume = "; run the same command again to resume from the last finished chunk" if midway else ""
        if isinstance(e, openai.APIConnectionError):
            what = "lost the server" if midway else "cannot reach the server"
            kind = "timed out" if isinstance(e, openai.APITimeoutError) else "connection failed"
            fix = resume or "; start the server or fix --base-url"
            return DepthtuneError(f"{what} at {self.url} ({kind} after {self.cfg.retries} retries){fix}")
        if isinstance(e, openai.AuthenticationError):
            return DepthtuneError(f"the server at {self.url} refused the API key (HTTP 401); put the right key in "
                                  f"the environment variable named by --api-key-env")
        if isinstance(e, openai.NotFoundError):
            name = getattr(self, "served_model", None) or self.cfg.model or "?"
            return DepthtuneError(f"the server at {self.url} answered 404 for model '{name}': "
                                  f"{server_says(e)}; check --base-url (it ends in /v1) and --served-model")
        if isinstance(e, openai.RateLimitError):
            return DepthtuneError(f"the server at {self.url} kept answering 429 (rate limit) after "
                                  f"{self.cfg.retries} retries; lower --set backend.concurrency{resume}")
        if isinstance(e, openai.APIStatusError):  # a 4xx comes back on a rerun: no point suggesting one
            again = resume if e.status_code >= 500 else ""
            return DepthtuneError(f"the server at {self.url} answered HTTP {e.status_code}: {server_says(e)}{again}")
        return DepthtuneError(f"the server at {self.url} sent an answer that is not OpenAI-shaped ({e}){resume}")

    def _pick_model(self, wanted: str | None) -> str:
        """The server's model to ask: the one named (it must be listed), else its only one."""
        try:
            listed = self.client.with_options(max_retries=min(self.cfg.retries, 2)).models.list().model_dump()
        except openai.NotFoundError:  # a server without /v1/models: trust the name given
            if wanted:
                return wanted
            raise DepthtuneError(f"the server at {self.url} does not list its models; name one with --served-model")
        except openai.APIError as e:
            raise self._fail(e, midway=False) from None
        names = {}
        for m in listed.get("data") or []:  # llama.cpp also answers to its aliases
            for n in [m.get("id")] + list(m.get("aliases") or []):
                names.setdefault(n, m.get("id"))
        if wanted is None:
            ids = sorted({v for v in names.values() if v})
            if len(ids) != 1:
                raise DepthtuneError(f"the server at {self.url} serves {len(ids)} models ({', '.join(ids) or 'none'}); "
                                     f"pick one with --served-model NAME")
            return ids[0]
        if wanted not in names:
            raise DepthtuneError(f"the server at {self.url} has no model '{wanted}'; it serves: "
                                 f"{', '.join(sorted(set(names.values())))}; pass one of them to --served-model")
        return wanted

    # -- requests -------------------------------------------------------------------------------

    def _ask(self, prompt, *, max_tokens: int, temperature: float, top_p: float, seed: int | None,
             depth: int) -> dict:
        """One request -> its first choice as a plain dict (extra fields kept: llama.cpp's ids and bytes).

        prompt: text for the completions endpoint, a message list for the chat endpoint.
        depth: top alternatives per step (0: the chosen token's log-prob only)."""
        common = {"model": self.served_model, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
                  **({"seed": seed} if seed is not None else {})}
        if self.cfg.endpoint == "chat":
            r = self.client.chat.completions.create(messages=prompt, logprobs=True,
                                                    **({"top_logprobs": depth} if depth else {}), **common)
        else:  # logprobs=0 means "none" on llama.cpp: ask for at least the top one
            r = self.client.completions.create(prompt=prompt, logprobs=max(depth, 1), **common)
        choices = r.model_dump().get("choices") or []
        if not choices:
            raise DepthtuneError(f"the server at {self.url} answered with no choices for model '{self.served_model}'")
        c = choices[0]
        c["text"] = c.get("text") if self.cfg.endpoint != "chat" else (c.get("message") or {}).get("content")
        c["text"] = c["text"] or ""
        return c

    def _prompt(self, tok_ids: list[int], item: dict, system_prompt: str | None):
        if self.cfg.endpoint == "chat":
            messages = item.get("messages") or [{"role": "user", "content": item["prompt"]}]
            if system_prompt and messages[0]["role"] != "system":
                messages = [{"role": "system", "content": system_prompt}] + messages
            return messages
        return self.tok.decode(tok_ids, skip_special_tokens=False)

    def _depth(self, prompt, topk: int) -> int:
        """Alternatives to ask for at top-k, found with a one-token probe: one-line errors for a server
        that gives no log-probs or fewer than topk of them."""
        if topk in self.depths:
            return self.depths[topk]
        refused = None
        for ask in dict.fromkeys((topk + HEADROOM, topk)):
            try:
                choice = self._ask(prompt, max_tokens=1, temperature=1.0, top_p=1.0, seed=0, depth=ask)
            except openai.BadRequestError as e:  # vLLM and OpenAI refuse a depth past their maximum
                refused = server_says(e)
                continue
            except openai.APIError as e:
                raise self._fail(e, midway=False) from None
            steps = parse_steps(choice.get("logprobs"))
            if not steps:
                raise DepthtuneError(f"the server at {self.url} returned no log-probs; top-k rows (generate.topk="
                                     f"{topk}) need a server that returns them (vLLM, llama.cpp, SGLang), or set "
                                     f"generate.topk=0")
            got = len(steps[0].top)
            if got < topk:
                raise DepthtuneError(f"the server at {self.url} gives at most {got} top log-probs per token; "
                                     f"generate.topk={topk} is deeper: lower it to {got}")
            self.depths[topk] = ask
            return ask
        most = re.search(r"max(?:imum)?\D{0,20}(\d+)", refused or "")
        raise DepthtuneError(f"the server at {self.url} refuses top-k {topk}" +
                             (f" (it allows at most {most.group(1)})" if most else "") +
                             f": {refused}; lower generate.topk" + ("" if not most else f" to {most.group(1)}"))

    # -- sampling -------------------------------------------------------------------------------

    def sample_chunk(self, items: list[dict], *, k: int, temperature: float, top_p: float, max_new_tokens: int,
                     seed: int, system_prompt: str | None, topk: int = 0) -> tuple[list[dict], float, list]:
        """k completions per item -> (rows, wall seconds, per-row (ids [n, topk], logp [n, topk]) when topk > 0)."""
        ids = [prompt_ids(self.tok, it, system_prompt, self.template) for it in items]
        prompts = [self._prompt(p, it, system_prompt) for p, it in zip(ids, items)]
        depth = self._depth(prompts[0], topk) if topk else 0
        start = time.perf_counter()
        params = {"max_tokens": max_new_tokens, "temperature": temperature, "depth": depth,
                  "top_p": top_p if temperature > 0 else 1.0}
        futures = [self.pool.submit(self._sample, prompts[i], {**params, "seed": request_seed(seed, it["id"], j)}, topk)
                   for i, it in enumerate(items) for j in range(k)]
        try:
            samples = [f.result() for f in futures]
        except BaseException:
            for f in futures:  # requests not yet sent are dropped; the chunk is redone on the next start
                f.cancel()
            raise
        seconds = time.perf_counter() - start
        rows = [completion_row(items[r // k], r % k, ids[r // k], s.ids, self.tok, logprobs=s.logprobs,
                               finished=s.finished, seconds=seconds / len(samples), text=s.text)
                for r, s in enumerate(samples)]
        self._count(samples)
        return rows, seconds, [s.top for s in samples] if topk else []

    def _sample(self, prompt, params: dict, topk: int) -> Sample:
        try:
            return self._convert(self._ask(prompt, **params), prompt, topk, params["depth"])
        except openai.APIError as e:
            raise self._fail(e, midway=True) from None

    def _convert(self, choice: dict, prompt, topk: int, depth: int) -> Sample:
        """A server's choice -> local ids, chosen log-probs and (topk > 0) the top-k rows."""
        steps, text = parse_steps(choice.get("logprobs")), choice["text"]
        finished = choice.get("finish_reason") == "stop"
        if steps is None:
            if topk:
                raise DepthtuneError(f"the server at {self.url} returned no log-probs; top-k rows need them")
            return Sample(self.tok.encode(text, add_special_tokens=False), None, finished, text)
        eos = steps.pop() if finished and steps and self.tmap.is_stop(steps[-1].chosen) else None
        ids = [self.tmap.local_id(s.chosen) for s in steps]
        missing = [s.chosen.text for s, i in zip(steps, ids) if i is None]
        if missing and topk:
            raise DepthtuneError(f"the server sampled {len(missing)} tokens the local vocabulary cannot represent "
                                 f"({', '.join(map(repr, missing[:5]))}); top-k rows need every token: serve the "
                                 f"model whose tokenizer --model names, or set generate.topk=0")
        if missing:  # fall back to the text; the per-token log-probs no longer line up
            return Sample(self.tok.encode(text, add_special_tokens=False), None, finished, text, None, (missing, []))
        logprobs = [s.chosen.logprob for s in steps]
        sample = Sample(ids, None if None in logprobs else logprobs, finished, None)
        if topk:
            if finished and eos is None:
                eos = self._eos_step(prompt, text, depth)
            sample.top, dropped = self._top_rows(steps + ([eos] if finished else []), topk)
            sample.unmapped = ([], dropped)
        return sample

    def _eos_step(self, prompt, text: str, depth: int) -> Step:
        """The step that chose eos, for a server that leaves it out: the next-token distribution after the answer."""
        if self.cfg.endpoint == "chat":
            raise DepthtuneError(f"the server at {self.url} leaves the end-of-sequence step out of its log-probs, "
                                 f"and top-k rows need it; use --set backend.endpoint=completions")
        choice = self._ask(prompt + text, max_tokens=1, temperature=1.0, top_p=1.0, seed=0, depth=depth)
        steps = parse_steps(choice.get("logprobs"))
        if not steps:
            raise DepthtuneError(f"the server at {self.url} returned no log-probs for the end-of-sequence step")
        return steps[0]

    def _top_rows(self, steps: list[Step], topk: int) -> tuple[tuple[torch.Tensor, torch.Tensor], list[str]]:
        """Steps -> (ids int32 [n, topk], logp fp16 [n, topk]) of the first topk alternatives that map."""
        ids = torch.zeros(len(steps), topk, dtype=torch.int32)
        logp = torch.zeros(len(steps), topk, dtype=torch.float16)
        dropped = []
        for t, step in enumerate(steps):
            row: dict[int, float] = {}
            for alt in step.top:
                i = self.tmap.local_id(alt)
                if i is None:
                    dropped.append(alt.text)
                elif i not in row:
                    row[i] = alt.logprob
                if len(row) == topk:
                    break
            if len(row) < topk:
                raise DepthtuneError(f"only {len(row)} of the server's {len(step.top)} top tokens at one step exist "
                                     f"in the local vocabulary (not: {', '.join(map(repr, dropped[-5:]))}); top-k "
                                     f"rows need {topk}: serve the model --model names, or lower generate.topk")
            ids[t] = torch.tensor(list(row), dtype=torch.int32)
            logp[t] = torch.tensor(list(row.values())).to(torch.float16)
        return (ids, logp), dropped

    def _count(self, samples: list[Sample]) -> None:
        sampled = [t for s in samples for t in s.unmapped[0]]
        alts = [t for s in samples for t in s.unmapped[1]]
        if not sampled and not alts:
            return
        u = self.unmapped
        u["sampled"] += len(sampled)
        u["alternatives"] += len(alts)
        u["examples"] = list(dict.fromkeys(u["examples"] + sampled + alts))[:20]
        self.log(f"  {len(sampled)} sampled tokens (samples re-tokenised from their text) and {len(alts)} top "
                 f"alternatives (dropped) are not in the local vocabulary: {', '.join(map(repr, (sampled + alts)[:5]))}")
