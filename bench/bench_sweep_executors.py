"""The same sweep run by the sequential executor and by `--executor ray` on a local cluster, side by side:
wall time of each, their ratio, and whether every cell's figures agree.

    python bench/bench_sweep_executors.py examples/sweep.yaml            # both, into runs/bench-sweep/{local,ray}
    python bench/bench_sweep_executors.py examples/sweep.yaml --out DIR  # elsewhere

Each sweep is run through the CLI as a user runs it. A sweep directory that is already finished is
resumed (its finished cells are skipped), so the wall time is only meaningful on a fresh --out. The cells
are compared on what must not depend on the executor (result.json's examples, final loss, battery, transfer
and parameter count), and the two reports' findings with their wall times blanked out.

A benchmark, not a test: it prints what it measured and asserts nothing.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

FIELDS = ("examples", "final_loss", "battery", "transfer", "params")


def run(sweep: Path, out: Path, executor: str) -> float:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "depthtune", "sweep", str(sweep), "--sweep-dir", str(out), "--executor", executor]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.perf_counter() - t0
    if rc:
        sys.exit(f"the {executor} sweep exited {rc}: see {out.with_suffix('.log')}")
    return seconds


def cells(folder: Path) -> dict:
    out = {}
    for p in sorted(folder.glob("cells/*/result.json")):
        r = json.loads(p.read_text())
        out[p.parent.name] = {k: r.get(k) for k in FIELDS}
    return out


def findings(folder: Path) -> list[str]:
    return [re.sub(r"[0-9.,]+ (s|min)\b", "N s", x)
            for x in json.loads((folder / "sweep.json").read_text())["findings"]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-sweep"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    seq, par = args.out / "local", args.out / "ray"
    t_seq = run(args.sweep, seq, "local")
    t_par = run(args.sweep, par, "ray")
    a, b = cells(seq), cells(par)
    differ = [name for name in sorted(set(a) | set(b)) if a.get(name) != b.get(name)]
    print(f"\nmachine: {os.cpu_count()} CPUs; sweep {args.sweep}, {len(a)} cells sequential, {len(b)} on Ray\n")
    print("| executor | wall time | ratio to sequential |")
    print("|---|---|---|")
    print(f"| sequential (`--executor local`) | {t_seq / 60:.1f} min | 1.00x |")
    print(f"| Ray, local cluster (`--executor ray`) | {t_par / 60:.1f} min | {t_seq / t_par:.2f}x |")
    print(f"\ncells with the same figures: {len(a) - len(differ)} of {len(a)}"
          + (f"; differing: {', '.join(differ)}" if differ else ""))
    for name in differ:
        for k in FIELDS:
            if (a.get(name) or {}).get(k) != (b.get(name) or {}).get(k):
                print(f"  {name}.{k}: sequential {json.dumps((a.get(name) or {}).get(k))[:300]}"
                      f" | ray {json.dumps((b.get(name) or {}).get(k))[:300]}")
    print(f"report findings the same (wall times blanked): {findings(seq) == findings(par)}")


if __name__ == "__main__":
    main()
