"""Benchmark the chunked distillation loss against the naive full-vocabulary one.

    python bench/bench_kd.py [--tokens 4096] [--vocab 49152] [--hidden 576] [--chunk 512]

Part 1: forward + backward of the KD loss (forward KL, tau = 2, alpha = 0.5) from hidden
states through a [V, D] LM head, for student and teacher. Each variant runs in its own
process; peak memory is that process's resident high-water mark above what it held once
its inputs were made, so the two numbers are comparable. Time is the median of 3 runs.

Part 2: one online-KD training step (teacher forward + student forward + chunked loss +
backward + AdamW step) against one plain cross-entropy step, same student and batch.
Student and teacher are the SmolLM2-135M architecture with random weights (no download);
the student keeps half the layers.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from depthtune.distill import losses  # noqa: E402


def loss_worker(variant: str, n: int, v: int, d: int, chunk: int) -> dict:
    torch.manual_seed(0)
    h = (torch.randn(n, d) * 0.5).requires_grad_(True)
    w = (torch.randn(v, d) * 0.05).requires_grad_(True)
    ht, wt = torch.randn(n, d) * 0.5, torch.randn(v, d) * 0.05
    labels = torch.randint(0, v, (n,))
    opts = dict(kind="forward_kl", tau=2.0, alpha=0.5)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    for _ in range(3):
        h.grad = w.grad = None
        start = time.perf_counter()
        if variant == "naive":
            loss = losses.kd_loss(h @ w.T, ht @ wt.T, labels, **opts)
        else:
            loss = losses.chunked_kd_loss(h, w, labels, teacher_hidden=ht, teacher_weight=wt, chunk=chunk, **opts)
        loss.backward()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": variant, "seconds": statistics.median(times), "peak_mb": peak - base, "loss": loss.item()}


def run_worker(*args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", *map(str, args)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def smollm_config(layers: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                       tie_word_embeddings=True, rms_norm_eps=1e-5)


def train_steps(batch: int, seq: int, chunk: int) -> dict:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    teacher = LlamaForCausalLM(smollm_config(30)).eval()
    student = LlamaForCausalLM(smollm_config(15))
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5)
    ids = torch.randint(0, 49152, (batch, seq))
    labels = ids.clone()
    labels[:, : seq // 4] = -100  # a prompt

    def ce_step():
        out = student(input_ids=ids, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad()

    def kd_step():
        with torch.no_grad():
            t_hidden = teacher.model(input_ids=ids).last_hidden_state[:, :-1].reshape(-1, 576)
        s_hidden = student.model(input_ids=ids).last_hidden_state[:, :-1].reshape(-1, 576)
        loss = losses.chunked_kd_loss(s_hidden, student.lm_head.weight, labels[:, 1:].reshape(-1),
                                      teacher_hidden=t_hidden, teacher_weight=teacher.lm_head.weight,
                                      tau=2.0, alpha=0.5, chunk=chunk)
        loss.backward()
        opt.step()
        opt.zero_grad()

    result = {}
    for name, step in (("ce", ce_step), ("kd", kd_step)):
        step()  # warm-up
        times = []
        for _ in range(3):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        result[name] = statistics.median(times)
    return result


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        variant, n, v, d, chunk = sys.argv[2], *map(int, sys.argv[3:7])
        print(json.dumps(loss_worker(variant, n, v, d, chunk)))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    args = ap.parse_args()
    from depthtune.reporting import machine

    print(f"machine: {machine()}")
    print(f"KD loss forward+backward, batch x tokens = {args.tokens}, vocabulary {args.vocab}, hidden {args.hidden}")
    naive = run_worker("naive", args.tokens, args.vocab, args.hidden, args.chunk)
    chunked = run_worker("chunked", args.tokens, args.vocab, args.hidden, args.chunk)
    print(f"{'':<10}{'peak MB':>10}{'seconds':>10}{'loss':>12}")
    for r in (naive, chunked):
        print(f"{r['variant']:<10}{r['peak_mb']:>10.0f}{r['seconds']:>10.2f}{r['loss']:>12.5f}")
    print(f"memory: naive / chunked = {naive['peak_mb'] / max(chunked['peak_mb'], 1):.1f}x less peak memory")
    print(f"time:   chunked / naive = {chunked['seconds'] / naive['seconds']:.2f}x")
    steps = train_steps(args.batch, args.seq, args.chunk)
    print(f"training step, student 15 layers, teacher 30 layers, batch {args.batch} x {args.seq} tokens:")
    print(f"  plain CE step {steps['ce']:.2f} s, online KD step {steps['kd']:.2f} s, "
          f"ratio {steps['kd'] / steps['ce']:.2f}x")


if __name__ == "__main__":
    main()
