"""Several processes under `accelerate launch` (or torchrun): who does which part of a stage, and how the
parts meet. One process (no launcher) is world size 1, and nothing here changes what it does.

    accelerate launch --num_processes 2 -m depthtune run --run-dir D

training    every process runs the HF Trainer, which wraps the model in DDP (FSDP or DeepSpeed when
            accelerate's config says so); only the main process saves.
sampling    generate.sample_all cuts the prompts into chunks; each process takes one contiguous block of
            them. Every sample's seed derives from (seed, prompt id, sample index), whoever samples it,
            so the samples are the ones one process makes.
scoring     the samples, cut into contiguous blocks the same way (one sample per unit).
files       each process appends to its own partial file, <stage>/ranks/<rank>-of-<world>/<name>
            (top-k shards in topk/ beside it), so a killed run resumes per process. After a barrier
            the main process merges them into <stage>/<name>, the file one process would have
            written (top-k shards renamed to their global chunk numbers), removes ranks/, and a
            second barrier lets the others read it. The run directory must be one file system
            that every process sees (on several machines: a shared disk).
resume      a row is valid whichever process made it (its chunk's seed is global), so a run killed
            under one world size resumes under another: before sampling, each process adopts the
            finished rows (and shards) of its block from every other layout.
writes      manifests, reports and models are written by the main process; the others wait at a
            barrier and read what it wrote (`others_read` / `main_wrote`).
"""
from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from . import artifacts

RANKS = "ranks"
_alone = False  # inside on_main: the main process works as if it were the only one


def world() -> tuple[int, int]:
    """(rank, world size) as the launcher set them; (0, 1) in a plain process and inside on_main."""
    if _alone:
        return 0, 1
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


@contextmanager
def alone():
    global _alone
    before, _alone = _alone, True
    try:
        yield
    finally:
        _alone = before


def is_main() -> bool:
    return world()[0] == 0


def barrier() -> None:
    """Wait for every process. The process group is made through accelerate's PartialState, as the
    Trainer makes it (gloo on CPU, NCCL on GPUs), so the Trainer later finds it ready."""
    if world()[1] == 1:
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        from datetime import timedelta

        from accelerate import PartialState

        # a process may wait here while main merges a big model or others finish a longer block:
        # hours, not the 30 min default (a crashed process ends all of them through the launcher)
        PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(hours=12))
    dist.barrier()


def on_main(fn: Callable):
    """fn() on the main process, then a barrier; -> its result there, None on the others. Inside fn the
    main process is alone (world size 1), so a stage it calls that splits work does it all itself."""
    out = None
    if is_main():
        with alone():
            out = fn()
    barrier()
    return out


def share(obj):
    """The main process's `obj` (picklable) on every process."""
    if world()[1] == 1:
        return obj
    import torch.distributed as dist

    barrier()  # makes the process group if need be
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def others_read(stage_dir: Path, stage: str) -> dict:
    """For the processes that are not main: wait until main has written the stage, read its manifest."""
    barrier()
    return artifacts.read_manifest(stage_dir, stage)


def main_wrote(result):
    """For the main process, after writing: release the ones waiting in others_read."""
    barrier()
    return result


def sharded() -> bool:
    """FSDP or DeepSpeed from accelerate's config: no process holds the whole trained model, the
    Trainer gathers it to save, and the model is loaded on CPU for them to shard."""
    return any(os.environ.get(f"ACCELERATE_USE_{x}", "false").lower() == "true" for x in ("FSDP", "DEEPSPEED"))


def block(n: int, rank: int, size: int) -> tuple[int, int]:
    """[start, stop) of `rank`'s share of n units: contiguous, sizes differing by at most one."""
    return n * rank // size, n * (rank + 1) // size


def rank_path(path: Path, rank: int, size: int) -> Path:
    """Where process `rank` of `size` keeps the partial file `path`: path itself when alone."""
    return path if size == 1 else path.parent / RANKS / f"{rank}-of-{size}" / path.name


def _layouts(path: Path) -> list[tuple[Path, int, int]]:
    """Every (partial file, rank, world size) of `path` on disk, the one-process file as (path, 0, 1)."""
    found = [(path, 0, 1)] if path.exists() else []
    for f in sorted((path.parent / RANKS).glob(f"*-of-*/{path.name}")):
        m = re.fullmatch(r"(\d+)-of-(\d+)", f.parent.name)
        if m:
            found.append((f, int(m[1]), int(m[2])))
    return found


def _adopt(path: Path, mine: Path, n_chunks: int, span: tuple[int, int], wanted: set, row_key: str,
           shards: bool) -> None:
    """Append to `mine` the finished rows of this block found in other layouts; copy their top-k shards
    under this block's chunk numbers. Rows already in `mine` are kept (a row is the same wherever made)."""
    _, size = world()
    # this world size's other blocks are disjoint from this one and being written: not sources
    sources = [(f, rank, n) for f, rank, n in _layouts(path) if f != mine and not (n == size and n > 1)]
    if not sources:  # the common case: nothing but this process's own file
        return
    have = {r["sample_id"] for r in artifacts.repair_partial(mine)} if mine.exists() else set()
    new = []
    for f, rank, n in sources:
        new += [r for r in artifacts.read_jsonl(f, tolerate_torn_tail=True)
                if r[row_key] in wanted and r["sample_id"] not in have]
        have |= {r["sample_id"] for r in new}
        if shards:
            first = block(n_chunks, rank, n)[0]
            for shard in sorted((f.parent / "topk").glob("chunk-*.safetensors")):
                c = first + int(shard.stem.split("-")[1])  # the shard's chunk among all prompts
                dest = mine.parent / "topk" / f"chunk-{c - span[0]:05d}.safetensors"
                if span[0] <= c < span[1] and not dest.exists():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(shard, dest)
    if new:
        artifacts.append_jsonl(mine, new)


