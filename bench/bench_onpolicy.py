"""Off-policy (cached top-k) against on-policy distillation on the default compare pair, side by side: the
teacher in memory (GKD) and the teacher behind llama-server (its log-probs of the student's tokens).

    python bench/bench_onpolicy.py                    # into runs/bench-onpolicy/{default,gkd,served}
    python bench/bench_onpolicy.py --out DIR --share 0.5

`depthtune compare` with no arguments runs first; its directory is then copied twice with only the
distilled student removed, so all three share the teacher's samples, the student trained alone and the
held-out prompts, and differ only in how the distilled student was taught (`--set distill.on_policy=SHARE`,
then also `--backend llama-server`). A variant whose directory holds a finished compare is not run again.
Prints accuracy, the paired differences (95 % intervals over the held-out prompts), teacher tokens
(generated, plus positions scored on on-policy batches, from the distilled student's manifest) and
training seconds.

A benchmark, not a test: it prints what it measured and asserts nothing.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from depthtune import artifacts  # noqa: E402
from depthtune.distill.decide import accuracy_delta, correct_by_prompt  # noqa: E402


def compare(folder: Path, *extra: str) -> float | None:
    if (folder / "compare.json").exists():
        return None
    cmd = [sys.executable, "-m", "depthtune", "compare", "--run-dir", str(folder), *extra]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(folder.with_suffix(".log"), "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc:
        sys.exit(f"compare exited {rc}: see {folder.with_suffix('.log')}")
    return time.perf_counter() - t0


def branch(src: Path, dest: Path) -> None:
    """A copy of a finished compare without its distilled student (so only that is trained again)."""
    if dest.exists():
        return
    shutil.copytree(src, dest)
    shutil.rmtree(dest / "distilled")
    for p in [*dest.glob("evaluate/distilled.*"), dest / "compare.json", *dest.glob("report.*"), dest / "models.png"]:
        p.unlink(missing_ok=True)


def span(d: dict) -> str:
    lo, hi = d["ci95"]
    return f"{100 * d['delta']:+.1f} ({100 * lo:+.1f} to {100 * hi:+.1f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("runs/bench-onpolicy"))
    ap.add_argument("--share", type=float, default=0.5, help="distill.on_policy of the on-policy variants")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    dirs = {n: args.out / n for n in ("default", "gkd", "served")}
    walls = {"default": compare(dirs["default"])}
    for name, extra in (("gkd", []), ("served", ["--backend", "llama-server"])):
        branch(dirs["default"], dirs[name])
        walls[name] = compare(dirs[name], "--set", f"distill.on_policy={args.share}", *extra)
    rows = {n: artifacts.read_jsonl(d / "evaluate" / "distilled.jsonl") for n, d in dirs.items()}
    rows["alone"] = artifacts.read_jsonl(dirs["default"] / "evaluate" / "alone.jsonl")
    _, scores = correct_by_prompt(rows)
    generated = artifacts.read_json(dirs["default"] / "generate" / "manifest.json")
    gen_tokens = generated.get("completion_tokens") or generated.get("tokens")
    labels = {"default": "cached top-k rows, off-policy (the default)",
              "gkd": f"on-policy {args.share:g}, teacher in memory (GKD)",
              "served": f"on-policy {args.share:g}, teacher on llama-server"}
    print(f"\nmachine: {os.cpu_count()} CPUs; {len(scores['alone'])} held-out prompts; teacher generated "
          f"{gen_tokens} tokens (shared by all three)\n")
    print("| distilled student | accuracy | vs trained alone | vs the default | teacher positions scored "
          "(outside its top-k) | training s | compare wall s |")
    print("|---|---|---|---|---|---|---|")
    for n in dirs:
        m = artifacts.read_json(dirs[n] / "distilled" / "manifest.json")
        acc = sum(scores[n]) / len(scores[n])
        vs_default = "-" if n == "default" else span(accuracy_delta(scores, n, "default"))
        wall = "-" if walls[n] is None else f"{walls[n]:.0f}"
        print(f"| {labels[n]} | {100 * acc:.1f} % | {span(accuracy_delta(scores, n, 'alone'))} | {vs_default} | "
              f"{m.get('teacher_positions') or 0:,} ({m.get('teacher_misses') or 0}) | {m['train_seconds']:.0f} | "
              f"{wall} |")
    print(f"\nserved against in memory: {span(accuracy_delta(scores, 'served', 'gkd'))} points")
    print("(compare wall s: '-' where the directory was already finished and nothing ran)")
    print(json.dumps({n: str(d) for n, d in dirs.items()}))


if __name__ == "__main__":
    main()
