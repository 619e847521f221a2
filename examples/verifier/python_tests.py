"""A verifier for `--checker`: run a generated Python function against the asserts in the reference column.

    depthtune run --data examples/verifier/functions.jsonl --answer-field tests \
        --checker examples.verifier.python_tests:check --template chat

check(prompt, completion, reference) takes the code out of the completion (a ```python block, else from the
first `def`), appends the reference's asserts, and runs it in a fresh interpreter (`python -I`, in an empty
temporary folder, with no environment) with a wall-clock timeout, CPU, memory, file-size and process limits,
and no network: in a network namespace of its own where `unshare` may make one, else with socket calls
refused by an audit hook. It returns True when every assert holds.

What this can be trusted with: answers of a model you run yourself, on your own prompts. It is not a
sandbox for hostile code: the limits stop runaway loops, memory blow-ups and accidental network calls,
but the code still runs as your user and can read your files. Run untrusted code in a container or VM.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

TIMEOUT = 5.0  # seconds of wall time per answer
MEMORY = 512 * 2**20  # bytes of address space
GUARD = """import sys
def _no_network(event, args):
    if event.startswith(("socket.", "urllib.")):
        raise PermissionError("network access is off in this verifier")
sys.addaudithook(_no_network)
"""


def code_of(completion: str) -> str:
    """The program in a completion: its first ```python block, else everything from its first `def`."""
    fenced = re.search(r"```(?:python|py)?\s*\n(.*?)```", completion, re.DOTALL)
    if fenced:
        return fenced.group(1)
    start = completion.find("def ")
    return completion[start:] if start >= 0 else completion


def _limits():
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))
    resource.setrlimit(resource.RLIMIT_CPU, (int(TIMEOUT) + 1, int(TIMEOUT) + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))
    resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))
    os.setsid()


def _isolated() -> list[str]:
    """`unshare -rn` (a user and network namespace of its own) where this machine allows it."""
    tool = shutil.which("unshare")
    if tool and subprocess.run([tool, "-rn", "true"], capture_output=True).returncode == 0:
        return [tool, "-rn"]
    return []


def check(prompt: str, completion: str, reference: str | None) -> bool:
    if not reference:
        return False  # nothing to test the function against
    program = GUARD + code_of(completion) + "\n\n" + reference + "\n"
    with tempfile.TemporaryDirectory(prefix="depthtune-verify-") as folder:
        try:
            proc = subprocess.run(_isolated() + [sys.executable, "-I", "-c", program], cwd=folder, env={},
                                  capture_output=True, timeout=TIMEOUT, preexec_fn=_limits)
        except subprocess.TimeoutExpired:
            return False
    return proc.returncode == 0