def _merge(path: Path, n_chunks: int, shards: bool) -> None:
    """Main process, every block done: all rows into `path` (the one-process layout), shards renamed to
    their global chunk numbers, then ranks/ removed."""
    _, size = world()
    rows, seen = [], set()
    for f, rank, n in [(path, 0, 1)] + [x for x in _layouts(path) if x[2] == size]:
        if not f.exists():
            continue
        for r in artifacts.read_jsonl(f, tolerate_torn_tail=True):
            if r["sample_id"] not in seen:
                seen.add(r["sample_id"])
                rows.append(r)
        if shards and n == size:
            first = block(n_chunks, rank, n)[0]
            for shard in sorted((f.parent / "topk").glob("chunk-*.safetensors")):
                dest = path.parent / "topk" / f"chunk-{first + int(shard.stem.split('-')[1]):05d}.safetensors"
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(shard, dest)
    artifacts.write_jsonl(path, rows)
    _drop_rank_files(path)


def _drop_rank_files(path: Path) -> None:
    """Remove every process's copy of `path` (and its shards); ranks/ goes once empty."""
    for f, _, n in _layouts(path):
        if n > 1:
            f.unlink(missing_ok=True)
            shutil.rmtree(f.parent / "topk", ignore_errors=True)
    ranks = path.parent / RANKS
    if ranks.is_dir():  # emptied folders, and that of a process killed before its first row
        for d in ranks.iterdir():
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        if not any(ranks.iterdir()):
            ranks.rmdir()


def split_work(path: Path, units: list[dict], work: Callable[[list[dict], Path, int], list[dict]], *,
               unit_key: str, row_key: str, per_chunk: int = 1, shards: bool = False) -> list[dict]:
    """Run `work(my units, my partial file, my first chunk)` on this process's block of `units`; -> every
    process's rows, on every process (in one process: work's own result, unchanged).

    units are cut into chunks of per_chunk (generate's seeded chunks; 1 for scoring) and the chunks into
    one block per process. A unit's `unit_key` matches its rows' `row_key` (a prompt's id and its samples'
    prompt_id): that is how rows made under another world size are found for adoption.
    """
    rank, size = world()
    n_chunks = -(-len(units) // per_chunk)
    span = block(n_chunks, rank, size)
    mine = units[span[0] * per_chunk:span[1] * per_chunk]
    my_path = rank_path(path, rank, size)
    my_path.parent.mkdir(parents=True, exist_ok=True)
    _adopt(path, my_path, n_chunks, span, {u[unit_key] for u in mine}, row_key, shards)
    rows = work(mine, my_path, span[0])
    if size == 1:
        _drop_rank_files(path)
        return rows
    barrier()
    if rank == 0:
        _merge(path, n_chunks, shards)
    barrier()
    return artifacts.read_jsonl(path)


def check_resume(ckpt_dir: Path) -> None:
    """Training checkpoints resume only under the world size that wrote them: the Trainer would skip
    the steps done as batches of another global size (per-device batch x processes), so the rest of
    the run would see other examples than an uninterrupted one. Refused in one line instead."""
    from .errors import DepthtuneError

    path, size = Path(ckpt_dir) / "world_size.json", world()[1]
    if path.exists() and any(Path(ckpt_dir).glob("checkpoint-*")):
        before = artifacts.read_json(path)["world_size"]
        if before != size:
            raise DepthtuneError(f"{ckpt_dir} holds checkpoints of a {before}-process run, resumed with {size}: "
                                 f"resume with `accelerate launch --num_processes {before} ...`, or delete "
                                 f"{ckpt_dir} to train from the start")
    if is_main():
        artifacts.write_json(path, {"world_size": size})


def check_placement(*, trains: bool, device_map: str | None, backend: str = "local", samples: bool = False,
                    command: str = "this command") -> None:
    """Refuse, in one line and before anything is loaded or written, the placements that cannot work.

    device_map=auto puts one model's layers on several devices for a single process: the forward-only
    stages can use it, training cannot (it needs every process to hold its share: FSDP or ZeRO-3), and
    under `accelerate launch` each process would spread its copy over every GPU. A sampling server
    (backend openai, llama-server) batches on its own: one process drives it. `trains`, `samples`: whether
    the command trains a model and samples answers; `command` names it in the messages.
    """
    from .errors import DepthtuneError

    size = world()[1]
    if device_map == "auto" and size > 1:
        raise DepthtuneError(f"model.device_map=auto under {size} processes would spread every process's copy "
                             f"over all GPUs; drop it (--set model.device_map=null --set model.max_memory=null): "
                             f"accelerate's FSDP or ZeRO-3 config shards the model instead")
    if device_map == "auto" and trains:
        raise DepthtuneError(f"model.device_map=auto is for the forward-only stages (generate, score, evaluate, "
                             f"merge); `{command}` trains, which needs accelerate: `accelerate launch --config_file "
                             f"examples/accelerate/fsdp.yaml -m depthtune train --run-dir D --set model.device_map=null "
                             f"--set model.max_memory=null`")
    if sharded() and not (trains and command == "train"):
        raise DepthtuneError(f"accelerate's FSDP / DeepSpeed configs are for `depthtune train`; run `{command}` in "
                             f"one process, or under a plain `accelerate launch --num_processes N` (DDP)")
    if size > 1 and backend != "local" and samples:
        raise DepthtuneError(f"backend {backend} serves the samples itself; run `{command}` in one process (without "
                             f"accelerate launch), or sample in-process with --backend local")
