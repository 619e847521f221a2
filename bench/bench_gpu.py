"""GPU benchmark on random-weight models of real configs (no download): one table of throughput and memory.

    python bench/bench_gpu.py --out runs/bench-gpu     # one H100, about 5-7 minutes
    python bench/bench_gpu.py --tiny --out /tmp/b      # seconds on CPU, tiny configs (run by the tests)

Rows (bf16, SDPA attention; each part prints its time as it goes, the table goes to <out>/bench_gpu.md
and .json):
  sampling   SmolLM2-135M and Llama-3.2-1B: tokens/s and peak memory over the loaded model, the old way
             (generate(output_logits=True), then log-softmax over the stacked [B, steps, V] fp32 logits for
             the chosen tokens and top-20 rows: depthtune before issue 9) against LocalSampler (per step
             only the chosen log-prob and the top-20 rows are kept)
  1B         tokens/s of generate (LocalSampler), score (depthtune's score stage: two passes, attention read
             layer by layer) and LoRA training (r=16, all linear layers, AdamW); the training's model FLOPs
             utilisation (MFU)
  8B         peak VRAM of LoRA training, bf16 base against 4-bit NF4 base (QLoRA); without bitsandbytes the
             4-bit row says so (carry a wheel: pip install --no-deps bitsandbytes-*.whl)
The models are built from the configs below (checked against the published config.json files) with
random weights; random weights never say eos, so every sequence runs to max_new_tokens. Works on
transformers 5.17 (the GPU machine) and 5.24.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # depthtune from this checkout

LLAMA3_ROPE = {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192, "rope_theta": 500000.0}
CONFIGS = {  # HuggingFaceTB/SmolLM2-135M-Instruct, meta-llama/Llama-3.2-1B, meta-llama/Llama-3.1-8B
    "SmolLM2-135M": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rms_norm_eps=1e-5, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 100000.0}),
    "Llama-3.2-1B": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                         rms_norm_eps=1e-5, tie_word_embeddings=True, rope_parameters={**LLAMA3_ROPE, "factor": 32.0}),
    "Llama-3.1-8B": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
                         rms_norm_eps=1e-5, tie_word_embeddings=False, rope_parameters={**LLAMA3_ROPE, "factor": 8.0}),
}
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)
# sizes per part: (prompts, samples per prompt, prompt tokens, new tokens); training: (batch, tokens, steps)
FULL = {"sample": {"SmolLM2-135M": (16, 4, 64, 256), "Llama-3.2-1B": (8, 4, 64, 256)},
        "train_1b": (8, 512, 10), "train_8b": (2, 512, 4)}
SMALL = {"sample": {"SmolLM2-135M": (2, 2, 8, 8), "Llama-3.2-1B": (2, 2, 8, 8)},
         "train_1b": (2, 16, 3), "train_8b": (2, 16, 2)}
VARIANTS_8B = [("bf16 base", False, False), ("4-bit NF4 base", True, False),
               ("bf16 base + activation checkpointing", False, True),
               ("4-bit NF4 base + activation checkpointing", True, True)]
PEAK_TFLOPS = {"H200": 989, "H100 PCIe": 756, "H100": 989, "A100": 312}  # dense bf16, vendor data sheets


class Clock:
    def __init__(self):
        self.start = time.perf_counter()

    def log(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.start:6.1f} s] {text}", flush=True)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Peak:
    """Wall time and peak memory of a block (depthtune.memory.PeakMemory over what was allocated when it
    began), plus the CUDA allocator's whole peak (total_mb; 0 on CPU)."""

    def __enter__(self):
        from depthtune.memory import PeakMemory

        sync()
        self.mem = PeakMemory(over_start=True).__enter__()
        self.t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync()
        self.seconds = time.perf_counter() - self.t
        self.mem.__exit__(*exc)
        self.mb = self.mem.mb
        self.total_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0


def config(name: str, tiny: bool):
    from transformers import LlamaConfig

    values = dict(TINY) if tiny else dict(CONFIGS[name])
    try:
        return LlamaConfig(**values)
    except TypeError:  # a transformers without rope_parameters: the older names
        rope = values.pop("rope_parameters", {})
        theta = rope.pop("rope_theta", 10000.0)
        return LlamaConfig(**values, rope_theta=theta, rope_scaling=rope if rope.get("rope_type") != "default" else None)


