"""`--executor ray` on a local 2-CPU Ray cluster, tiny models: the same results as the sequential executor,
a worker killed mid-cell (Ray retries the task, which resumes from the cell's checkpoint), a failing cell
recorded while the others finish, and a directory the workers cannot see refused in one line."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from helpers import make_tiny_model

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray", reason="the Ray tests need ray: pip install 'depthtune[ray]'")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tokenizer_dir):
    return make_tiny_model(tmp_path_factory.mktemp("ray-teacher"), tokenizer_dir, layers=4)


def write_sweep(path: Path, teacher: Path, axes, cpus: int = 2) -> Path:
    spec = {"name": "tiny-ray",
            "base": {"data": {"max_eval_prompts": 6}, "generate": {"max_new_tokens": 4, "batch_size": 8},
                     "evaluate": {"max_new_tokens": 4}, "select": {"require_correct": False},
                     "train": {"epochs": 2, "batch_size": 2, "save_steps": 1},
                     "distill": {"generate": {"k": 2}}},
            "teachers": {"a": {"model": str(teacher)}, "b": {"model": str(teacher), "system_prompt": "Be brief."}},
            "resources": {"cpus_per_cell": cpus},
            "axes": axes}
    path.write_text(yaml.safe_dump(spec))
    return path


def sweep(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "depthtune", "sweep", *map(str, args)], capture_output=True,
                          text=True, timeout=900, env=env)


def cells(folder: Path) -> dict:
    """Each finished cell's figures, by cell folder: what must not depend on the executor."""
    out = {}
    for p in sorted(folder.glob("cells/*/result.json")):
        r = json.loads(p.read_text())
        out[p.parent.name] = {k: r[k] for k in ("examples", "final_loss", "battery", "transfer", "params")}
    return out


AXES = [{"method": [{"lora": {"rank": [4]}}, "full"], "size": [3], "student": ["self"]}]


def test_ray_gives_the_sequential_results_cell_for_cell(teacher_dir, tmp_path):
    path = write_sweep(tmp_path / "s.yaml", teacher_dir, AXES)
    seq, par = tmp_path / "seq", tmp_path / "ray"
    a = sweep(path, "--sweep-dir", seq)
    assert a.returncode == 0, a.stderr
    b = sweep(path, "--sweep-dir", par, "--executor", "ray")
    assert b.returncode == 0, b.stderr
    assert "ray: local cluster on 127.0.0.1" in b.stdout and "cells: 2 done" in b.stdout
    assert cells(seq) == cells(par) and len(cells(seq)) == 2
    # the report's findings are the same sentences, but for the wall times they quote and the cell the cost
    # finding names as the cheapest, which is chosen by those wall times (lora and full train about as fast here)
    wall = lambda x: re.sub(r"cheapest within (.*?) of it \(.*?\) took", r"cheapest within \1 of it (C) took",
                            re.sub(r"[0-9.]+ s\b", "N s", x))
    same = lambda f: [wall(x) for x in json.loads((f / "sweep.json").read_text())["findings"]]
    assert same(seq) == same(par)


def test_a_worker_killed_mid_cell_is_retried_and_resumes_from_its_checkpoint(teacher_dir, tmp_path):
    path = write_sweep(tmp_path / "s.yaml", teacher_dir, [{"size": [6], "method": ["full"], "student": ["self"],
                                                          "train.epochs": [4]}])
    folder = tmp_path / "ray"
    killed = {}

    def kill_when_training() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            for ckpt in folder.glob("cells/*/train/checkpoints/checkpoint-*/trainer_state.json"):
                pid = int((ckpt.parents[3] / "worker.pid").read_text())
                os.kill(pid, signal.SIGKILL)
                killed["pid"], killed["ckpt"] = pid, ckpt.parent.name
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_when_training)
    watcher.start()
    proc = sweep(path, "--sweep-dir", folder, "--executor", "ray")
    watcher.join()
    assert killed, "no worker was killed"
    assert proc.returncode == 0, proc.stderr
    cell = next(folder.glob("cells/*"))
    assert int((cell / "worker.pid").read_text()) != killed["pid"]  # another worker finished it
    assert (cell / "result.json").exists()
    seq = tmp_path / "seq"
    assert sweep(path, "--sweep-dir", seq).returncode == 0
    assert cells(seq) == cells(folder)  # resuming from the checkpoint changed nothing


def test_a_failing_cell_is_recorded_while_the_others_finish(teacher_dir, tmp_path):
    path = write_sweep(tmp_path / "s.yaml", teacher_dir, {"distill.select": [{"selector": "correct"},
                                                                             {"selector": "cdm", "threshold": 100}],
                                                          "size": [3], "method": ["lora"], "student": ["self"]})
    proc = sweep(path, "--sweep-dir", tmp_path / "out", "--executor", "ray")
    assert proc.returncode == 1, proc.stderr
    m = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert len(m["done"]) == 1 and len(m["failed"]) == 1 and "CDM >= 100" in m["failed"][0]["error"]


def test_the_run_directory_must_be_visible_to_the_workers(tmp_path, monkeypatch):
    """A worker that cannot see the driver's files is refused in one line (here: the marker is removed
    before the worker looks, as a node without the shared disk would not find it)."""
    from depthtune.errors import DepthtuneError
    from depthtune.experiments import executor

    real = executor.artifacts.write_text

    def elsewhere(path, text):  # written where no worker looks
        real(tmp_path / "other-node" / Path(path).name, text)

    monkeypatch.setattr(executor.artifacts, "write_text", elsewhere)
    with executor.cluster(None, log=lambda *a: None) as r:
        with pytest.raises(DepthtuneError, match="is not visible to the Ray worker"):
            executor.check_shared(r, tmp_path / "run")
