"""Benchmark the teacher cache: bytes per entry, reconstruction error, and what each does to the loss.

    python bench/bench_cache.py                 # the embedded model as teacher, 24 built-in prompts x 2 samples
    python bench/bench_cache.py --server        # also: the same samples' top-k from llama-server (tau != 1)
    python bench/bench_cache.py --tiny          # a random 2-layer model: a quick check that it runs

The teacher (in this process) writes samples and, at every target position, its full next-token distribution.
From that truth, three caches of the top-20: the earlier format (int32 ids, fp16 log-probs, no tail:
6 bytes an entry), the packed format written today (3 bytes an entry and 2 per row and temperature), and,
with --server, llama-server's top-20 of the same positions (its log-probs are of the Q4_1 weights; the tail
is known at tau = 1 only). For each: bytes per entry, the error of the stored log-probs, and the
distillation loss and gradient of a student (the teacher pruned to 26 of its 30 layers) against the exact
folded target, at tau = 1 and 2: relative loss difference and the gradient's cosine with the exact one.
A benchmark, not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

K = 20


def models_(tiny: bool):
    from depthtune.distill.students import prune_layers
    from depthtune.models import load_model, load_tokenizer

    if tiny:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from helpers import make_tiny_model

        folder = Path(tempfile.mkdtemp())
        load_tokenizer(None).save_pretrained(folder / "tok")
        name = str(make_tiny_model(folder / "m", folder / "tok", layers=4))
        teacher = load_model(name, "float32", "cpu")
        return teacher, prune_layers(teacher, 3), load_tokenizer(name)
    teacher = load_model(None, "float32", "cpu")
    return teacher, prune_layers(teacher, 26), load_tokenizer(None)


@torch.no_grad()
def positions(model, rows) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per sample: [n, V] log-probs at its target positions (completion tokens + the stop step), and the
    student's inputs for the same positions."""
    out = []
    for r in rows:
        seq = torch.tensor([r["prompt_ids"] + r["completion_ids"]])
        lp = torch.log_softmax(model(input_ids=seq).logits[0].double(), -1)
        P, n = len(r["prompt_ids"]), len(r["completion_ids"]) + bool(r["finished"])
        out.append(lp[P - 1:P - 1 + n])
    return out


def student_logits(student, rows) -> torch.Tensor:
    chunks = []
    for r in rows:
        seq = torch.tensor([r["prompt_ids"] + r["completion_ids"]])
        logits = student(input_ids=seq).logits[0].double()
        P, n = len(r["prompt_ids"]), len(r["completion_ids"]) + bool(r["finished"])
        chunks.append(logits[P - 1:P - 1 + n])
    return torch.cat(chunks)


