"""The ``llama_server`` fixture: a real llama.cpp OpenAI-compatible server with the bundled
Gemma 3 270M for the session (see ``agents.backends.llamacpp_server``)."""
from __future__ import annotations

import pytest

from agents.backends.llamacpp_server import LlamaServer, free_port  # noqa: F401  (re-exported)


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory):
    server = LlamaServer(log_path=tmp_path_factory.mktemp("llama") / "server.log")
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server.base_url
    finally:
        server.stop()