def build(name: str, tiny: bool, device, dtype=torch.bfloat16):
    """A random-weight model of `name`'s config, made directly on the device in `dtype`."""
    from transformers import LlamaForCausalLM

    cfg = config(name, tiny)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # made in bf16: an 8B never exists in fp32 (32 GB)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(before)
    model.generation_config.pad_token_id = 2
    model.generation_config.eos_token_id = 1
    return model.eval()


def tokenizer(vocab: int):
    """A word-level tokenizer over the model's whole vocabulary ('t0'..'tN'), built in memory: prompts are
    random token strings, and decoding any id works."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="t1", pad_token="t2")
    tok.padding_side = "left"
    return tok


def prompts(n: int, length: int, vocab: int) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    return [{"id": f"p{i}", "prompt": " ".join(f"t{t}" for t in torch.randint(3, vocab, (length,), generator=gen).tolist())}
            for i in range(n)]


def sample_old(model, tok, items, k: int, steps: int, topk: int = 20) -> int:
    """depthtune before issue 9: every step's fp32 logits kept, log-softmax over all of them at the end."""
    ids = tok([it["prompt"] for it in items], return_tensors="pt", padding=True).to(model.device)
    torch.manual_seed(0)
    out = model.generate(**ids, max_new_tokens=steps, min_new_tokens=steps, num_return_sequences=k,
                         output_logits=True, return_dict_in_generate=True, do_sample=True, temperature=0.8,
                         top_p=0.95, top_k=0, pad_token_id=tok.pad_token_id)
    new = out.sequences[:, ids["input_ids"].shape[1]:]
    logp = F.log_softmax(torch.stack(out.logits, dim=1).float(), -1)  # [B, steps, V]
    logp.gather(-1, new.unsqueeze(-1)).squeeze(-1).cpu()
    logp.topk(topk, dim=-1)[0].cpu()
    return int(new.numel())


def sample_new(model, tok, items, k: int, steps: int, topk: int = 20):
    from depthtune.backends.local import LocalSampler

    model.generation_config.min_new_tokens = steps
    rows, _, _ = LocalSampler(model, tok, template="raw").sample_chunk(
        items, k=k, temperature=0.8, top_p=0.95, max_new_tokens=steps, seed=0, system_prompt=None, topk=topk)
    return sum(len(r["completion_ids"]) for r in rows), rows


def part_sampling(clock: Clock, args, device, table: list, keep: dict) -> None:
    sizes = (SMALL if args.tiny else FULL)["sample"]
    for name, (n, k, plen, steps) in sizes.items():
        model = build(name, args.tiny, device)
        tok = tokenizer(model.config.vocab_size)
        items = prompts(n, plen, model.config.vocab_size)
        sample_new(model, tok, items[:1], 1, 4)  # warm-up: kernels, allocator
        for way, fn in (("old: output_logits", sample_old), ("new: LocalSampler", sample_new)):
            with Peak() as p:
                out = fn(model, tok, items, k, steps)
            tokens = out[0] if isinstance(out, tuple) else out
            table.append({"part": "sampling", "model": name, "what": way, "batch": n * k, "new_tokens": steps,
                          "tokens_per_s": round(tokens / p.seconds), "peak_mb_over_model": round(p.mb)})
            clock.log(f"sampling {name} {way}: {tokens / p.seconds:,.0f} tok/s, +{p.mb:,.0f} MiB")
            if name == "Llama-3.2-1B" and isinstance(out, tuple):
                keep["rows"], keep["gen_tok_s"] = out[1], tokens / p.seconds
        if name == "Llama-3.2-1B":
            keep["model"], keep["tok"] = model, tok
        else:
            del model
        torch.cuda.empty_cache() if torch.cuda.is_available() else None


