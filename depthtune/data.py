"""Prompt sets: the built-in suites or a user's JSONL, CSV, Parquet or saved HF dataset.

Every prompt becomes {id, prompt | messages, answer (or None), checker, suite, category, level}.
Chat rows (`messages`) use every message before the last assistant turn as the prompt and
that turn as the reference answer.
"""
from __future__ import annotations

import random
from pathlib import Path

from .artifacts import read_jsonl
from .checking import pick_checker
from .config import DataConfig
from .errors import DepthtuneError
from .suites import load_suites


def _read_rows(path: str) -> list[dict]:
    p = Path(path)
    if not p.exists():
        raise DepthtuneError(f"data path {p} does not exist")
    if p.is_dir():
        try:
            from datasets import load_from_disk

            ds = load_from_disk(str(p))
        except Exception as e:  # datasets raises several types for a bad folder
            raise DepthtuneError(f"{p} is not a dataset saved by datasets.save_to_disk ({type(e).__name__})") from None
        if hasattr(ds, "keys"):  # DatasetDict: prefer train
            ds = ds["train"] if "train" in ds else ds[next(iter(ds.keys()))]
        return ds.to_list()
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json", ".csv"):
        _check_utf8(p)  # pyarrow would read bad bytes of a CSV as binary values, the JSON reader fail deep inside
    if suffix in (".jsonl", ".json"):
        return read_jsonl(p)
    try:
        if suffix == ".csv":
            import pyarrow.csv as pacsv

            return pacsv.read_csv(p).to_pylist()
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return pq.read_table(p).to_pylist()
    except Exception as e:  # pyarrow's errors name the problem in their first line
        raise DepthtuneError(f"could not read {p}: {str(e).splitlines()[0]}") from None
    raise DepthtuneError(f"{p}: unknown data format '{suffix}'; use .jsonl, .csv, .parquet or a saved dataset folder")


def _check_utf8(p: Path) -> None:
    """A file in another encoding (latin-1, UTF-16) is refused with where the first bad byte is and the fix."""
    data = p.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DepthtuneError(f"{p} is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); convert it, e.g. "
                             f"`iconv -f latin1 -t utf-8 {p} > {p.with_suffix('.utf8' + p.suffix).name}`") from None


def _blank(item: dict) -> bool:
    """No prompt to answer: an empty or null prompt, or chat rows whose last message has no text."""
    if "messages" in item:
        content = item["messages"][-1].get("content") if item["messages"] else None
        return not isinstance(content, str) or not content.strip()
    return not item["prompt"].strip()


def _rows_named(numbers: list[int], most: int = 5) -> str:
    shown = ", ".join(map(str, numbers[:most]))
    return f"row {shown}" if len(numbers) == 1 else f"rows {shown}" + (", ..." if len(numbers) > most else "")


def _to_prompt(row: dict, i: int, cfg: DataConfig, source: str, prefix: str = "row") -> dict:
    if "messages" in row and cfg.prompt_field not in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) and "role" in m for m in msgs):
            raise DepthtuneError(f"{source}: row {i + 1} has a 'messages' field that is not a list of {{role, content}}")
        answer = None
        if msgs[-1]["role"] == "assistant":
            answer, msgs = msgs[-1]["content"], msgs[:-1]
        item = {"messages": [{"role": m["role"], "content": m.get("content")} for m in msgs]}
    else:
        if cfg.prompt_field not in row:
            raise DepthtuneError(f"{source}: row {i + 1} has no column '{cfg.prompt_field}' (columns: "
                                 f"{', '.join(map(str, row))}); name the prompt column with --prompt-field")
        answer = row.get(cfg.answer_field) if cfg.answer_field else None
        value = row[cfg.prompt_field]
        item = {"prompt": "" if value is None else str(value)}  # None must not become the prompt "None"
    answer = None if answer is None or str(answer).strip() == "" else str(answer).strip()
    checker = pick_checker(answer, cfg.checker) if answer is not None else None
    return {"id": str(row.get("id", f"{prefix}-{i:05d}")), **item, "answer": answer, "checker": checker,
            "suite": str(row.get("suite", "user")), "category": row.get("category"), "level": row.get("level")}


def load_prompt_file(path: str, cfg: DataConfig, prefix: str = "row") -> list[dict]:
    """Rows without an 'id' are named `prefix`-NNNNN (a held-out file's as held-NNNNN, apart from the training file's)."""
    rows = _read_rows(path)
    if not rows:
        raise DepthtuneError(f"{path} holds no prompts; give a file with at least one row")
    prompts = [_to_prompt(r, i, cfg, path, prefix) for i, r in enumerate(rows)]
    blank = [i + 1 for i, p in enumerate(prompts) if _blank(p)]
    if blank:
        raise DepthtuneError(f"{path}: {len(blank)} of {len(rows)} rows have an empty or null prompt "
                             f"({_rows_named(blank)}); fill them in or remove them")
    if cfg.answer_field and cfg.answer_field != "answer" and all(p["answer"] is None for p in prompts):
        raise DepthtuneError(f"{path}: no row has the answer column '{cfg.answer_field}' "
                             f"(columns: {', '.join(map(str, rows[0]))})")
    return prompts


def load_prompts(cfg: DataConfig) -> tuple[list[dict], list[dict]]:
    """-> (train, held_out) prompt lists, capped by max_train_prompts / max_eval_prompts."""
    if cfg.path is None:
        train, held = load_suites(cfg.suites, cfg.suite_size)
    else:
        train = load_prompt_file(cfg.path, cfg)
        if cfg.eval_path:
            held = load_prompt_file(cfg.eval_path, cfg, prefix="held")
        else:
            order = list(range(len(train)))
            random.Random(cfg.seed).shuffle(order)
            n_held = max(1, round(len(train) * cfg.eval_fraction)) if len(train) > 1 else 0
            held_idx = set(order[:n_held])
            held = [p for i, p in enumerate(train) if i in held_idx]
            train = [p for i, p in enumerate(train) if i not in held_idx]
    train = _cap(train, cfg.max_train_prompts)
    held = _cap(held, cfg.max_eval_prompts)
    if not train:
        raise DepthtuneError("the prompt set is empty: no training prompts; give a file with prompts")
    if not held:
        raise DepthtuneError("no held-out prompts to evaluate on; give more rows or --set data.eval_path=FILE")
    ids = [p["id"] for p in train + held]
    if len(set(ids)) != len(ids):
        raise DepthtuneError("prompt ids repeat; give every row a unique 'id' or leave the column out")
    return train, held


def _cap(items: list[dict], n: int | None) -> list[dict]:
    """Keep at most n items, spread over suites and levels (round-robin by suite) so a cap stays balanced."""
    if n is None or n >= len(items):
        return items
    by_suite: dict[str, list[dict]] = {}
    for it in items:
        by_suite.setdefault(it["suite"], []).append(it)
    out, queues = [], list(by_suite.values())
    while len(out) < n:
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out
