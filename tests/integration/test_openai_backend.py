"""The openai backend against a real llama.cpp server (which ignores ``n``)."""
from __future__ import annotations

import asyncio

import pytest

from agents.backends import BackendError, GenRequest
from agents.backends.openai import OpenAIGenerator
from schemas import Message
from streams.settings import Settings
from tests.fixtures_llama import llama_server  # noqa: F401

pytestmark = pytest.mark.model

SETTINGS = Settings(request_timeout_s=60.0, retries=2, backoff_s=0.05)


def run(base_url: str, req: GenRequest, model: str = "gemma-3-270m"):
    async def go():
        gen = OpenAIGenerator(SETTINGS, model=model, base_url=base_url)
        try:
            return await gen.generate(req)
        finally:
            await gen.close()

    return asyncio.run(go())


def test_chat_request(llama_server):
    req = GenRequest(messages=[Message(role="user", content="Name a colour.")],
                     max_tokens=12, seed=1)
    [g] = run(llama_server + "/v1", req)  # base URL given with /v1
    assert g.text.strip()
    assert g.tokens_in > 0 and 0 < g.tokens_out <= 12
    assert g.finish_reason in ("stop", "length")
    assert g.latency_s > 0 and g.seed == 1


def test_completion_request(llama_server):
    req = GenRequest(prompt="Question: What is 2 + 3?\nAnswer:", max_tokens=12, seed=3)
    [g] = run(llama_server + "/", req)
    assert g.text.strip()
    assert g.tokens_in > 0 and 0 < g.tokens_out <= 12


def test_n_is_honoured_when_the_server_ignores_it(llama_server):
    req = GenRequest(prompt="Question: Name a fruit.\nAnswer:", n=3, max_tokens=8, seed=10)
    gens = run(llama_server, req)
    assert len(gens) == 3
    assert [g.seed for g in gens] == [10, 11, 12]
    assert all(g.tokens_out > 0 for g in gens)


def test_unknown_endpoint_is_not_retryable(llama_server):
    req = GenRequest(prompt="hi", max_tokens=4)
    with pytest.raises(BackendError) as info:
        run(llama_server + "/no/such/prefix", req)
    assert info.value.retryable is False and info.value.status == 404


def test_bad_request_is_not_retryable(llama_server):
    # llama.cpp's server answers 400 (context_length_exceeded) for a prompt longer than its
    # context; note it answers 500, not 4xx, for a request that fails pydantic validation
    req = GenRequest(prompt="word " * 3000, max_tokens=4)
    with pytest.raises(BackendError) as info:
        run(llama_server, req)
    assert info.value.retryable is False and info.value.status == 400
    assert "context" in str(info.value)  # carries the server's error text
