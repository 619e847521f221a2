"""Several teachers: forward-pass top-k rows line up with generation's, and the average is a mixture."""
import torch
import torch.nn.functional as F
from helpers import make_tiny_model

from depthtune import models
from depthtune.backends.local import LocalSampler
from depthtune.distill.ensemble import average_topk, target_logprobs
from depthtune.prompting import prompt_ids


def test_forward_pass_rows_match_generation_cache_and_average_mixes(tmp_path, tokenizer_dir):
    a_dir = make_tiny_model(tmp_path / "a", tokenizer_dir, seed=1)
    b_dir = make_tiny_model(tmp_path / "b", tokenizer_dir, seed=2)
    a, b = models.load_model(str(a_dir), "float32", "cpu"), models.load_model(str(b_dir), "float32", "cpu")
    tok = models.load_tokenizer(str(a_dir))
    items = [{"id": "p0", "prompt": "What is 2 + 3?"}, {"id": "p1", "prompt": "Name a colour, please."}]
    rows, _, cached = LocalSampler(a, tok).sample_chunk(items, k=2, temperature=1.0, top_p=1.0, max_new_tokens=6,
                                                        seed=0, system_prompt=None, topk=5)
    prompts = [prompt_ids(tok, r) for r in rows]
    lps = target_logprobs(a, rows, prompts, tok.pad_token_id)
    for lp, (ids, logp, _tails), r in zip(lps, cached, rows):
        assert lp.shape[0] == len(r["completion_ids"]) + bool(r["finished"]) == ids.shape[0]
        top = lp.topk(5, dim=-1)
        assert torch.equal(top.indices.int(), ids)  # same positions, same tokens as generation cached
        assert torch.allclose(top.values, logp.float(), atol=2e-2)
        chosen = lp[torch.arange(len(r["completion_ids"])), r["completion_ids"]]  # the sampled tokens' log-probs
        assert torch.allclose(chosen, torch.tensor(r["logprobs"]), atol=1e-4)
    mixed = average_topk([(a, tok, None), (b, tok, "Be brief.")], rows, k=5)
    lps_b = target_logprobs(b, rows, [prompt_ids(tok, r, "Be brief.") for r in rows], tok.pad_token_id)
    for (ids, logp, tails), la, lb in zip(mixed, lps, lps_b):
        want = ((la.exp() + lb.exp()) / 2).log()
        assert torch.allclose(want.gather(-1, ids.long()), logp.float(), atol=2e-2)
        outside = want.exp().scatter(-1, ids.long(), 0.0).sum(-1)  # the mixture's mass off its top 5
        assert torch.allclose(tails[:, 0].exp(), outside, rtol=1e-3)
        assert torch.equal(want.topk(5, dim=-1).indices.int(), ids)
        assert (F.softmax(want, -1).sum(-1) - 1).abs().max() < 1e-4
