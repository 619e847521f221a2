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
import threading
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


def tails_of(logp: torch.Tensor, taus: tuple[float, ...]) -> torch.Tensor:
    """[n, k] top-k log-probs -> [n, len(taus)]: the tail's log-mass log(1 - sum p) at tau = 1, NaN elsewhere
    (what a top-k cannot tell)."""
    from ..teacher_cache import leftover_logmass

    left = leftover_logmass(logp.double()).float()
    return torch.stack([left if abs(t - 1.0) < 1e-9 else torch.full_like(left, float("nan")) for t in taus], -1)


def server_says(e: openai.APIStatusError) -> str:
    """The server's own error message, first line."""
    body = e.body if isinstance(e.body, dict) else {}
    err = body.get("error") if isinstance(body.get("error"), dict) else body
    return str(err.get("message") or e.message or f"HTTP {e.status_code}").splitlines()[0][:300]


@dataclass
class Replica:
    """One server of a run: its client, whether it still answers, and its requests in flight."""
    url: str
    client: openai.OpenAI
    alive: bool = True
    inflight: int = 0


class AllServersLost(Exception):
    pass


class OpenAISampler:
    """Answers from an OpenAI-compatible server, or several replicas of one (backend.base_url a list): the
    same rows and top-k rows as LocalSampler.

    Several replicas: each request goes to the live one with the fewest requests in flight; a replica whose
    connection fails (after the SDK's retries) is dropped, with a line in the log, and the request goes to
    another; when none is left the run stops, resumably. Every request carries its sample's own seed, so
    which replica answers does not change the sample (a server that batches requests may round differently:
    give it one slot per request in flight for answers that match bit for bit)."""

    def __init__(self, cfg, tok, log=print, template: str = "auto"):
        self.cfg, self.tok, self.log = cfg, tok, log
        self.template = resolve_template(tok, template)  # chat or raw, as LocalSampler's
        if self.template == "raw" and cfg.endpoint == "chat":
            raise DepthtuneError("--template raw sends the prompt text as given, which the chat endpoint cannot "
                                 "(the server applies its chat template); use --set backend.endpoint=completions")
        self.name = cfg.kind if cfg.kind in ("openai", "llama-server") else "openai"
        urls = [cfg.base_url] if isinstance(cfg.base_url, str) else list(cfg.base_url)
        self.url = ", ".join(urls)
        key = api_key(cfg.api_key_env)
        # with replicas to fall back on, a dead one is given up after one retry rather than cfg.retries
        retries = cfg.retries if len(urls) == 1 else min(cfg.retries, 1)
        self.replicas = [Replica(u, openai.OpenAI(base_url=u, api_key=key, timeout=cfg.timeout, max_retries=retries))
                         for u in urls]
        self.client = self.replicas[0].client
        self._lock = threading.Lock()
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
        for r in self.replicas:
            r.client.close()

    def _pick(self) -> Replica:
        with self._lock:
            alive = [r for r in self.replicas if r.alive]
            if not alive:
                raise AllServersLost()
            r = min(alive, key=lambda x: x.inflight)
            r.inflight += 1
            return r

    def _call(self, fn):
        """fn(client) on a live replica; a replica that cannot be reached is dropped and the call goes to another."""
        while True:
            replica = self._pick()
            try:
                return fn(replica.client)
            except openai.APIConnectionError:
                if len(self.replicas) == 1:
                    raise
                with self._lock:
                    if replica.alive:
                        replica.alive = False
                        left = sum(r.alive for r in self.replicas)
                        self.log(f"  lost the server at {replica.url}; {left} of {len(self.replicas)} left")
            finally:
                with self._lock:
                    replica.inflight -= 1

    # -- errors ---------------------------------------------------------------------------------

    def fail(self, e: openai.APIError, midway: bool, url: str | None = None) -> DepthtuneError:
        """An SDK error (after its retries) -> one line that says what to do."""
        url = url or self.url
        resume = "; run the same command again to resume from the last finished chunk" if midway else ""
        if isinstance(e, openai.APIConnectionError):
            what = "lost the server" if midway else "cannot reach the server"
            kind = "timed out" if isinstance(e, openai.APITimeoutError) else "connection failed"
            fix = resume or "; start the server or fix --base-url"
            return DepthtuneError(f"{what} at {url} ({kind} after {self.cfg.retries} retries){fix}")
        if isinstance(e, openai.AuthenticationError):
            return DepthtuneError(f"the server at {url} refused the API key (HTTP 401); put the right key in "
                                  f"the environment variable named by --api-key-env")
        if isinstance(e, openai.NotFoundError):
            name = getattr(self, "served_model", None) or self.cfg.model or "?"
            return DepthtuneError(f"the server at {url} answered 404 for model '{name}': "
                                  f"{server_says(e)}; check --base-url (it ends in /v1) and --served-model")
        if isinstance(e, openai.RateLimitError):
            return DepthtuneError(f"the server at {url} kept answering 429 (rate limit) after "
                                  f"{self.cfg.retries} retries; lower --set backend.concurrency{resume}")
        if isinstance(e, openai.APIStatusError):  # a 4xx comes back on a rerun: no point suggesting one
            again = resume if e.status_code >= 500 else ""
            return DepthtuneError(f"the server at {url} answered HTTP {e.status_code}: {server_says(e)}{again}")
        return DepthtuneError(f"the server at {url} sent an answer that is not OpenAI-shaped ({e}){resume}")

    def _pick_model(self, wanted: str | None) -> str:
        """The model to ask: the one named (every replica must list it), else the servers' only one."""
        picked = {r.url: self._model_of(wanted, r.client, r.url) for r in self.replicas}
        if len(set(picked.values())) > 1:
            raise DepthtuneError(f"the servers serve different models ({', '.join(f'{u}: {m}' for u, m in picked.items())}); "
                                 f"give --base-url only replicas of one model, or name it with --served-model")
        return next(iter(picked.values()))

    def _model_of(self, wanted: str | None, client, url: str) -> str:
        try:
            listed = client.with_options(max_retries=min(self.cfg.retries, 2)).models.list().model_dump()
        except openai.NotFoundError:  # a server without /v1/models: trust the name given
            if wanted:
                return wanted
            raise DepthtuneError(f"the server at {url} does not list its models; name one with --served-model")
        except openai.APIError as e:
            raise self.fail(e, midway=False, url=url) from None
        names = {}
        for m in listed.get("data") or []:  # llama.cpp also answers to its aliases
            for n in [m.get("id")] + list(m.get("aliases") or []):
                names.setdefault(n, m.get("id"))
        if wanted is None:
            ids = sorted({v for v in names.values() if v})
            if len(ids) != 1:
                raise DepthtuneError(f"the server at {url} serves {len(ids)} models ({', '.join(ids) or 'none'}); "
                                     f"pick one with --served-model NAME")
            return ids[0]
        if wanted not in names:
            raise DepthtuneError(f"the server at {url} has no model '{wanted}'; it serves: "
                                 f"{', '.join(sorted(set(names.values())))}; pass one of them to --served-model")
        return wanted

    # -- requests -------------------------------------------------------------------------------

    def ask(self, prompt, *, max_tokens: int, temperature: float, top_p: float, seed: int | None,
             depth: int) -> dict:
        """One request -> its first choice as a plain dict (extra fields kept: llama.cpp's ids and bytes).

        prompt: text for the completions endpoint, a message list for the chat endpoint.
        depth: top alternatives per step (0: the chosen token's log-prob only)."""
        common = {"model": self.served_model, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
                  **({"seed": seed} if seed is not None else {})}
        if self.cfg.endpoint == "chat":
            r = self._call(lambda c: c.chat.completions.create(messages=prompt, logprobs=True,
                                                               **({"top_logprobs": depth} if depth else {}), **common))
        else:  # logprobs=0 means "none" on llama.cpp: ask for at least the top one
            r = self._call(lambda c: c.completions.create(prompt=prompt, logprobs=max(depth, 1), **common))
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

    def depth_for(self, prompt, topk: int) -> int:
        """Alternatives to ask for at top-k, found with a one-token probe: one-line errors for a server
        that gives no log-probs or fewer than topk of them."""
        if topk in self.depths:
            return self.depths[topk]
        refused = None
        for ask in dict.fromkeys((topk + HEADROOM, topk)):
            try:
                choice = self.ask(prompt, max_tokens=1, temperature=1.0, top_p=1.0, seed=0, depth=ask)
            except openai.BadRequestError as e:  # vLLM and OpenAI refuse a depth past their maximum
                refused = server_says(e)
                continue
            except openai.APIError as e:
                raise self.fail(e, midway=False) from None
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
                     seed: int, system_prompt: str | None, topk: int = 0,
                     taus: tuple[float, ...] = (1.0,)) -> tuple[list[dict], float, list]:
        """k completions per item -> (rows, wall seconds, per row (ids [n, topk], logp [n, topk], tails [n, len(taus)])
        when topk > 0). A server gives its top-k only: the tail's log-mass is known at tau = 1 (log(1 - sum)),
        and NaN at other temperatures (the cached loss then tempers the tail as one bucket)."""
        ids = [prompt_ids(self.tok, it, system_prompt, self.template) for it in items]
        prompts = [self._prompt(p, it, system_prompt) for p, it in zip(ids, items)]
        depth = self.depth_for(prompts[0], topk) if topk else 0
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
        return rows, seconds, [(*s.top, tails_of(s.top[1], taus)) for s in samples] if topk else []

    def _sample(self, prompt, params: dict, topk: int) -> Sample:
        try:
            return self._convert(self.ask(prompt, **params), prompt, topk, params["depth"])
        except AllServersLost:
            raise DepthtuneError(f"lost every server ({self.url}); run the same command again to resume from the "
                                 f"last finished chunk") from None
        except openai.APIError as e:
            raise self.fail(e, midway=True) from None

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
        choice = self.ask(prompt + text, max_tokens=1, temperature=1.0, top_p=1.0, seed=0, depth=depth)
        steps = parse_steps(choice.get("logprobs"))
        if not steps:
            raise DepthtuneError(f"the server at {self.url} returned no log-probs for the end-of-sequence step")
        return steps[0]

    def _top_rows(self, steps: list[Step], topk: int) -> tuple[tuple[torch.Tensor, torch.Tensor], list[str]]:
        """Steps -> (ids int32 [n, topk], logp fp16 [n, topk]) of the first topk alternatives that map."""
        ids = torch.zeros(len(steps), topk, dtype=torch.int32)
        logp = torch.zeros(len(steps), topk)
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
            logp[t] = torch.tensor(list(row.values()))
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
