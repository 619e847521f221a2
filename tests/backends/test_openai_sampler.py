"""OpenAISampler against a real llama.cpp server on the embedded model (no mocked server)."""
from __future__ import annotations

import json
import math
import urllib.request

import pytest
import torch
import torch.nn.functional as F
from backends.helpers_backends import backend, suite_items

from depthtune.backends import request_seed
from depthtune.backends.openai import OpenAISampler
from depthtune.errors import DepthtuneError
from depthtune.prompting import prompt_ids
from depthtune.teacher_cache import LOGP_FLOOR, check_matches, load_cache, write_shard

pytestmark = pytest.mark.slow  # a real server, several processes or the embedded model

GEN = {"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 24, "seed": 7, "system_prompt": None}
ROW_KEYS = {"sample_id", "prompt_id", "prompt", "answer", "checker", "suite", "category", "level", "prompt_ids",
            "completion_ids", "completion", "logprobs", "finished", "gen_seconds"}


@pytest.fixture(scope="module")
def sampler(server, tok):
    s = OpenAISampler(backend(server.url), tok, log=lambda *_: None)
    yield s
    s.close()


@pytest.fixture(scope="module")
def chunk(sampler):
    """4 prompts x 2 samples with top-20 rows, sampled once for the tests below."""
    items = suite_items(4)
    return items, *sampler.sample_chunk(items, k=2, topk=20, **GEN)


def test_k_answers_per_prompt_in_local_rows(chunk, tok, tiny_model_dir):
    from depthtune.backends.local import LocalSampler
    from depthtune.models import load_model

    items, rows, seconds, _ = chunk
    local, _, _ = LocalSampler(load_model(str(tiny_model_dir)), tok).sample_chunk(items[:1], k=1, **GEN)
    assert [r["sample_id"] for r in rows] == [f"{it['id']}#{j}" for it in items for j in range(2)]
    for r, it in zip(rows, [it for it in items for _ in range(2)]):
        assert set(r) == set(local[0]) == ROW_KEYS and r["prompt_ids"] == prompt_ids(tok, it)
        assert {k: type(v) for k, v in r.items()} == {k: type(v) for k, v in local[0].items()}
        assert r["completion"] == tok.decode(r["completion_ids"], skip_special_tokens=True)
        assert len(r["logprobs"]) == len(r["completion_ids"]) and all(lp <= 0 for lp in r["logprobs"])
        assert tok.eos_token_id not in r["completion_ids"]
        assert r["finished"] or len(r["completion_ids"]) == GEN["max_new_tokens"]
    assert seconds > 0 and abs(sum(r["gen_seconds"] for r in rows) - seconds) < 1e-3


def test_the_server_reads_the_same_prompt_ids(server, tok):
    """The completions endpoint sends text; llama.cpp must tokenise it back to the local ids."""
    for it in suite_items(6):
        ids = prompt_ids(tok, it)
        body = json.dumps({"content": tok.decode(ids, skip_special_tokens=False), "add_special": True}).encode()
        req = urllib.request.Request(server.url.removesuffix("/v1") + "/tokenize", body,
                                     {"Content-Type": "application/json"})
        assert json.load(urllib.request.urlopen(req))["tokens"] == ids


def test_topk_rows_line_up_with_completion_tokens(chunk, tmp_path, sampler, tok):
    _, rows, _, cached = chunk
    assert any(r["finished"] for r in rows)  # the eos row is exercised
    write_shard(tmp_path / "chunk-00000.safetensors", [r["sample_id"] for r in rows], cached, sampler.vocab_size)
    cache = load_cache(tmp_path)
    check_matches(cache, rows)
    for r in rows:
        ids, logp = cache[r["sample_id"]].ids, cache[r["sample_id"]].logp
        assert ids.shape[1] == 20
        assert all(len(set(row.tolist())) == 20 for row in ids)  # no id twice in a row
        assert (logp[:, :-1] >= logp[:, 1:]).all() and (logp <= 0).all()  # most likely first
        n = len(r["completion_ids"])
        hit = ids[:n] == torch.tensor(r["completion_ids"])[:, None]  # [n, 20]: where the sampled token sits
        in_top = hit.any(1)
        row_lp = (logp[:n].float() * hit).sum(1)
        # where the sampled token is in the top 20, its row holds the chosen log-prob, to the packed code's
        # step: the code is sqrt(-logp) in 255 levels up to sqrt(LOGP_FLOOR), so the error grows as sqrt(-logp)
        want = torch.tensor(r["logprobs"])[in_top]
        step = math.sqrt(LOGP_FLOOR) / 255
        assert ((row_lp[in_top] - want).abs() <= step * (want.abs().sqrt() + step) + 1e-3).all()
        if r["finished"]:
            assert tok.eos_token_id in ids[n].tolist()  # the step that chose eos


def test_a_redone_chunk_gets_the_same_answers(chunk, sampler):
    """Seeds per (chunk seed, prompt, sample): what resume relies on for an identical result."""
    items, rows, _, _ = chunk
    again, _, _ = sampler.sample_chunk(items[:2], k=2, topk=0, **GEN)
    assert [r["completion_ids"] for r in again] == [r["completion_ids"] for r in rows[:4]]
    assert request_seed(7, "a", 0) != request_seed(7, "a", 1) != request_seed(8, "a", 0)


def test_eos_step_read_again_matches_the_servers_own(chunk, sampler):
    """For servers that leave the eos step out, its row is read with one more request (prompt + answer)."""
    items, rows, _, cached = chunk
    r = next(r for r in rows if r["finished"])
    item = next(it for it in items if it["id"] == r["prompt_id"])
    prompt = sampler._prompt(r["prompt_ids"], item, None)
    step = sampler._eos_step(prompt, r["completion"], 24)
    (ids, logp), _ = sampler._top_rows([step], 20)
    want_ids, want_logp = cached[rows.index(r)][0][-1], cached[rows.index(r)][1][-1]
    assert ids[0, :3].tolist() == want_ids[:3].tolist()
    assert torch.allclose(logp[0].float(), want_logp.float(), atol=0.05)


def test_logprobs_agree_with_the_in_process_model(chunk, embedded_model):
    """The same tokens scored by the dequantised model in this process. Tolerance: llama.cpp multiplies the
    Q4_1 weights with activations quantised to 8 bits (Q8_1), transformers with fp32 activations, so
    log-probs differ by a few hundredths (measured: mean 0.04, p95 0.15, max 0.6 over ~600 tokens); a
    server giving tempered (T = 0.8) or post-top-p log-probs would be off by tenths to whole nats."""
    _, rows, _, cached = chunk
    chosen_gap, top_gap, same_top1 = [], [], []
    for r, (ids, logp, _tails) in zip(rows, cached):
        x = torch.tensor([r["prompt_ids"] + r["completion_ids"]])
        with torch.no_grad():
            local = F.log_softmax(embedded_model(x).logits[0].float(), -1)[len(r["prompt_ids"]) - 1:]
        n = len(r["completion_ids"])
        chosen_gap += (local[:n].gather(1, torch.tensor(r["completion_ids"])[:, None])[:, 0]
                       - torch.tensor(r["logprobs"])).abs().tolist()
        m = min(n + 1, ids.shape[0], local.shape[0])
        top_gap += (local[:m].gather(1, ids[:m].long())[:, :5] - logp[:m, :5].float()).abs().flatten().tolist()
        same_top1 += (local[:m].argmax(1) == ids[:m, 0]).tolist()
    chosen_gap, top_gap = torch.tensor(chosen_gap), torch.tensor(top_gap)
    assert chosen_gap.mean() < 0.1 and chosen_gap.quantile(0.95) < 0.35, (chosen_gap.mean(), chosen_gap.max())
    assert top_gap.mean() < 0.2
    assert sum(same_top1) / len(same_top1) > 0.9


def test_tokens_another_vocabulary_lacks_are_counted_or_refused(server, tmp_path):
    """A local tokenizer that is not the server's: samples fall back to their text, top-k refuses."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["What is two plus three? The answer is five."] * 20, vocab_size=300,
                            special_tokens=["<eos>"])
    other = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<eos>", pad_token="<eos>")
    s = OpenAISampler(backend(server.url), other, log=lambda *_: None)
    items = [{"id": "q", "prompt": "Tell me about photosynthesis in plants.", "answer": None}]
    rows, _, _ = s.sample_chunk(items, k=2, topk=0, **GEN)
    assert s.unmapped["sampled"] > 0 and s.unmapped["examples"]
    assert all(r["logprobs"] is None and other.decode(r["completion_ids"]) == r["completion"] for r in rows)
    with pytest.raises(DepthtuneError, match="local vocabulary cannot represent"):
        s.sample_chunk(items, k=1, topk=2, **GEN)
    s.close()


def test_the_chat_endpoint_gives_the_same_kind_of_rows(server, tok, tmp_path):
    """endpoint=chat: the server applies its own template; rows and top-k rows keep the same contract."""
    s = OpenAISampler(backend(server.url, endpoint="chat"), tok, log=lambda *_: None)
    items = suite_items(2)
    rows, _, cached = s.sample_chunk(items, k=2, topk=5, **{**GEN, "temperature": 0.0})
    s.close()
    write_shard(tmp_path / "chunk-00000.safetensors", [r["sample_id"] for r in rows], cached, s.vocab_size)
    check_matches(load_cache(tmp_path), rows)
    assert all(r["completion_ids"] and len(r["logprobs"]) == len(r["completion_ids"]) for r in rows)
    assert rows[0]["completion_ids"] == rows[1]["completion_ids"]  # greedy: both samples agree


def test_raw_template_sends_the_prompt_text_as_given(server, tok):
    """data.template=raw reaches the server too: the rows' prompt ids are the plain text's, no chat turns."""
    s = OpenAISampler(backend(server.url), tok, log=lambda *_: None, template="raw")
    try:
        items = suite_items(2)
        rows, _, _ = s.sample_chunk(items, k=1, **GEN)
    finally:
        s.close()
    assert [r["prompt_ids"] for r in rows] == [list(tok(it["prompt"])["input_ids"]) for it in items]
    assert all(r["prompt_ids"] != prompt_ids(tok, it, None, "chat") for r, it in zip(rows, items))


def test_raw_template_on_the_chat_endpoint_is_refused(server, tok):
    with pytest.raises(DepthtuneError, match="endpoint=completions"):
        OpenAISampler(backend(server.url, endpoint="chat"), tok, log=lambda *_: None, template="raw")
