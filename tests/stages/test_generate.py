"""In-process sampling (continuous batching, depthtune.backends.decode) against independent references:
greedy answers equal transformers' generate, the cached top-k rows and tails equal a plain forward pass's
distribution, samples do not depend on how they were batched, sampling follows the model's distribution,
and every stop token of the generation config ends an answer."""
import pytest
import torch

from depthtune import models
from depthtune.backends.decode import Request, decode
from depthtune.backends.local import LocalSampler, stop_ids
from depthtune.prompting import prompt_ids


def items(n=6):
    return [{"id": f"q{i}", "prompt": f"What is {i} + {3 * i}? " + "Think. " * (i % 3), "answer": str(4 * i)}
            for i in range(n)]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return models.load_model(str(tiny_model_dir), "float32", "cpu"), models.load_tokenizer(str(tiny_model_dir))


def test_greedy_answers_equal_transformers_generate(tiny):
    model, tok = tiny
    mine, _, _ = LocalSampler(model, tok, batch_size=3).sample_chunk(items(), k=1, temperature=0.0, top_p=1.0,
                                                                      max_new_tokens=12, seed=0, system_prompt=None)
    for it, row in zip(items(), mine):
        ids = torch.tensor([prompt_ids(tok, it)])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                             pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
        stops = stop_ids(model, tok)
        end = next((i for i, t in enumerate(out) if t in stops), len(out))
        assert row["completion_ids"] == out[:end], it["id"]


def test_samples_do_not_depend_on_how_they_were_batched(tiny_model_dir):
    """Each sample draws from its own seeded generator, so batch size and neighbours do not change it. (In float32
    a batch's matmuls round differently, which can move a draw lying within ~1e-7 of a boundary of the near-
    uniform distribution of a random model: here in float64, where they round alike.)"""
    model = models.load_model(str(tiny_model_dir), "float64", "cpu")
    tok = models.load_tokenizer(str(tiny_model_dir))
    runs = [LocalSampler(model, tok, batch_size=b).sample_chunk(items(), k=3, temperature=1.0, top_p=0.9,
                                                                max_new_tokens=10, seed=7, system_prompt=None)[0]
            for b in (1, 4, 64)]
    ids = [[r["completion_ids"] for r in rows] for rows in runs]
    assert ids[0] == ids[1] == ids[2]
    assert len({tuple(x) for x in ids[0]}) > 3  # and they are samples, not one answer repeated


def test_cached_rows_are_the_models_own_distribution(tiny):
    """Top-k ids and log-probs, and the tail's tempered log-mass at each tau, against one plain forward pass."""
    model, tok = tiny
    rows, _, cached = LocalSampler(model, tok, batch_size=4).sample_chunk(
        items(3), k=2, temperature=1.0, top_p=1.0, max_new_tokens=6, seed=1, system_prompt=None, topk=5, taus=(1.0, 2.0))
    for row, (ids, logp, tails) in zip(rows, cached):
        seq = torch.tensor([row["prompt_ids"] + row["completion_ids"]])
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=seq).logits[0].double(), -1)
        P, n = len(row["prompt_ids"]), ids.shape[0]
        assert n == len(row["completion_ids"]) + row["finished"]
        for t in range(len(row["completion_ids"])):
            want = lp[P - 1 + t]
            top = want.topk(5)
            assert torch.equal(ids[t].long(), top.indices)
            assert torch.allclose(logp[t].double(), top.values, atol=1e-4)
            rest = want.clone()
            rest[top.indices] = -torch.inf
            for i, tau in enumerate((1.0, 2.0)):
                assert tails[t, i].item() == pytest.approx(torch.logsumexp(rest / tau, -1).item(), abs=1e-4)
            assert row["logprobs"][t] == pytest.approx(want[row["completion_ids"][t]].item(), abs=1e-4)


def test_sampling_follows_the_models_distribution(tiny):
    """The first token over many seeds: its frequencies against the softmax at temperature 0.7."""
    model, tok = tiny
    prompt = prompt_ids(tok, items(1)[0])
    n = 600
    res = decode(model, [Request(prompt, seed=s) for s in range(n)], pad_id=tok.pad_token_id,
                 stop_ids=set(), max_batch=200, temperature=0.7, top_p=1.0, max_new_tokens=1)
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=torch.tensor([prompt])).logits[0, -1].double() / 0.7, -1)
    counts = torch.bincount(torch.tensor([r.tokens[0] for r in res]), minlength=probs.numel()).double()
    top = probs.topk(3).indices
    for t in top:
        p = probs[t].item()
        assert abs(counts[t].item() / n - p) < 4 * (p * (1 - p) / n) ** 0.5 + 1e-3


def test_top_p_keeps_to_the_nucleus(tiny):
    model, tok = tiny
    prompt = prompt_ids(tok, items(1)[0])
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=torch.tensor([prompt])).logits[0, -1].double(), -1)
    order = probs.argsort(descending=True)
    cum = probs[order].cumsum(0)
    nucleus = set(order[:int((cum < 0.3).sum()) + 1].tolist())
    res = decode(model, [Request(prompt, seed=s) for s in range(200)], pad_id=tok.pad_token_id, stop_ids=set(),
                 max_batch=200, temperature=1.0, top_p=0.3, max_new_tokens=1)
    assert {r.tokens[0] for r in res} <= nucleus


def test_every_stop_token_of_the_generation_config_ends_an_answer(tiny):
    """A sample, then the same sample with a token it wrote made a stop token: it ends right before it."""
    model, tok = tiny
    kw = dict(k=1, temperature=1.0, top_p=1.0, max_new_tokens=10, seed=3, system_prompt=None)
    first, _, _ = LocalSampler(model, tok).sample_chunk(items(1), **kw)
    written = first[0]["completion_ids"]
    j = next(i for i, t in enumerate(written) if i > 0 and t not in written[:i])
    before = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, written[j]]
    try:
        rows, _, _ = LocalSampler(model, tok).sample_chunk(items(1), **kw)
    finally:
        model.generation_config.eos_token_id = before
    assert rows[0]["completion_ids"] == written[:j] and rows[0]["finished"]