def part_score(clock: Clock, keep: dict, table: list) -> None:
    from depthtune.config import ScoreConfig
    from depthtune.stages.score import score_rows

    model, tok, rows = keep["model"], keep["tok"], keep["rows"]
    cfg = ScoreConfig(batch_size=16)
    score_rows(model, tok, rows[:2], cfg, progress=lambda *_: None)  # warm-up (eager attention too)
    with Peak() as p:
        score_rows(model, tok, rows, cfg, progress=lambda *_: None)
    tokens = sum(len(r["completion_ids"]) for r in rows)
    table.append({"part": "1B bf16", "model": "Llama-3.2-1B", "what": "generate (LocalSampler)",
                  "tokens_per_s": round(keep["gen_tok_s"])})
    table.append({"part": "1B bf16", "model": "Llama-3.2-1B", "what": "score (CDM, 2 passes)",
                  "tokens_per_s": round(tokens / p.seconds), "peak_mb_over_model": round(p.mb)})
    clock.log(f"score 1B: {tokens / p.seconds:,.0f} completion tok/s, +{p.mb:,.0f} MiB")


def lora(model, quantized: bool, checkpointing: bool = False):
    """LoRA r=16 on every linear layer; a quantised base goes through PEFT's k-bit preparation first (as
    depthtune's wrap_lora does: its norms and embeddings become fp32)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))


def train_steps(model, batch: int, tokens: int, steps: int) -> tuple[float, Peak]:
    """LoRA steps as the Trainer runs them (bf16 autocast, forward, backward, AdamW on the adapter);
    -> (seconds per step after the first two, peak over the whole)."""
    device = next(model.parameters()).device
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(3, model.config.vocab_size, (batch, tokens), device=device)
    times = []
    model.train()
    with Peak() as p:
        for _ in range(steps):
            t = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
            times.append(time.perf_counter() - t)
    settled = times[2:] or times
    return sum(settled) / len(settled), p


def matmul_params(model) -> int:
    """Parameters that take part in a matmul per token: every linear layer and the LM head."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def part_train_1b(clock: Clock, args, keep: dict, table: list) -> None:
    model = keep.pop("model")
    batch, tokens, steps = (SMALL if args.tiny else FULL)["train_1b"]
    n = matmul_params(model)
    c = model.config
    model = lora(model, quantized=False)
    secs, _ = train_steps(model, batch, tokens, steps)
    # LoRA: forward 2N + backward to the activations 2N per token (the frozen weights get no gradient), plus
    # attention (causal): 2 matmuls x 2 FLOPs x T/2 keys x d per layer, three times over for fwd + bwd
    attn = 3 * 2 * 2 * (tokens / 2) * c.num_attention_heads * getattr(c, "head_dim", c.hidden_size // c.num_attention_heads)
    flops = batch * tokens * (4 * n + attn * c.num_hidden_layers)
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = next((v for key, v in PEAK_TFLOPS.items() if key in name), None)
    mfu = flops / secs / (peak * 1e12) if peak else None
    table.append({"part": "1B bf16", "model": "Llama-3.2-1B", "what": f"LoRA train (batch {batch} x {tokens})",
                  "tokens_per_s": round(batch * tokens / secs),
                  "mfu": None if mfu is None else round(100 * mfu, 1)})
    clock.log(f"train 1B: {batch * tokens / secs:,.0f} tok/s, {secs * 1000:.0f} ms/step, MFU "
              + (f"{100 * mfu:.1f}% of {peak} TFLOP/s ({name})" if mfu else f"n/a ({name})"))
    del model, keep["rows"]
    torch.cuda.empty_cache() if torch.cuda.is_available() else None


def quantise_in_place(model, device) -> None:
    """Every linear layer but the LM head -> bitsandbytes Linear4bit (NF4, double quantisation, bf16
    compute): what from_pretrained(quantization_config=BitsAndBytesConfig(...)) builds, done in memory
    because a random model has no files to load."""
    import bitsandbytes as bnb

    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and child_name != "lm_head":
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4",
                                      device="meta")
                q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4",
                                             compress_statistics=True).to(device)  # quantises here
                setattr(parent, child_name, q)
                del child
    model.is_loaded_in_4bit = True  # what PEFT's k-bit preparation looks for


