"""LoRA training of the embedded SmolLM2-135M: full-precision base against a 4-bit NF4 base (QLoRA), side
by side in one run. Peak memory and step time, through depthtune's own training path (wrap_lora + fit).

    python bench/bench_qlora.py                  # CPU: fp32 base vs 4-bit base (+ activation checkpointing)
    python bench/bench_qlora.py --steps 4 --batch 4 --tokens 64     # quicker

Memory is the project's measure (depthtune.memory.PeakMemory): the model's weights (parameters
and buffers: 4-bit ones at their packed size) plus the peak growth of resident memory during training
over its start, sampled every 20 ms; on a GPU, the CUDA allocator's peak. Each variant runs in its own
process. Step time is the mean of the steps after the first two (warm-up). Random token ids as data: the
cost of a step does not depend on which tokens they are.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # depthtune from this checkout

VARIANTS = {"fp32": (None, False), "4bit": ("4bit", False), "4bit+ckpt": ("4bit", True)}


def one(variant: str, steps: int, batch: int, tokens: int) -> dict:
    import torch
    from transformers import Trainer

    from depthtune import models
    from depthtune.config import TrainConfig
    from depthtune.memory import PeakMemory
    from depthtune.stages.train import fit, wrap_lora

    models.quiet()
    quantize, checkpointing = VARIANTS[variant]
    t = time.perf_counter()
    model, tok = models.load_model(None, quantize=quantize), models.load_tokenizer(None)
    load_s = time.perf_counter() - t
    cfg = TrainConfig(epochs=1, batch_size=batch, save_steps=10**6, dropout=0.0, gradient_checkpointing=checkpointing)
    model = wrap_lora(model, cfg)
    model.train()
    gen = torch.Generator().manual_seed(0)
    rows = [{"prompt_ids": torch.randint(3, 49152, (tokens // 4,), generator=gen).tolist(),
             "completion_ids": torch.randint(3, 49152, (tokens - tokens // 4,), generator=gen).tolist(),
             "finished": False} for _ in range(steps * batch)]
    times = []

    class Timed(Trainer):
        def training_step(self, *args, **kwargs):
            start = time.perf_counter()
            out = super().training_step(*args, **kwargs)
            times.append(time.perf_counter() - start)
            return out

    with tempfile.TemporaryDirectory() as out, PeakMemory(model) as mem:
        fit(model, tok, rows, cfg, Path(out), log=lambda *_: None, trainer_cls=Timed)
    settled = times[2:] or times
    return {"variant": variant, "weights_mb": round(mem.weights_mb), "train_memory_mb": round(mem.mb),
            "s_per_step": round(sum(settled) / len(settled), 3), "steps": len(times), "load_s": round(load_s, 1),
            "trainable": models.count_params(model, trainable_only=True)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128, help="tokens per example (a quarter of them prompt)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(one(args.variant, args.steps, args.batch, args.tokens)))
        return 0
    rows = []
    for v in args.variants.split(","):
        cmd = [sys.executable, __file__, "--variant", v, "--steps", str(args.steps), "--batch", str(args.batch),
               "--tokens", str(args.tokens)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode:
            print(f"{v}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{v}: {rows[-1]}", flush=True)
    base = rows[0]
    print(f"\nLoRA r=16 (all linear layers) on the embedded SmolLM2-135M, batch {args.batch} x {args.tokens} tokens, "
          f"{args.steps} steps")
    print("| base | weights MiB | training memory MiB | vs " + base["variant"] + " | s/step |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['weights_mb']:,} | {r['train_memory_mb']:,} | "
              f"{r['train_memory_mb'] / base['train_memory_mb']:.2f}x | {r['s_per_step']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
