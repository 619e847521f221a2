"""Benchmark `depthtune run`: stage timings and throughput on this machine.

    python bench/bench_run.py                      # the embedded default, fresh run dir
    python bench/bench_run.py --run-dir runs/bench --model path/to/model -- --set generate.k=2

Prints wall seconds per stage (model loads included in the first stage that needs the model) beside each
stage's floor on this machine: the tokens the stage must push through the model, divided by the model's own
throughput measured here after the run, on full batches of the same length (a forward pass for sampling,
scoring and evaluation: decoding token by token cannot beat one batched forward over the same tokens; a
forward and a backward pass through the frozen model for LoRA training). The gap between the two columns
is what batching, padding, Python and model loads cost. A benchmark, not a test: nothing asserts a time.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from depthtune import artifacts  # noqa: E402
from depthtune.cli import build_parser, print_table, resolve_config  # noqa: E402
from depthtune.config import load_config  # noqa: E402
from depthtune.models import quiet  # noqa: E402
from depthtune.reporting import machine  # noqa: E402
from depthtune.stages.pipeline import run_all  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", default="runs/bench")
    ap.add_argument("--keep", action="store_true", help="reuse an existing run dir instead of starting fresh")
    ap.add_argument("--measured", action="store_true", help="no new run: the stage table of the finished run "
                    "in --run-dir (the README's first command's, say), from its timings.json")
    ap.add_argument("rest", nargs="*", help="extra `depthtune run` arguments after --")
    args = ap.parse_args()
    run_dir = Path(args.run_dir)
    if run_dir.exists() and not (args.keep or args.measured):
        shutil.rmtree(run_dir)
    quiet()
    cli_args = build_parser().parse_args(["run", "--run-dir", str(run_dir), *args.rest])
    cfg = resolve_config(cli_args)
    if args.measured:
        cfg = load_config(run_dir / "config.yaml")
        metrics = artifacts.read_json(run_dir / "metrics.json")
        total = sum(artifacts.read_json(run_dir / "timings.json").values())
    else:
        start = time.perf_counter()
        metrics = run_all(run_dir, cfg, log=lambda s: None)
        total = time.perf_counter() - start

    timings = artifacts.read_json(run_dir / "timings.json")
    floors = stage_floors(run_dir, cfg)
    gen = artifacts.read_json(run_dir / "generate" / "manifest.json")
    scored = artifacts.read_jsonl(run_dir / "score" / "scored.jsonl")
    train = artifacts.read_json(run_dir / "train" / "manifest.json")
    selected = artifacts.read_jsonl(run_dir / "select" / "selected.jsonl")
    scored_tokens = sum(len(r["prompt_ids"]) + len(r["completion_ids"]) for r in scored)
    train_tokens = sum(len(r["prompt_ids"]) + len(r["completion_ids"]) for r in selected) * cfg.train.epochs

    print(f"machine: {machine()}")
    print("| stage | seconds | tokens through the model | floor (s) | seconds / floor |")
    print("|---|---:|---:|---:|---:|")
    for name, secs in timings.items():
        tokens, floor = floors.get(name, (0, 0.0))
        ratio = f"{secs / floor:.1f}x" if floor > 0.5 else "-"
        print(f"| {name} | {secs:.0f} | {tokens:,} | {floor:.0f} | {ratio} |")
    floor_sum = sum(v[1] for k, v in floors.items() if not k.startswith("_"))
    print(f"| total | {total:.0f} | | {floor_sum:.0f} | {total / floor_sum:.1f}x |")
    print(f"floors from {floors['_rates']}")
    print(f"generate: {gen['samples']} samples, {gen['completion_tokens']} tokens, "
          f"{gen['completion_tokens'] / gen['seconds']:.1f} tok/s (generation only)")
    if any(r.get("cdm") is not None for r in scored):  # without CDM the score stage runs no forward pass
        print(f"score: {len(scored)} samples, {scored_tokens} tokens x 2 passes, "
              f"{len(scored) / timings['score']:.2f} samples/s, {2 * scored_tokens / timings['score']:.0f} tok/s")
    print(f"train: {train['examples']} examples, ~{train_tokens:.0f} tokens, {train['train_seconds']:.1f} s, "
          f"{train_tokens / train['train_seconds']:.0f} tok/s")
    print_table(metrics)
    print(json.dumps({"total_seconds": round(total, 1), **timings}))


def throughput(model, seq: int = 96, batch: int = 16, reps: int = 3) -> tuple[float, float]:
    """-> (forward tok/s, forward + backward tok/s) of `model` on [batch, seq] batches, the backward through
    frozen weights to the inputs (what LoRA training pays for the activations' gradients)."""
    import torch

    ids = torch.randint(100, 1000, (batch, seq))
    model.eval()
    with torch.no_grad():
        model(ids)  # warm-up
        t = time.perf_counter()
        for _ in range(reps):
            model(ids)
        fwd = batch * seq * reps / (time.perf_counter() - t)
    for p in model.parameters():
        p.requires_grad_(False)
    emb = model.get_input_embeddings()
    t = time.perf_counter()
    for _ in range(reps):
        x = emb(ids).detach().requires_grad_(True)
        model(inputs_embeds=x).logits.float().logsumexp(-1).mean().backward()
    both = batch * seq * reps / (time.perf_counter() - t)
    return fwd, both


def stage_floors(run_dir: Path, cfg) -> dict:
    """{stage: (tokens through the model, floor seconds)} from what the run wrote."""
    from depthtune import models

    def tokens(rows) -> int:
        return sum(len(r["prompt_ids"]) + len(r["completion_ids"]) for r in rows)

    fwd, both = throughput(models.from_config(cfg.model.name, cfg.model))
    out = {"_rates": f"forward {fwd:.0f} tok/s, forward + backward {both:.0f} tok/s "
                     f"(batches of 16 x 96 tokens, measured after the run)"}
    samples = artifacts.read_jsonl(run_dir / "generate" / "samples.jsonl")
    # a prompt is prefilled once for its k samples, then each sample's answer is decoded
    sampled = sum(len(r["completion_ids"]) for r in samples) + sum(
        {r["prompt_id"]: len(r["prompt_ids"]) for r in samples}.values())
    out["generate"] = (sampled, sampled / fwd)
    scored = artifacts.read_jsonl(run_dir / "score" / "scored.jsonl")
    passes = 2 if any(r.get("cdm") is not None for r in scored) else 0  # no CDM: the sampler's log-probs
    out["score"] = (passes * tokens(scored), passes * tokens(scored) / fwd)
    trained = tokens(artifacts.read_jsonl(run_dir / "select" / "selected.jsonl")) * cfg.train.epochs
    out["train"] = (int(trained), trained / both)
    for which in ("base", "tuned"):
        rows = artifacts.read_jsonl(run_dir / "evaluate" / f"{which}.jsonl")
        out[f"evaluate-{which}"] = (tokens(rows), tokens(rows) / fwd)
    return out


if __name__ == "__main__":
    main()
