"""bench/bench_gpu.py in its --tiny CPU mode: every part runs and the table is written."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a benchmark's process
def test_bench_gpu_runs_tiny_on_cpu(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--tiny", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads((tmp_path / "bench_gpu.json").read_text())["rows"]
    assert not [r for r in rows if "failed" in str(r.get("note"))], rows
    assert sum(r["part"] == "sampling" for r in rows) == 4  # two models x old and new sampling
    assert sum(r["part"] == "1B bf16" for r in rows) == 3  # generate, score, LoRA training
    assert sum(r["part"] == "8B LoRA" for r in rows) == 4  # bf16 and 4-bit bases, with and without checkpointing
    assert all(r["tokens_per_s"] > 0 for r in rows if "tokens_per_s" in r)
    assert "| part |" in (tmp_path / "bench_gpu.md").read_text()


def test_bench_gpu_refuses_without_a_gpu_unless_tiny(tmp_path):
    import os

    hidden = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU for the benchmark, on any machine
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, check=False, env=hidden)
    assert out.returncode == 2 and "--tiny" in out.stderr
