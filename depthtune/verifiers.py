"""Your own verifier: `--checker module:function` judges every answer instead of the built-in checkers.

    def check(prompt: str, completion: str, reference: str | None) -> bool | float: ...

It is imported once, before any model loads (a module or function that is not there is a one-line error),
and called on every generated sample and every held-out answer. A bool is the verdict; a number is a
score in [0, 1], and the answer counts as correct at 0.5 or more (the score itself is kept as `check`).
What it returns decides correctness everywhere the built-in checkers would: the `correct` selector and
select.require_correct (so a verifier is a selector's eligibility test, with or without reference
answers in the data), accuracy before and after, and the reports. An exception, or a value that is not a
bool or a number in [0, 1], stops the stage with one line naming the sample; finished samples are kept,
so the run resumes once the verifier is fixed.

The module is found on sys.path, which includes the current directory (`--checker examples.verifier.python_tests:check`
from the repository's root). examples/verifier/ has a worked example that runs generated Python functions
against asserts in a subprocess with a timeout and memory limit.
"""
from __future__ import annotations

import importlib
import sys
from functools import lru_cache
from pathlib import Path

from .checking import is_correct
from .errors import DepthtuneError

BUILT_IN = ("auto", "numeric", "exact", "contains")


@lru_cache(maxsize=None)
def load_checker(spec: str | None):
    """The callable a `module:function` spec names (imported once), or None for a built-in checker."""
    if not spec or spec in BUILT_IN:
        return None
    module_name, _, fn_name = spec.partition(":")
    if not module_name or not fn_name:
        raise DepthtuneError(f"--checker {spec}: give your verifier as module:function (e.g. my_checks:check)")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise DepthtuneError(f"--checker {spec}: cannot import {module_name} ({e}); run from the folder that holds "
                             f"it or put it on PYTHONPATH") from None
    except Exception as e:  # the module itself failed while importing
        raise DepthtuneError(f"--checker {spec}: importing {module_name} raised {type(e).__name__}: {e}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise DepthtuneError(f"--checker {spec}: {module_name} has no function {fn_name}")
    return fn


def prompt_text(row: dict) -> str:
    if row.get("messages"):
        return "\n".join(str(m.get("content")) for m in row["messages"] if m.get("role") == "user")
    return row.get("prompt") or ""


def judge(row: dict, checker: str | None = None) -> tuple[bool | None, float | None]:
    """-> (correct, the verifier's score or None) of one answer. Without a verifier: the built-in checker
    the prompt carries (None when it has no reference answer)."""
    fn = load_checker(checker)
    if fn is None:
        if row.get("answer") is None:
            return None, None
        how = checker if checker in ("numeric", "exact", "contains") else row.get("checker") or "auto"
        return is_correct(row["completion"], row["answer"], how), None
    try:
        value = fn(prompt_text(row), row["completion"], row.get("answer"))
    except Exception as e:  # the user's code: one line, naming the sample
        raise DepthtuneError(f"--checker {checker} raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                             f" on sample {row.get('sample_id') or row.get('prompt_id')}; fix the verifier and run "
                             f"the same command again (finished samples are kept)") from None
    if isinstance(value, bool):
        return value, float(value)
    if isinstance(value, (int, float)) and 0 <= value <= 1:
        return value >= 0.5, float(value)
    raise DepthtuneError(f"--checker {checker} returned {value!r} on sample {row.get('sample_id') or row.get('prompt_id')}; "
                         f"it must return a bool or a score in [0, 1]")
