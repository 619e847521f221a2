"""`depthtune` with a served model, through cli.main: end to end, resume after the server dies, the API
key never written, and each bad input's one line with exit 2. Every server here is a real llama.cpp
server, except the one that returns no log-probs (llama.cpp always returns them when asked)."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from depthtune import artifacts
from depthtune.backends.llama_server import LlamaServer, free_port
from depthtune.backends.openai import OpenAISampler
from depthtune.cli import main
from depthtune.models import embedded_gguf

pytestmark = pytest.mark.slow  # a real server, several processes or the embedded model

LENIENT = ["--set", "select.require_correct=false", "--set", "select.min_kept=0",  # keep what 12 tokens give
           "--set", "select.exclude_degenerate=false"]
QUIET = {"log": lambda *_: None}
SMALL = ["--max-train-prompts", "4", "--max-eval-prompts", "2", "--k", "2", "--set", "generate.max_new_tokens=12",
         "--set", "backend.retries=0"]


def generate(run_dir, *extra) -> int:
    return main(["generate", "--run-dir", str(run_dir), *SMALL, *extra])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("depthtune: error: ") and "\n" not in err, err
    return err


def llama_server_children() -> set[int]:
    """Pids of llama-server processes this test process started and has not reaped."""
    import os
    from pathlib import Path

    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == os.getpid() and "llama-server" in (stat.parent / "cmdline").read_text():
                out.add(int(stat.parent.name))
        except (OSError, IndexError):
            pass
    return out


def test_run_end_to_end_on_a_served_model(server, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["run", "--run-dir", str(run_dir), "--backend", "openai", "--base-url", server.url, *SMALL,
            "--threshold", "0", "--epochs", "1", "--set", "evaluate.max_new_tokens=8",
            *LENIENT]
    assert main(args) == 0
    m = artifacts.read_manifest(run_dir / "generate", "generate")
    assert m["backend"] == "openai" and m["served_model"] == embedded_gguf().stem and m["samples"] == 8
    assert m["unmapped_tokens"] == {"sampled": 0, "alternatives": 0, "examples": []}
    scored = artifacts.read_jsonl(run_dir / "score" / "scored.jsonl")
    assert len(scored) == 8 and all(s["completion_ids"] for s in scored)
    assert json.loads((run_dir / "metrics.json").read_text())["selection"]["total"] == 8
    assert "Accuracy" in capsys.readouterr().out


def test_run_with_a_managed_llama_server(tmp_path, capsys):
    before = llama_server_children()
    run_dir = tmp_path / "run"
    args = ["run", "--run-dir", str(run_dir), "--backend", "llama-server", *SMALL, "--threshold", "0",
            "--epochs", "1", "--set", "evaluate.max_new_tokens=8", *LENIENT]
    assert main(args) == 0
    assert artifacts.read_manifest(run_dir / "generate", "generate")["backend"] == "llama-server"
    assert len(artifacts.read_jsonl(run_dir / "generate" / "samples.jsonl")) == 8
    assert llama_server_children() == before  # the managed server was stopped and reaped
    assert "llama-server on " in capsys.readouterr().out


def test_llama_server_samples_the_embedded_model(tmp_path):
    assert generate(tmp_path / "run", "--backend", "llama-server") == 0
    assert artifacts.read_manifest(tmp_path / "run" / "generate", "generate")["backend"] == "llama-server"
    assert "kind: llama-server" in (tmp_path / "run" / "config.yaml").read_text()


def test_resume_after_the_server_dies_midway(tmp_path, monkeypatch, capsys):
    """The server is killed between chunks: the run stops with one line, a rerun against a new server
    finishes it, and the result equals an uninterrupted run's: nothing lost, nothing twice."""
    extra = ["--max-train-prompts", "6", "--set", "generate.batch_size=1"]  # chunks of 4 x 1 sequences: 3 of 2 prompts
    first = LlamaServer(embedded_gguf(), parallel=4, **QUIET)
    url = first.start()
    real, chunks = OpenAISampler.sample_chunk, []

    def dies_after_two_chunks(self, *a, **kw):
        if len(chunks) == 2:
            first.stop()
        chunks.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(OpenAISampler, "sample_chunk", dies_after_two_chunks)
    run_dir = tmp_path / "run"
    assert generate(run_dir, "--backend", "openai", "--base-url", url, *extra) == 2
    assert "run the same command again to resume" in one_line_error(capsys)
    kept = artifacts.read_jsonl(run_dir / "generate" / "samples.partial.jsonl")
    assert len(kept) == 8
    monkeypatch.undo()
    with LlamaServer(embedded_gguf(), parallel=4, **QUIET) as url2:
        assert generate(run_dir, "--backend", "openai", "--base-url", url2, *extra) == 0
        assert generate(tmp_path / "whole", "--backend", "openai", "--base-url", url2, *extra) == 0
    rows = artifacts.read_jsonl(run_dir / "generate" / "samples.jsonl")
    whole = artifacts.read_jsonl(tmp_path / "whole" / "generate" / "samples.jsonl")
    ids = [r["sample_id"] for r in rows]
    assert len(ids) == 12 and len(set(ids)) == 12 and ids == [r["sample_id"] for r in whole]
    assert [r["completion_ids"] for r in rows[:8]] == [r["completion_ids"] for r in kept]
    assert [r["completion_ids"] for r in rows] == [r["completion_ids"] for r in whole]


