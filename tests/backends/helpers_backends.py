"""Helpers the backend tests share (fixtures live in conftest.py)."""
from __future__ import annotations

from depthtune.config import BackendConfig


def backend(url: str, **kw) -> BackendConfig:
    return BackendConfig(kind="openai", base_url=url, **{"concurrency": 4, "retries": 2, "timeout": 300.0, **kw})


def suite_items(n: int) -> list[dict]:
    """n built-in training prompts spread over the three suites."""
    from depthtune.suites import load_suites

    train, _ = load_suites(["arithmetic", "word_problems", "facts"])
    return train[::max(1, len(train) // n)][:n]