def part_train_8b(clock: Clock, args, device, table: list) -> None:
    batch, tokens, steps = (SMALL if args.tiny else FULL)["train_8b"]
    name = "Llama-3.1-8B"
    for variant, quantized, checkpointing in VARIANTS_8B:
        row = {"part": "8B LoRA", "model": name, "what": f"train peak VRAM, {variant} (batch {batch} x {tokens})"}
        try:
            if quantized:
                import bitsandbytes  # noqa: F401
            model = build(name, args.tiny, device)
            if quantized:
                quantise_in_place(model, device)
            weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
            model = lora(model, quantized, checkpointing)
            weights = max(weights, sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20)
            secs, p = train_steps(model, batch, tokens, steps)
            row.update(peak_vram_mb=round(p.total_mb), weights_mb=round(weights), ms_per_step=round(secs * 1000))
            clock.log(f"train 8B {variant}: peak {p.total_mb:,.0f} MiB (weights {weights:,.0f} MiB), "
                      f"{secs * 1000:.0f} ms/step")
            del model
        except ImportError:
            row["note"] = "bitsandbytes is not installed here: pip install 'bitsandbytes>=0.50' (or a carried wheel)"
            clock.log(f"train 8B {variant}: skipped, {row['note']}")
        except Exception as e:  # noqa: BLE001  one failed row must not cost the table
            row["note"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:150]}"
            clock.log(f"train 8B {variant}: {row['note']}")
        table.append(row)
        torch.cuda.empty_cache() if torch.cuda.is_available() else None


def render(table: list[dict], meta: dict) -> str:
    cols = [("part", "part"), ("model", "model"), ("what", "measured"), ("tokens_per_s", "tokens/s"),
            ("peak_mb_over_model", "peak MiB over model"), ("peak_vram_mb", "peak VRAM MiB"), ("mfu", "MFU %"),
            ("ms_per_step", "ms/step"), ("note", "note")]
    title = (f"# bench_gpu: {meta['device']}, torch {meta['torch']}, transformers {meta['transformers']}, "
             f"bitsandbytes {meta['bitsandbytes']}, {meta['seconds']:.0f} s")
    lines = [title, "",
             "| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in table:
        cells = [r.get(key) for key, _ in cols]
        lines.append("| " + " | ".join("" if v is None else f"{v:,}" if isinstance(v, int) else str(v)
                                       for v in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-gpu", help="folder for bench_gpu.md and bench_gpu.json")
    parser.add_argument("--tiny", action="store_true", help="tiny configs, a few tokens: a CPU smoke run")
    parser.add_argument("--parts", default="sampling,score,train-1b,train-8b",
                        help="which parts (score and train-1b use the 1B that sampling builds)")
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("bench_gpu: no GPU is visible; run it on one, or pass --tiny for the CPU smoke run", file=sys.stderr)
        return 2
    import transformers

    from depthtune.models import quiet

    quiet()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    clock, table, keep = Clock(), [], {}
    parts = [("sampling", lambda: part_sampling(clock, args, device, table, keep)),
             ("score", lambda: part_score(clock, keep, table)),
             ("train-1b", lambda: part_train_1b(clock, args, keep, table)),
             ("train-8b", lambda: part_train_8b(clock, args, device, table))]
    wanted = args.parts.split(",")
    for name, fn in [(n, f) for n, f in parts if n in wanted]:
        try:
            fn()
        except Exception as e:  # noqa: BLE001  report the failure in the table and go on
            table.append({"part": name, "note": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:150]}"})
            clock.log(f"{name} failed: {type(e).__name__}: {e}")
    try:
        import bitsandbytes
        bnb_version = bitsandbytes.__version__
    except ImportError:
        bnb_version = "missing"
    meta = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (--tiny)",
            "torch": torch.__version__, "transformers": transformers.__version__, "bitsandbytes": bnb_version,
            "seconds": time.perf_counter() - clock.start}
    text = render(table, meta)
    print("\n" + text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_gpu.md").write_text(text)
    (out / "bench_gpu.json").write_text(json.dumps({"meta": meta, "rows": table}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
