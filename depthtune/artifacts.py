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


def repair_partial(path: Path, key: str = "sample_id") -> list[dict]:
    """Load a partial JSONL, drop a torn last line and rows whose `key` repeats an earlier one (two processes
    that once wrote the same chunk), rewrite it clean; [] if missing."""
    path = Path(path)
    if not path.exists():
        return []
    rows, seen = [], set()
    for r in read_jsonl(path, tolerate_torn_tail=True):
        if r.get(key) not in seen:
            seen.add(r.get(key))
            rows.append(r)
    write_jsonl(path, rows)
    return rows


class Busy(DepthtuneError):
    """Another process holds the directory's lock."""


class DirLock:
    """An exclusive lock on a run (or sweep, ablation, cell) directory for as long as a command works in it.

    fcntl.flock on <dir>/.lock, which the kernel releases when the holder dies however it dies, so a lock
    left by a killed process is simply taken over (and said so); the holder's PID is written in the file
    for the message a second process gets. A directory this lock made and nothing else wrote in is
    removed again on release, so a command refused before any work leaves nothing behind.
    """

    def __init__(self, folder: Path, log=print, what: str = "run directory"):
        self.folder, self.log, self.what = Path(folder), log, what
        self.path = self.folder / ".lock"
        self.handle = None
        self.made = False

    def __enter__(self):
        import fcntl

        if self.folder.exists() and not self.folder.is_dir():
            raise DepthtuneError(f"{self.what} {self.folder} is a file, not a directory; give a directory path")
        self.made = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.path, "a+")
        except OSError as e:
            self._cleanup()
            raise DepthtuneError(f"cannot write in {self.what} {self.folder} ({e.strerror}); give a "
                                 f"directory you can write to") from None
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "unknown"
            self.handle.close()
            raise Busy(f"{self.what} {self.folder} is in use by another depthtune process (PID {holder}); wait "
                       f"for it to finish or stop it, or use another directory") from None
        self.handle.seek(0)
        before = self.handle.read().strip()
        if before and before != str(os.getpid()):
            self.log(f"note: {self.folder} was left locked by PID {before}, which is no longer running; taking over")
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()
        return self

    def _cleanup(self) -> None:
        if self.made and self.folder.is_dir() and {p.name for p in self.folder.iterdir()} <= {".lock"}:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.seek(0)
            self.handle.truncate()  # released cleanly: no holder to name
            self.handle.close()  # closing releases the flock
            self.handle = None
        self._cleanup()
        return False


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
