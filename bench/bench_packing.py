"""Benchmark padding-free training against padded batches: the train stage's LoRA on the embedded model.

    python bench/bench_packing.py                 # 64 samples the model writes itself, 2 epochs, batch 8
    python bench/bench_packing.py --tiny          # a random 2-layer model: a quick check that it runs

First the embedded model answers 16 built-in prompts x 4 samples (the generate stage's sampler, seed 0), so
the lengths are the ones training sees. Then each variant trains a fresh LoRA (the same seed, the same rows,
the same order) in its own process: padded batches (train.padding_free off) and one packed row per batch
(on). Prints real tokens per second (padding is not counted), the tokens the model computed, peak memory
over the loaded model (depthtune.memory) and the final loss, side by side. On a GPU it also gives MFU
(6 x trainable-path FLOPs is not it: LoRA's forward and backward through the frozen base cost about
4 x 2 x params per token; that is the figure used). A benchmark, not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rows(tiny: bool) -> list[dict]:
    from depthtune.backends.local import LocalSampler
    from depthtune.models import load_model, load_tokenizer
    from depthtune.suites import load_suites

    train, _ = load_suites(["arithmetic", "word_problems", "facts"])
    items = train[::6][:16]
    if tiny:
        return [{"prompt_ids": [1] + list(range(30, 40 + i)), "completion_ids": list(range(60, 64 + 3 * (i % 7))),
                 "finished": True} for i in range(32)]
    out, _, _ = LocalSampler(load_model(None), load_tokenizer(None)).sample_chunk(
        items, k=4, temperature=0.8, top_p=0.95, max_new_tokens=128, seed=0, system_prompt=None)
    return out


def one(variant: str, data: str, tiny: bool, epochs: float, batch: int) -> dict:
    """In its own process: train a LoRA on the rows, report speed and memory."""
    import torch

    from depthtune.config import TrainConfig
    from depthtune.memory import PeakMemory
    from depthtune.models import load_model, load_tokenizer
    from depthtune.stages.train import build_example, fit, wrap_lora

    samples = json.loads(Path(data).read_text())
    if tiny:
        import sys as _sys
        _sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from helpers import make_tiny_model

        folder = Path(tempfile.mkdtemp())
        load_tokenizer(None).save_pretrained(folder / "tok")
        name = str(make_tiny_model(folder / "model", folder / "tok"))
    else:
        name = None
    model, tok = load_model(name), load_tokenizer(name)
    cfg = TrainConfig(epochs=epochs, batch_size=batch, padding_free=variant == "packed", dropout=0.0, save_steps=10**6)
    peft = wrap_lora(model, cfg).train()
    examples = [build_example(r, tok.eos_token_id) for r in samples]
    real = sum(len(e["input_ids"]) for e in examples) * epochs
    order = sorted(range(len(examples)), key=lambda i: i)  # the Trainer shuffles with the seed: the same for both
    width = [max(len(examples[i]["input_ids"]) for i in order[b:b + batch]) for b in range(0, len(order), batch)]
    computed = real if variant == "packed" else sum(w * min(batch, len(order) - b * batch) for b, w in enumerate(width)) * epochs
    with tempfile.TemporaryDirectory() as out, PeakMemory(peft, over_start=True) as mem:
        start = time.perf_counter()
        _, _, loss = fit(peft, tok, samples, cfg, Path(out), log=lambda *a: None)
        seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    flops = 8 * params * real  # forward 2N, backward through the frozen base ~2 x 2N per token
    mfu = None
    if torch.cuda.is_available():
        peak = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
        name_ = torch.cuda.get_device_name(0)
        top = next((v for k, v in peak.items() if k in name_), None)
        mfu = flops / seconds / top if top else None
    return {"variant": variant, "seconds": round(seconds, 2), "tokens_per_s": round(real / seconds, 1),
            "tokens_computed": int(computed), "real_tokens": int(real), "peak_mb": round(mem.mb), "final_loss": round(loss, 4),
            "mfu": mfu}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from depthtune.models import quiet

    quiet()
    if args.one:
        print(json.dumps(one(args.one, args.data, args.tiny, args.epochs, args.batch)))
        return
    from depthtune.reporting import machine

    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "rows.json"
        data.write_text(json.dumps(rows(args.tiny)))
        results = []
        for variant in ("padded", "packed"):
            cmd = [sys.executable, __file__, "--one", variant, "--data", str(data), "--epochs", str(args.epochs),
                   "--batch", str(args.batch)] + (["--tiny"] if args.tiny else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            results.append(json.loads(out))
    print(f"machine: {machine()}; LoRA r16, {args.epochs:g} epochs, batch {args.batch}")
    print("| batches | tokens/s | tokens computed (real) | peak MiB over the model | final loss | MFU |")
    print("|---|---|---|---|---|---|")
    for r in results:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "n/a (CPU)"
        print(f"| {r['variant']} | {r['tokens_per_s']} | {r['tokens_computed']:,} ({r['real_tokens']:,}) | {r['peak_mb']:,} | "
              f"{r['final_loss']} | {mfu} |")
    print(f"packed / padded: {results[1]['tokens_per_s'] / results[0]['tokens_per_s']:.2f}x tokens/s, "
          f"{results[1]['peak_mb'] / max(1, results[0]['peak_mb']):.2f}x memory")


if __name__ == "__main__":
    main()
