"""A run directory that cannot be corrupted, each case through the CLI in a real process: one process at a
time, duplicates dropped on resume, no stale stage reused after a setting changes, and one line for a
run directory that is a file, read-only, or on a full disk, a prompt too long for the model, and held-out
prompts that leak from training."""
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import tiny_args

from depthtune import artifacts

pytestmark = pytest.mark.slow  # every case through the CLI in a real process

FAST = ["--max-train-prompts", "6", "--max-eval-prompts", "3"]


def depthtune(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "depthtune", *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kw)


def one_line(proc: subprocess.CompletedProcess, expected: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("depthtune: error: ") and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def started(args: list, run_dir: Path, until: str) -> subprocess.Popen:
    """A depthtune process, stopped (SIGSTOP) once `until` exists in its run dir (a .jsonl file: holds a whole
    line; the append opens it before it writes): it holds the lock."""
    proc = subprocess.Popen([sys.executable, "-m", "depthtune", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    path = run_dir / until
    ready = (lambda: path.exists() and path.read_bytes().endswith(b"\n")) if until.endswith(".jsonl") else path.exists
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, "the first process ended before it was stopped"
        time.sleep(0.05)
    proc.send_signal(signal.SIGSTOP)
    return proc


def test_a_second_process_on_the_same_run_dir_is_refused_and_a_dead_ones_lock_is_taken_over(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = ["run"] + tiny_args(tiny_model_dir, run_dir) + FAST
    first = started(args, run_dir, "prompts/manifest.json")
    try:
        line = one_line(depthtune(*args), f"run directory {run_dir} is in use by another depthtune process")
        assert f"PID {first.pid}" in line
    finally:
        first.send_signal(signal.SIGKILL)  # killed while holding the lock
        first.wait()
    again = depthtune(*args)
    assert again.returncode == 0, again.stderr
    assert f"was left locked by PID {first.pid}, which is no longer running; taking over" in again.stdout


def test_overlapping_processes_killed_mid_generation_leave_no_duplicate_samples(tiny_model_dir, tmp_path):
    """Two processes on one run dir: the second is refused, so only one appends. A partial file that holds a
    chunk twice (as two unlocked processes once wrote it) is repaired on resume: every sample once."""
    run_dir = tmp_path / "run"
    args = ["generate"] + tiny_args(tiny_model_dir, run_dir) + FAST + ["--set", "generate.batch_size=1"]
    first = started(args, run_dir, "generate/samples.partial.jsonl")
    try:
        assert depthtune(*args).returncode == 2  # the overlapping process does no work
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    partial = run_dir / "generate" / "samples.partial.jsonl"
    rows = artifacts.read_jsonl(partial, tolerate_torn_tail=True)
    assert rows, "the first process had appended a chunk"
    with open(partial, "a") as f:  # the same chunk appended again, then a torn line
        f.write("".join(json.dumps(r) + "\n" for r in rows) + '{"sample_id": "tor')
    done = depthtune("generate", "--run-dir", run_dir)
    assert done.returncode == 0, done.stderr
    samples = artifacts.read_jsonl(run_dir / "generate" / "samples.jsonl")
    ids = [r["sample_id"] for r in samples]
    assert len(ids) == len(set(ids)) == 6 * 2
    assert artifacts.read_json(run_dir / "generate" / "manifest.json")["samples"] == 12


def test_a_changed_setting_is_refused_before_anything_is_rewritten_then_redone_with_redo(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    assert depthtune("run", *tiny_args(tiny_model_dir, run_dir), *FAST).returncode == 0
    before = (run_dir / "config.yaml").read_text()
    proc = depthtune("run", "--run-dir", run_dir, "--k", "3")
    one_line(proc, "the generate stage in")
    assert "generate.k was 2, now 3" in proc.stderr and "--redo" in proc.stderr and "--run-dir" in proc.stderr
    assert (run_dir / "config.yaml").read_text() == before  # the saved config still describes what ran
    redo = depthtune("run", "--run-dir", run_dir, "--k", "3", "--redo")
    assert redo.returncode == 0, redo.stderr
    assert "[generate] redone: generate.k was 2, now 3" in redo.stdout
    assert "[evaluate-base] already finished" in redo.stdout  # it does not depend on k
    assert len(artifacts.read_jsonl(run_dir / "generate" / "samples.jsonl")) == 6 * 3
    assert "k: 3" in (run_dir / "config.yaml").read_text()
    assert "[report]" in depthtune("run", "--run-dir", run_dir).stdout  # and now it is all fresh


def test_a_run_dir_that_is_a_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    one_line(depthtune("run", "--run-dir", path), f"run directory {path} is a file, not a directory")
    assert path.read_text() == "mine"


def in_namespace(script: str) -> subprocess.CompletedProcess:
    """A shell in a user and mount namespace of its own, where it may mount a tmpfs without privileges."""
    if not shutil.which("unshare"):
        pytest.fail("these tests need util-linux's unshare (apt install util-linux)")
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=900)


def test_a_read_only_run_dir(tiny_model_dir, tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    cmd = f"{sys.executable} -m depthtune run " + " ".join(map(str, tiny_args(tiny_model_dir, mount / "run") + FAST))
    proc = in_namespace(f"mount -t tmpfs -o size=1m tmpfs {mount} && mount -o remount,ro {mount} && {cmd}")
    one_line(proc, f"cannot write in run directory {mount / 'run'} (Read-only file system)")


def test_a_full_disk_stops_in_one_line_and_nothing_half_written_is_trusted(tiny_model_dir, tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    run = " ".join(map(str, ["run"] + tiny_args(tiny_model_dir, mount / "run") + FAST))
    py = f"{sys.executable} -m depthtune"
    # 1 MiB: the prompts and samples fit, the merged model does not; then the disk grows and the same command resumes
    script = (f"mount -t tmpfs -o size=1m tmpfs {mount} && {py} {run}; echo \"exit=$?\"; "
              f"mount -o remount,size=64m {mount} && {py} {run} && cp -r {mount}/run {tmp_path}/kept")
    proc = in_namespace(script)
    first_err = [x for x in proc.stderr.splitlines() if x.startswith("depthtune:")]
    assert "exit=2" in proc.stdout, proc.stdout + proc.stderr
    assert first_err[0].startswith("depthtune: error: no space left on the device"), proc.stderr
    kept = tmp_path / "kept"
    assert (kept / "report.md").exists(), proc.stderr
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(kept / "merge" / "model")  # whole, not the half written at first
    assert not list(kept.rglob(".*.before-redo")) and not list((kept / "merge").glob(".model.*"))


def test_a_prompt_longer_than_the_context_window_is_refused_before_anything_is_written(tiny_model_dir, tmp_path):
    data = tmp_path / "long.jsonl"
    rows = [{"prompt": "What is 2 + 2?", "answer": "4"}] * 5 + [{"id": "long-one", "prompt": "word " * 700,
                                                                 "answer": "1"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = tmp_path / "run"
    line = one_line(depthtune("run", "--run-dir", run_dir, "--model", tiny_model_dir, "--data", data),
                    "does not fit the model's context window of 512")
    assert "long-one" in line
    assert not run_dir.exists()


def test_held_out_prompts_that_are_also_training_prompts_are_warned_about(tiny_model_dir, tmp_path):
    rows = [{"prompt": f"What is {a} + 3?", "answer": str(a + 3)} for a in range(10)]
    train, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    held.write_text("".join(json.dumps(r) + "\n" for r in rows[:2] + [{"prompt": "What is 99 + 1?", "answer": "100"}]))
    run_dir = tmp_path / "run"
    args = tiny_args(tiny_model_dir, run_dir)
    proc = depthtune("run", *args, "--data", train, "--eval-data", held)
    assert proc.returncode == 0, proc.stderr
    assert "warning: 2 of 3 held-out prompts are also training prompts" in proc.stdout
    assert "**Leakage**: 2 held-out prompts are also training prompts" in (run_dir / "report.md").read_text()
