"""How badly each pruning plan breaks the embedded model: the mean NLL per token of 48 of its own correct
samples under students pruned to 26 and 22 of its 30 layers, evenly spread against the contiguous block with
the least angular distance (Gromov et al. 2024). Needs a finished run directory's scored samples:

    python bench/bench_prune.py runs/abl          # any run dir with score/scored.jsonl on the built-in suites

A benchmark, not a test: nothing is asserted.
"""
import copy
import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
import torch.nn.functional as F

from depthtune import artifacts, models
from depthtune.config import load_config
from depthtune.distill import students as st

torch.set_num_threads(2)
cfg = load_config(None, [])
teacher = models.from_config(None, cfg.model)
rows = artifacts.read_jsonl(Path(sys.argv[1]) / "score" / "scored.jsonl")
random.Random(0).shuffle(rows)
rows = [r for r in rows if r.get("correct")][:48]
def batches():
    for i in range(0, len(rows), 8):
        b = rows[i:i+8]
        L = max(len(r["prompt_ids"]) + len(r["completion_ids"]) for r in b)
        ids = torch.full((len(b), L), 2); lab = torch.full((len(b), L), -100); att = torch.zeros(len(b), L, dtype=torch.long)
        for j, r in enumerate(b):
            x = r["prompt_ids"] + r["completion_ids"]; ids[j, :len(x)] = torch.tensor(x); att[j, :len(x)] = 1
            lab[j, len(r["prompt_ids"]):len(x)] = torch.tensor(r["completion_ids"])
        yield ids, att, lab
def nll(m):
    tot, n = 0.0, 0
    with torch.no_grad():
        for ids, att, lab in batches():
            lg = m(ids, attention_mask=att).logits[:, :-1].float()
            l = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), lab[:, 1:].reshape(-1), reduction="sum", ignore_index=-100)
            tot += l.item(); n += (lab[:, 1:] != -100).sum().item()
    return tot / n
# angular distances
hs = []
with torch.no_grad():
    for ids, att, lab in batches():
        out = teacher(ids, attention_mask=att, output_hidden_states=True)
        hs.append([(h[att.bool()]) for h in out.hidden_states])
def ang(a, b):
    return sum((torch.arccos(F.cosine_similarity(x[a], x[b], dim=-1).clamp(-1, 1)) / math.pi).sum().item() for x in hs)
N = teacher.config.num_hidden_layers
print("teacher nll", round(nll(teacher), 3), flush=True)
def make(plan):
    s = copy.deepcopy(teacher); inner = s.model
    inner.layers = torch.nn.ModuleList([inner.layers[i] for i in plan])
    for k, layer in enumerate(inner.layers): layer.self_attn.layer_idx = k
    s.config.num_hidden_layers = len(plan)
    if getattr(s.config, "layer_types", None): s.config.layer_types = [s.config.layer_types[i] for i in plan]
    return s
for keep in (26, 22):
    n = N - keep
    even = st.layer_plan(N, keep)
    # hidden_states[l] is the input of layer l; dropping layers l..l+n-1 maps h[l] -> h[l+n]
    best = min(range(0, N - n), key=lambda l: ang(l, l + n))
    block = [i for i in range(N) if not (best <= i < best + n)]
    for name, plan in (("even", even), (f"block@{best}", block)):
        print(keep, name, plan, "nll", round(nll(make(plan)), 3), flush=True)
