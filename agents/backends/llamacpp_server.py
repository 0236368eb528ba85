"""A real llama.cpp OpenAI-compatible server (``python -m llama_cpp.server``) on a free
loopback port, started and stopped as a child process.

Tests use it through the ``llama_server`` fixture; benchmarks and outage tests use
``LlamaServer`` directly (``stop()``/``start()`` keep the same port).
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from agents.backends.llamacpp import bundled_model_path
from streams.broker import free_port

START_TIMEOUT_S = 120.0


class LlamaServer:
    """``start()`` / ``stop()`` can be called repeatedly; the port stays the same."""

    def __init__(self, port: int | None = None, model_path: str | None = None,
                 log_path: str | Path | None = None) -> None:
        self.port = port or free_port()
        self.model_path = model_path or bundled_model_path()
        self.log_path = Path(log_path or tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "llama_cpp.server", "--model", self.model_path,
            "--host", "127.0.0.1", "--port", str(self.port), "--chat_format", "gemma",
            "--n_threads", "1", "--n_threads_batch", "1",
        ]

    def start(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """Start the server and wait until ``GET /v1/models`` answers; the base URL."""
        if self.proc is not None and self.proc.poll() is None:
            return self.base_url
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(self.command(), stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self.base_url

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/v1/models", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"llama.cpp server not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"
