"""Several processes through accelerate (2 CPU processes, gloo) against one: the same samples, scores and
evaluation; the same adapter and distilled student within float tolerance; a killed run that resumes
under the same or another world size. Then the work split itself, checked without processes."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from depthtune import artifacts, distributed
from depthtune.cli import main
from depthtune.errors import DepthtuneError

pytestmark = pytest.mark.slow  # a real server, several processes or the embedded model

ROOT = Path(__file__).resolve().parents[1]
ENTRY = Path(__file__).parent / "distributed_entry.py"
COMMON = ["--threshold", "0", "--k", "2", "--max-train-prompts", "12", "--max-eval-prompts", "8",
          "--backend", "local", "--set", "generate.max_new_tokens=6", "--set", "evaluate.max_new_tokens=6",
          "--set", "generate.batch_size=1", "--set", "evaluate.batch_size=2", "--set", "generate.topk=3",
          "--set", "select.require_correct=false", "--set", "select.exclude_degenerate=false",
          "--set", "select.min_kept=0", "--set", "train.epochs=1", "--set", "train.dropout=0",
          "--set", "train.learning_rate=0.005"]
# the same global batch: 4 in one process, 2 per process in two
ONE, TWO = ["--set", "train.batch_size=4"], ["--set", "train.batch_size=2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], processes: int = 2, **env) -> subprocess.CompletedProcess:
    """`accelerate launch` of the CLI on CPU: gloo, one thread each (the CI machine has two cores)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(ENTRY), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **env}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)


def samples(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "gen_seconds"} for r in artifacts.read_jsonl(path)]


def same_cache(a: Path, b: Path) -> None:
    from depthtune.teacher_cache import load_cache

    ca, cb = load_cache(a), load_cache(b)
    assert ca.keys() == cb.keys() and ca
    for sid in ca:
        x, y = ca[sid], cb[sid]
        assert torch.equal(x.ids, y.ids) and torch.equal(x.logp, y.logp)
        # the tail's log-mass is computed from the whole row, where batch composition moves the last bits
        # of the logits: equal to a few fp16 steps
        torch.testing.assert_close(x.tails, y.tails, rtol=2e-2, atol=1e-6)


