"""Peak memory of CDM's attention pass at 2,048 tokens on a random-weight Llama-3.2-1B: every layer's
attention kept (before) against one layer at a time (after, depthtune's score stage).

    python bench/bench_score_memory.py                # on the GPU if there is one (bf16), else CPU (bf16)
    python bench/bench_score_memory.py --tokens 512 --layers 4    # smaller, for a quick look

before  one eager forward with output_attentions=True: all L layers' [B, H, T, T] weights are alive at
        the end, when the statistic is computed from them (how scoring read attention before the hooks)
after   depthtune.stages.score.SparsityMeter: a forward hook reduces each layer's weights to the CDM
        statistic as the layer runs; the weights go before the next layer's exist
Both compute the same statistic (checked). Peak = the CUDA allocator's peak over the loaded model, or on
CPU the resident-memory growth over the loaded model (sampled every 5 ms), each variant in its own
process so that one's freed memory does not hide the other's.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # depthtune from this checkout

LLAMA_32_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                   num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                   rms_norm_eps=1e-5, tie_word_embeddings=True,
                   rope_parameters={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
                                    "rope_theta": 500000.0})


def one(variant: str, tokens: int, layers: int | None) -> dict:
    """In its own process: build the model, run one attention pass, report the peak over the model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from depthtune import cdm
    from depthtune.memory import PeakMemory
    from depthtune.stages.score import SparsityMeter, attention

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    cfg = LlamaConfig(**{**LLAMA_32_1B, **({"num_hidden_layers": layers} if layers else {})})
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # made in bf16 directly
    with torch.device(device):
        model = LlamaForCausalLM(cfg).eval()
    torch.set_default_dtype(torch.float32)  # the statistic accumulates in fp32, as in the score stage
    ids = torch.randint(3, cfg.vocab_size, (1, tokens), device=device)
    mask = torch.ones(1, tokens, dtype=torch.long, device=device)
    mem = PeakMemory(over_start=True, device=device).__enter__()
    t = time.perf_counter()
    with torch.no_grad(), attention(model, "eager"):
        if variant == "before":
            out = model.model(input_ids=ids, attention_mask=mask, output_attentions=True)
            s = sum(cdm.attention_sparsity(a, mask, mask.bool())[0] for a in out.attentions)
        else:
            with SparsityMeter(model, mask, mask.bool()) as meter:
                model.model(input_ids=ids, attention_mask=mask)
            s = meter.sum
    mem.__exit__(None, None, None)
    mb = mem.mb
    head = cfg.num_attention_heads * tokens * tokens * 2 / 2**20  # one layer's bf16 weights, MiB
    return {"variant": variant, "device": torch.cuda.get_device_name() if cuda else "cpu", "tokens": tokens,
            "layers": cfg.num_hidden_layers, "peak_mb_over_model": round(mb), "one_layer_attention_mb": round(head),
            "seconds": round(time.perf_counter() - t, 2), "statistic": round(float(s.sum()), 4)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--layers", type=int, help="keep only this many layers (default: the config's 16)")
    parser.add_argument("--variant", choices=("before", "after"), help=argparse.SUPPRESS)  # a child process
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(one(args.variant, args.tokens, args.layers)))
        return 0
    rows = []
    for variant in ("before", "after"):
        cmd = [sys.executable, __file__, "--variant", variant, "--tokens", str(args.tokens)]
        out = subprocess.run(cmd + (["--layers", str(args.layers)] if args.layers else []), capture_output=True,
                             text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{variant}: peak {rows[-1]['peak_mb_over_model']:,} MiB over the model, {rows[-1]['seconds']} s",
              flush=True)
    b, a = rows
    print(f"\n{b['device']}, random Llama-3.2-1B ({b['layers']} layers), {b['tokens']} tokens, bf16: one layer's "
          f"attention weights = {b['one_layer_attention_mb']:,} MiB")
    print("| scoring's attention pass | peak MiB over the model | in layers' attention |\n|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['peak_mb_over_model']:,} | {r['peak_mb_over_model'] / r['one_layer_attention_mb']:.1f} |")
    same = abs(b["statistic"] - a["statistic"]) <= 1e-3 * max(1.0, abs(b["statistic"]))
    print(f"same statistic: {same} ({b['statistic']} vs {a['statistic']})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