def test_the_api_key_never_reaches_the_run_dir(tmp_path, monkeypatch, capsys):
    secret = "sk-depthtune-test-3f9a2c71"
    with LlamaServer(embedded_gguf(), parallel=2, extra_args=["--api-key", secret], **QUIET) as url:
        key = ["--backend", "openai", "--base-url", url, "--api-key-env", "DEPTHTUNE_TEST_KEY"]
        monkeypatch.delenv("DEPTHTUNE_TEST_KEY", raising=False)
        assert generate(tmp_path / "a", *key) == 2
        assert "environment variable DEPTHTUNE_TEST_KEY is not set" in one_line_error(capsys)
        monkeypatch.setenv("DEPTHTUNE_TEST_KEY", "wrong")
        assert generate(tmp_path / "b", *key) == 2
        assert "refused the API key (HTTP 401)" in one_line_error(capsys)
        monkeypatch.setenv("DEPTHTUNE_TEST_KEY", secret)
        assert generate(tmp_path / "run", *key) == 0
    out = capsys.readouterr()
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert files and not any(secret.encode() in p.read_bytes() for p in files)
    assert secret not in out.out + out.err
    assert "DEPTHTUNE_TEST_KEY" in (tmp_path / "run" / "config.yaml").read_text()


def test_an_unreachable_url_is_one_line(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"
    assert generate(tmp_path / "run", "--backend", "openai", "--base-url", url) == 2
    assert f"cannot reach the server at {url}" in one_line_error(capsys)


def test_an_unknown_model_lists_the_servers_models(server, tmp_path, capsys):
    assert generate(tmp_path / "run", "--backend", "openai", "--base-url", server.url, "--served-model", "gpt-9") == 2
    err = one_line_error(capsys)
    assert "has no model 'gpt-9'" in err and embedded_gguf().stem in err


def test_a_topk_deeper_than_the_server_gives_names_its_maximum(server, tmp_path, capsys):
    """llama.cpp gives as many alternatives as the vocabulary has (49,152 here), no more."""
    assert generate(tmp_path / "run", "--backend", "openai", "--base-url", server.url,
                    "--set", "generate.topk=50000") == 2
    assert "gives at most 49152 top log-probs per token" in one_line_error(capsys)


class NoLogprobs(BaseHTTPRequestHandler):
    """OpenAI-shaped answers without log-probs: the one case llama.cpp cannot be made to produce."""

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send({"object": "list", "data": [{"id": "plain", "object": "model", "owned_by": "test"}]})

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self._send({"id": "1", "object": "text_completion", "created": 0, "model": "plain",
                    "choices": [{"index": 0, "text": " 5", "finish_reason": "stop", "logprobs": None}]})

    def log_message(self, *a):
        pass


def test_a_server_without_logprobs_is_refused_for_topk(tmp_path, capsys):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), NoLogprobs)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        assert generate(tmp_path / "run", "--backend", "openai", "--base-url", url, "--set", "generate.topk=5") == 2
        assert "returned no log-probs" in one_line_error(capsys)
        assert generate(tmp_path / "plain", "--backend", "openai", "--base-url", url) == 0  # no top-k: fine
        rows = artifacts.read_jsonl(tmp_path / "plain" / "generate" / "samples.jsonl")
        assert rows and all(r["logprobs"] is None and r["completion"] == " 5" for r in rows)
    finally:
        httpd.shutdown()