@pytest.fixture(scope="module")
def one(tiny_model_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("one") / "run"
    assert main(["run", "--run-dir", str(run_dir), "--model", str(tiny_model_dir), *COMMON, *ONE]) == 0
    return run_dir


@pytest.fixture(scope="module")
def two(tiny_model_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("two") / "run"
    out = launch(["run", "--run-dir", str(run_dir), "--model", str(tiny_model_dir), *COMMON, *TWO])
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("Accuracy  ") == 1  # only the main process reports
    return run_dir


def test_two_processes_sample_score_and_evaluate_as_one(one, two):
    assert samples(two / "generate" / "samples.jsonl") == samples(one / "generate" / "samples.jsonl")
    same_cache(two / "generate" / "topk", one / "generate" / "topk")
    for stage, name in (("score", "scored"), ("evaluate", "base"), ("evaluate", "tuned")):
        a, b = (artifacts.read_jsonl(d / stage / f"{name}.jsonl") for d in (one, two))
        assert [r["completion_ids"] for r in a] == [r["completion_ids"] for r in b]
        assert [r["cdm"] for r in a] == pytest.approx([r["cdm"] for r in b], abs=1e-3)
    assert not list(two.rglob("ranks")) and not list(two.rglob("*.partial.jsonl"))  # merged, then cleaned up


def test_two_processes_train_the_adapter_one_process_trains(one, two):
    from safetensors.torch import load_file

    assert artifacts.read_manifest(two / "train", "train")["processes"] == 2
    a, b = (load_file(d / "train" / "adapter" / "adapter_model.safetensors") for d in (one, two))
    assert a.keys() == b.keys()
    moved = max(t.abs().max().item() for k, t in a.items() if "lora_B" in k)
    assert moved > 1e-4  # the adapter learnt something (lora_B starts at zero)
    for k in a:  # DDP averages gradients; the loss is normalised by the tokens of both processes
        torch.testing.assert_close(a[k], b[k], atol=1e-5 * max(1.0, moved), rtol=1e-4)


def test_a_killed_two_process_run_resumes(tiny_model_dir, one, tmp_path):
    run_dir = tmp_path / "run"
    args = ["generate", "--run-dir", str(run_dir), "--model", str(tiny_model_dir), *COMMON]
    out = launch(args, KILL_RANK="1", KILL_AFTER="1")
    assert out.returncode != 0 and not artifacts.is_done(run_dir / "generate")
    partial = run_dir / "generate" / "ranks" / "1-of-2" / "samples.partial.jsonl"
    assert len(artifacts.read_jsonl(partial)) == 4  # one chunk of 2 prompts x 2 samples, kept
    out = launch(args)
    assert out.returncode == 0, out.stderr[-3000:]
    assert samples(run_dir / "generate" / "samples.jsonl") == samples(one / "generate" / "samples.jsonl")
    same_cache(run_dir / "generate" / "topk", one / "generate" / "topk")


def test_a_run_killed_under_two_processes_resumes_in_one(tiny_model_dir, one, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["generate", "--run-dir", str(run_dir), "--model", str(tiny_model_dir), *COMMON]
    assert launch(args, KILL_RANK="0", KILL_AFTER="2").returncode != 0
    assert list((run_dir / "generate" / "ranks").glob("*-of-2/samples.partial.jsonl"))
    assert main(args) == 0  # one process adopts both blocks' finished chunks and samples the rest
    assert samples(run_dir / "generate" / "samples.jsonl") == samples(one / "generate" / "samples.jsonl")
    same_cache(run_dir / "generate" / "topk", one / "generate" / "topk")
    assert not (run_dir / "generate" / "ranks").exists()


def test_compare_distils_under_two_processes_as_in_one(tiny_model_dir, tmp_path):
    """The distilled student's loss (chunked KD over cached top-k rows) under DDP: normalised by every
    process's target tokens and scaled back by the process count, it trains the student one process does."""
    from safetensors.torch import load_file

    args = ["compare", "--teacher", str(tiny_model_dir), "--student-layers", "1", "--set", "distill.generate={k: 2}",
            "--set", "distill.topk=5", "--set", "distill.train={learning_rate: 0.001}",
            "--set", "distill.select={selector: random}", *COMMON[4:]]
    assert main(["--debug", *args, "--run-dir", str(tmp_path / "one"), *ONE]) == 0
    out = launch([*args, "--run-dir", str(tmp_path / "two"), *TWO])
    assert out.returncode == 0, out.stderr[-3000:]
    start = load_file(tmp_path / "one" / "student" / "model" / "model.safetensors")
    for name in ("alone", "distilled"):
        a, b = (load_file(tmp_path / d / name / "model" / "model.safetensors") for d in ("one", "two"))
        moved = max((a[k] - start[k]).abs().max().item() for k in a)
        assert moved > 1e-4
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-3 * moved, rtol=0)


def test_blocks_cover_every_unit_once():
    for n in range(12):
        for size in range(1, 5):
            spans = [distributed.block(n, r, size) for r in range(size)]
            assert [i for a, b in spans for i in range(a, b)] == list(range(n))
            assert max(b - a for a, b in spans) - min(b - a for a, b in spans) <= 1


class Recorder:
    """A sampler that records which prompts each chunk sampled, with the seed it was given."""

    vocab_size = 10

    def __init__(self):
        self.seen = []

    def sample_chunk(self, items, *, k, seed, **kw):
        self.seen.append((seed, [it["id"] for it in items]))
        rows = [{"sample_id": f"{it['id']}#{j}", "prompt_id": it["id"], "completion_ids": [seed], "gen_seconds": 0.0}
                for it in items for j in range(k)]
        return rows, 0.0, []


def test_each_block_samples_its_chunks_with_their_one_process_seeds(tmp_path, monkeypatch):
    from depthtune.stages.generate import sample_shared

    items = [{"id": f"p{i}"} for i in range(7)]
    kw = {"k": 2, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 4, "batch_size": 1, "seed": 3,
          "progress": lambda *_: None}
    alone = Recorder()
    sample_shared(alone, items, tmp_path / "one" / "samples.partial.jsonl", **kw)
    monkeypatch.setattr(distributed, "barrier", lambda: None)
    monkeypatch.setattr(distributed, "_merge", lambda path, *a: artifacts.write_jsonl(path, []))
    together = Recorder()
    for rank in range(3):  # three processes, one after another: only the seeds are looked at
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        sample_shared(together, items, tmp_path / "three" / "samples.partial.jsonl", **kw)
    assert sorted(together.seen) == sorted(alone.seen) and len(alone.seen) == 4  # 7 prompts, 2 per chunk


def test_rows_of_another_world_size_are_adopted_and_merged(tmp_path, monkeypatch):
    """Half the prompts done by process 1 of 2, then one process: it samples only the other half."""
    items = [{"id": f"p{i}"} for i in range(8)]
    path = tmp_path / "samples.partial.jsonl"
    done = [{"sample_id": f"p{i}#0", "prompt_id": f"p{i}"} for i in range(4, 8)]
    artifacts.write_jsonl(distributed.rank_path(path, 1, 2), done)
    asked = []

    def work(part, p, first):
        asked.append(first)
        have = {r["prompt_id"] for r in artifacts.read_jsonl(p)}
        new = [{"sample_id": f"{u['id']}#0", "prompt_id": u["id"]} for u in part if u["id"] not in have]
        artifacts.append_jsonl(p, new)
        return artifacts.read_jsonl(p)

    rows = distributed.split_work(path, items, work, unit_key="id", row_key="prompt_id", per_chunk=2)
    assert sorted(r["sample_id"] for r in rows) == [f"p{i}#0" for i in range(8)] and asked == [0]
    assert not (tmp_path / "ranks").exists()


def test_training_checkpoints_of_another_world_size_are_refused(tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoints"
    (ckpt / "checkpoint-4").mkdir(parents=True)
    artifacts.write_json(ckpt / "world_size.json", {"world_size": 2})
    with pytest.raises(DepthtuneError, match="--num_processes 2"):
        distributed.check_resume(ckpt)
    monkeypatch.setenv("WORLD_SIZE", "2")
    distributed.check_resume(ckpt)  # the same world size resumes
    (ckpt / "checkpoint-4").rmdir()
    monkeypatch.setenv("WORLD_SIZE", "1")
    distributed.check_resume(ckpt)  # nothing to resume: a fresh start records its own size
    assert json.loads((ckpt / "world_size.json").read_text()) == {"world_size": 1}


def test_placements_that_cannot_work_are_refused(monkeypatch):
    distributed.check_placement(trains=False, device_map="auto", command="generate")  # one process, forward only
    with pytest.raises(DepthtuneError, match="accelerate launch"):
        distributed.check_placement(trains=True, device_map="auto", command="train")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DepthtuneError, match="device_map=null"):
        distributed.check_placement(trains=False, device_map="auto", command="generate")
    with pytest.raises(DepthtuneError, match="one process"):
        distributed.check_placement(trains=True, device_map=None, backend="openai", samples=True, command="run")
    distributed.check_placement(trains=True, device_map=None, backend="openai", command="train")  # no sampling


def test_sharded_training_configs_are_for_the_train_stage_only(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert distributed.sharded()
    distributed.check_placement(trains=True, device_map=None, command="train")
    with pytest.raises(DepthtuneError, match="depthtune train"):
        distributed.check_placement(trains=True, device_map=None, command="run")


def test_shipped_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {p.stem: load_config_from_file(str(p)).distributed_type.value
             for p in (ROOT / "examples" / "accelerate").glob("*.yaml")}
    assert kinds == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero3": "DEEPSPEED"}


def test_the_empty_folder_of_a_process_killed_before_its_first_row_is_removed(tmp_path):
    """One process finishing a run that two began: a rank that never wrote a row leaves an empty folder."""
    path = tmp_path / "generate" / "samples.partial.jsonl"
    (path.parent / "ranks" / "1-of-2").mkdir(parents=True)
    written = path.parent / "ranks" / "0-of-2" / path.name
    written.parent.mkdir(parents=True)
    written.write_text("{}\n")
    distributed._drop_rank_files(path)
    assert not (path.parent / "ranks").exists()
