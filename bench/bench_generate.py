"""Benchmark: memory and speed of in-process sampling, before and after the memory-safe sampler.

    python bench/bench_generate.py                 # both models, both samplers, side by side
    python bench/bench_generate.py --tiny          # a seconds-long smoke run (used by the tests)

before  model.generate(output_logits=True, return_dict_in_generate=True), then log-softmax over the
        stacked [batch, steps, vocab] fp32 logits for the chosen tokens and the top-20 rows: what the
        generate stage did until this change
after   depthtune.backends.local.LocalSampler: a logits processor keeps per step only the chosen
        token's log-prob and the top-20 rows; nothing of size [batch, steps, vocab] lives

Models: the embedded SmolLM2-135M-Instruct at batch 32 (the default generate stage: 8 prompts x 4
samples, 48 new tokens), and a random-weight model with Qwen2.5-0.5B's config (152k vocabulary) at 512
new tokens, batch 8; on a CPU it keeps 4 of its 24 layers (the logits' size, which this measures, is
vocabulary x steps x batch, not depth). Each variant runs in a fresh process, so peak memory is its own:
on CPU the growth of resident memory over the loaded model (sampled every 10 ms), on a GPU the CUDA
allocator's peak.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

QWEN_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
                tie_word_embeddings=True, rms_norm_eps=1e-6)


def Peak():
    """Peak memory over the loaded model (depthtune.memory): the CUDA allocator's, or resident memory on CPU."""
    from depthtune.memory import PeakMemory

    return PeakMemory(over_start=True)


def load(which: str, tiny: bool):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from depthtune import models

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if which == "smollm2" and not tiny:
        return models.load_model(None, "auto", dev), models.load_tokenizer(None)
    tok = models.load_tokenizer(None)
    torch.manual_seed(0)
    if which == "smollm2":  # tiny: a 2-layer Llama with the embedded tokenizer
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
        return LlamaForCausalLM(cfg).to(dev).eval(), tok
    cfg = dict(QWEN_05B)
    if dev == "cpu":
        cfg["num_hidden_layers"] = 4
    if tiny:
        cfg.update(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                   num_hidden_layers=1)
    model = Qwen2ForCausalLM(Qwen2Config(**cfg, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    return model.to(dev, torch.bfloat16 if dev == "cuda" else torch.float32).eval(), tok


def before(model, tok, items, k, steps, topk=20):
    """The old generate stage's maths: all logits kept, then log-softmax over the stack."""
    import torch
    import torch.nn.functional as F

    from depthtune.backends import left_pad
    from depthtune.prompting import prompt_ids

    dev = next(model.parameters()).device
    ids, mask = left_pad([prompt_ids(tok, it) for it in items], tok.pad_token_id, dev)
    torch.manual_seed(0)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps,
                         num_return_sequences=k, output_logits=True, return_dict_in_generate=True, do_sample=True,
                         temperature=0.8, top_p=0.95, top_k=0, pad_token_id=tok.pad_token_id)
    new = out.sequences[:, ids.shape[1]:]
    logits = torch.stack(out.logits, dim=1).float()  # [B, steps, V]
    logp = F.log_softmax(logits, -1)
    chosen = logp.gather(-1, new.unsqueeze(-1)).squeeze(-1)
    top = logp.topk(topk, dim=-1)
    return int(new.numel()), chosen, top


def after(model, tok, items, k, steps, topk=20):
    from depthtune.backends.local import LocalSampler

    model.generation_config.min_new_tokens = steps  # random weights: the same token count as `before`
    rows, _, cached = LocalSampler(model, tok).sample_chunk(items, k=k, temperature=0.8, top_p=0.95,
                                                            max_new_tokens=steps, seed=0, system_prompt=None, topk=topk)
    return sum(len(r["completion_ids"]) for r in rows), rows, cached


def one(which: str, variant: str, tiny: bool) -> dict:
    """Runs in its own process: load, warm up, then time and measure one sampling batch."""
    import torch

    from depthtune.suites import load_suites

    model, tok = load(which, tiny)
    items, _ = load_suites(["arithmetic", "word_problems", "facts"])
    prompts, k, steps = (items[:8], 4, 48) if which == "smollm2" else (items[:2], 4, 512)
    if tiny:
        prompts, steps = prompts[:2], 8
    fn = before if variant == "before" else after
    with torch.no_grad():
        fn(model, tok, prompts[:1], 1, 4)  # warm-up
        with Peak() as peak:
            t = time.perf_counter()
            tokens, *_ = fn(model, tok, prompts, k, steps)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t
    return {"model": which, "variant": variant, "batch": len(prompts) * k, "new_tokens": steps, "tokens": tokens,
            "seconds": round(seconds, 2), "tok_s": round(tokens / seconds, 1), "peak_mb": round(peak.mb, 1),
            "vocab": model.config.vocab_size, "layers": model.config.num_hidden_layers,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny models, 8 tokens: a smoke run")
    ap.add_argument("--models", default="smollm2,qwen05b")
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, args.tiny)))
        return
    results = []
    for which in args.models.split(","):
        for variant in ("before", "after"):
            cmd = [sys.executable, __file__, "--one", which, variant] + (["--tiny"] if args.tiny else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            results.append(json.loads(out))
            print(f"  {which} {variant}: {results[-1]}", file=sys.stderr)
    print("\n| model (vocab, layers) | batch x new tokens | sampler | tokens/s | peak memory MB | device |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} ({r['vocab']:,}, {r['layers']}) | {r['batch']} x {r['new_tokens']} | {r['variant']} | "
              f"{r['tok_s']} | {r['peak_mb']:,.0f} | {r['device']} |")
    for which in args.models.split(","):
        b, a = (next(r for r in results if r["model"] == which and r["variant"] == v) for v in ("before", "after"))
        print(f"{which}: after/before memory {a['peak_mb'] / max(b['peak_mb'], 1e-9):.3f}, "
              f"speed {a['tok_s'] / b['tok_s']:.2f}x")


if __name__ == "__main__":
    main()
