"""Several servers behind one run (--base-url given more than once), two real llama-server processes: one is
killed mid-run, its requests go to the other, and the samples equal a one-server run's; with every server
gone the run stops resumably."""
import signal
import threading
import time

import pytest
from backends.helpers_backends import suite_items

from depthtune.backends.llama_server import LlamaServer
from depthtune.backends.openai import OpenAISampler
from depthtune.config import BackendConfig
from depthtune.errors import DepthtuneError
from depthtune.models import embedded_gguf
from depthtune.stages.generate import sample_all

pytestmark = pytest.mark.slow
GEN = dict(k=2, temperature=0.8, top_p=0.95, max_new_tokens=24, batch_size=2, seed=5, system_prompt=None)


def one_slot() -> LlamaServer:
    """A server that answers one request at a time: its answers do not depend on what else it batches."""
    return LlamaServer(embedded_gguf(), log=lambda *_: None, parallel=1, ctx=2048)


def test_a_dead_replica_is_dropped_and_the_samples_equal_one_servers(tok, tmp_path):
    items = suite_items(12)
    with one_slot() as url:
        alone = OpenAISampler(BackendConfig(kind="openai", base_url=url, concurrency=1, timeout=300.0), tok,
                              log=lambda *_: None)
        want, _ = sample_all(alone, items, tmp_path / "one.partial.jsonl", **GEN)
        alone.close()
    a, b = one_slot(), one_slot()
    lines = []
    try:
        urls = [a.start(), b.start()]
        both = OpenAISampler(BackendConfig(kind="openai", base_url=urls, concurrency=2, timeout=300.0, retries=2),
                             tok, log=lines.append)
        partial = tmp_path / "two.partial.jsonl"

        def kill_b() -> None:  # once the first chunk is in, mid-run
            while not partial.exists():
                time.sleep(0.05)
            b.proc.send_signal(signal.SIGKILL)

        killer = threading.Thread(target=kill_b)
        killer.start()
        got, _ = sample_all(both, items, partial, **GEN)
        killer.join()
        assert any(f"lost the server at {urls[1]}; 1 of 2 left" in x for x in lines), lines
        assert [r["completion_ids"] for r in got] == [r["completion_ids"] for r in want]
        assert [r["sample_id"] for r in got] == [r["sample_id"] for r in want]

        a.proc.send_signal(signal.SIGKILL)  # and now none is left: one line, and the chunks done are kept
        with pytest.raises(DepthtuneError, match="lost every server .*run the same command again to resume"):
            sample_all(both, suite_items(24)[12:], tmp_path / "none.partial.jsonl", **GEN)
        both.close()
    finally:
        a.stop()
        b.stop()


def test_a_model_the_replicas_do_not_serve_is_refused(tok):
    with one_slot() as url:
        with pytest.raises(DepthtuneError, match="has no model 'other'"):
            OpenAISampler(BackendConfig(kind="openai", base_url=[url, url], model="other"), tok, log=lambda *_: None)
