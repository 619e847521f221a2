"""Run-directory files: atomic writes, JSONL, manifests.

A stage is finished when its manifest.json exists; the manifest is written last and
atomically, so a killed stage is never taken for a finished one.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import DepthtuneError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success move it over `path` (file or directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: Path, tolerate_torn_tail: bool = False) -> list[dict]:
    """Read JSONL; name the bad line on a parse error.

    With tolerate_torn_tail, an unparsable *last* line (a write cut off by a kill) is dropped.
    """
    rows = []
    lines = Path(path).read_text().splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if tolerate_torn_tail and i == len(lines):
                break
            raise DepthtuneError(f"{path}: line {i} is not valid JSON ({e.msg}); fix or remove that line") from None
    return rows


def append_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Append rows and fsync, so a finished chunk survives a kill."""
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def repair_partial(path: Path) -> list[dict]:
    """Load a partial JSONL, drop a torn last line, rewrite it clean; [] if missing."""
    path = Path(path)
    if not path.exists():
        return []
    rows = read_jsonl(path, tolerate_torn_tail=True)
    write_jsonl(path, rows)
    return rows


def manifest_path(stage_dir: Path) -> Path:
    return Path(stage_dir) / "manifest.json"


def is_done(stage_dir: Path) -> bool:
    return manifest_path(stage_dir).exists()


def write_manifest(stage_dir: Path, stage: str, config: dict, **facts: Any) -> dict:
    import torch
    import transformers

    manifest = {
        "stage": stage,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": config,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        **facts,
    }
    write_json(manifest_path(stage_dir), manifest)
    return manifest


def read_manifest(stage_dir: Path, stage: str) -> dict:
    path = manifest_path(stage_dir)
    if not path.exists():
        raise DepthtuneError(f"stage '{stage}' has not finished in {Path(stage_dir).parent}; "
                             f"run `depthtune {stage}` first")
    return read_json(path)
