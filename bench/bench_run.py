"""Benchmark `depthtune run`: stage timings and throughput on this machine.

    python bench/bench_run.py                      # the embedded default, fresh run dir
    python bench/bench_run.py --run-dir runs/bench --model path/to/model -- --set generate.k=2

Prints wall seconds per stage (model loads included in the first stage that needs
the model) and tokens per second for generation, scoring and training. A benchmark,
not a test: nothing here asserts a time.
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
from depthtune.models import quiet  # noqa: E402
from depthtune.reporting import machine  # noqa: E402
from depthtune.stages.pipeline import run_all  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", default="runs/bench")
    ap.add_argument("--keep", action="store_true", help="reuse an existing run dir instead of starting fresh")
    ap.add_argument("rest", nargs="*", help="extra `depthtune run` arguments after --")
    args = ap.parse_args()
    run_dir = Path(args.run_dir)
    if run_dir.exists() and not args.keep:
        shutil.rmtree(run_dir)
    quiet()
    cli_args = build_parser().parse_args(["run", "--run-dir", str(run_dir), *args.rest])
    cfg = resolve_config(cli_args)
    start = time.perf_counter()
    metrics = run_all(run_dir, cfg, log=lambda s: None)
    total = time.perf_counter() - start

    timings = artifacts.read_json(run_dir / "timings.json")
    gen = artifacts.read_json(run_dir / "generate" / "manifest.json")
    scored = artifacts.read_jsonl(run_dir / "score" / "scored.jsonl")
    train = artifacts.read_json(run_dir / "train" / "manifest.json")
    selected = artifacts.read_jsonl(run_dir / "select" / "selected.jsonl")
    scored_tokens = sum(len(r["prompt_ids"]) + len(r["completion_ids"]) for r in scored)
    train_tokens = sum(len(r["prompt_ids"]) + len(r["completion_ids"]) for r in selected) * cfg.train.epochs

    print(f"machine: {machine()}")
    print(f"{'stage':<16}{'seconds':>10}")
    for name, secs in timings.items():
        print(f"{name:<16}{secs:>10.1f}")
    print(f"{'total':<16}{total:>10.1f}")
    print(f"generate: {gen['samples']} samples, {gen['completion_tokens']} tokens, "
          f"{gen['completion_tokens'] / gen['seconds']:.1f} tok/s (generation only)")
    print(f"score: {len(scored)} samples, {scored_tokens} tokens x 2 passes, "
          f"{len(scored) / timings['score']:.2f} samples/s, {2 * scored_tokens / timings['score']:.0f} tok/s")
    print(f"train: {train['examples']} examples, ~{train_tokens:.0f} tokens, {train['train_seconds']:.1f} s, "
          f"{train_tokens / train['train_seconds']:.0f} tok/s")
    print_table(metrics)
    print(json.dumps({"total_seconds": round(total, 1), **timings}))


if __name__ == "__main__":
    main()