def loss_and_grad(z, ids, logp, tail, tau):
    from depthtune.distill.losses import sparse_kd_loss

    z = z.detach().clone().requires_grad_(True)
    labels = torch.zeros(z.shape[0], dtype=torch.long)
    loss = sparse_kd_loss(z, ids, logp, labels, tau=tau, alpha=1.0, tail=tail)
    (g,) = torch.autograd.grad(loss, z)
    return loss.item(), g.flatten()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--server", action="store_true", help="also llama-server's top-k of the same positions")
    ap.add_argument("--prompts", type=int, default=24)
    args = ap.parse_args()
    from depthtune.backends.local import LocalSampler
    from depthtune.models import quiet
    from depthtune.reporting import machine
    from depthtune.suites import load_suites
    from depthtune.teacher_cache import leftover_logmass, load_cache, write_shard

    quiet()
    teacher, student, tok = models_(args.tiny)
    train, _ = load_suites(["arithmetic", "word_problems", "facts"])
    items = train[::max(1, len(train) // args.prompts)][:args.prompts]
    rows, _, _ = LocalSampler(teacher, tok).sample_chunk(items, k=2, temperature=0.8, top_p=0.95,
                                                         max_new_tokens=48 if not args.tiny else 8, seed=0,
                                                         system_prompt=None)
    truth = torch.cat(positions(teacher, rows))  # [N, V] exact log-probs
    V, N = truth.shape[-1], truth.shape[0]
    top_logp, top_ids = truth.topk(K, -1)
    rest = truth.scatter(-1, top_ids, -torch.inf)
    taus = (1.0, 2.0)
    tails = torch.stack([torch.logsumexp(rest / t, -1) for t in taus], -1)
    z = student_logits(student, rows).detach()
    exact = {tau: loss_and_grad(z, top_ids, top_logp, tails[:, i], tau) for i, tau in enumerate(taus)}

    variants = {}
    # the earlier format: int32 ids + fp16 log-probs, no tail (tempered as one bucket at tau != 1)
    old_logp = top_logp.half().double()
    variants["int32 + fp16, no tail (before)"] = (6.0, old_logp, {1.0: leftover_logmass(old_logp), 2.0: None})
    # the packed format, through a real shard on disk
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "chunk-00000.safetensors"
        write_shard(path, ["all"], [(top_ids, top_logp.float(), tails.float())], V, taus)
        back = load_cache(Path(folder))["all"]
        size = path.stat().st_size
    variants["packed (today)"] = (size / (N * K), back.logp.double(),
                                  {t: back.tail_at(t).double() for t in taus})
    if args.server:
        variants["llama-server top-20 (Q4_1; tail at tau 1 only)"] = server_rows(rows, tok, top_ids)

    print(f"machine: {machine()}; {N} target positions, vocabulary {V:,}, top-{K}")
    print("| cache | bytes per entry | |error| of stored log-probs, mean / p99 (nats) | tau | loss vs exact | "
          "gradient cosine |")
    print("|---|---|---|---|---|---|")
    for name, (bpe, logp, tail) in variants.items():
        err = (logp - top_logp).abs().flatten() if logp.shape == top_logp.shape else torch.tensor([float("nan")])
        for tau in taus:
            loss, grad = loss_and_grad(z, top_ids if "server" not in name else logp_ids(name, variants), logp,
                                       tail.get(tau), tau)
            e_loss, e_grad = exact[tau]
            cos = F.cosine_similarity(grad, e_grad, dim=0).item()
            print(f"| {name} | {bpe:.2f} | {err.mean():.4f} / {err.quantile(0.99):.4f} | {tau:g} | "
                  f"{100 * (loss - e_loss) / e_loss:+.2f}% | {cos:.4f} |")
    print("\nexact folded target: top-20 log-probs in float64 and the tempered tail log-mass per tau")


_SERVER_IDS = {}


def logp_ids(name, variants):
    return _SERVER_IDS[name]


def server_rows(rows, tok, top_ids):
    """llama-server's top-k at the same positions, mapped to local ids (the teacher's Q4_1 weights)."""
    from depthtune.backends.llama_server import LlamaServer
    from depthtune.backends.openai import OpenAISampler
    from depthtune.backends.served_teacher import score_tokens
    from depthtune.config import BackendConfig
    from depthtune.models import embedded_gguf
    from depthtune.teacher_cache import leftover_logmass

    ids, logp = [], []
    with LlamaServer(embedded_gguf(), log=lambda *a: None, parallel=4) as url:
        served = OpenAISampler(BackendConfig(kind="openai", base_url=url, concurrency=4), tok, log=lambda *a: None)
        for r in rows:
            target = r["completion_ids"] + ([tok.eos_token_id] if r["finished"] else [])
            got = score_tokens(served, r["prompt_ids"], target, topk=K)
            ids.append(got["ids"])
            logp.append(got["logp"])
        served.close()
    ids, logp = torch.cat(ids), torch.cat(logp).double()
    name = "llama-server top-20 (Q4_1; tail at tau 1 only)"
    _SERVER_IDS[name] = ids
    return 3.0, logp, {1.0: leftover_logmass(logp), 2.0: None}


if __name__ == "__main__":
    main()
