"""The CLI as the multi-process tests launch it (`accelerate launch tests/distributed_entry.py ARGS`).

With KILL_RANK and KILL_AFTER set, the process of that rank SIGKILLs itself when it starts sampling its
chunk number KILL_AFTER + 1 (KILL_AFTER of its chunks are on disk), as a crash would: the launcher then
ends the other processes too.
"""
import os
import signal
import sys

from depthtune.backends.local import LocalSampler
from depthtune.cli import main


def dying(sample_chunk, after: int):
    calls = [0]

    def wrapper(self, *args, **kwargs):
        if calls[0] == after:
            os.kill(os.getpid(), signal.SIGKILL)
        calls[0] += 1
        return sample_chunk(self, *args, **kwargs)

    return wrapper


if __name__ == "__main__":
    if os.environ.get("KILL_RANK") is not None and os.environ.get("KILL_RANK") == os.environ.get("RANK"):
        LocalSampler.sample_chunk = dying(LocalSampler.sample_chunk, int(os.environ["KILL_AFTER"]))
    sys.exit(main(sys.argv[1:]))
