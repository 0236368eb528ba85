"""Backends: the openai client's retries against a real tiny HTTP server, the registry, and
the embedded llama.cpp backend with the bundled model."""
from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
from aiohttp import web

from agents.backends import Backends, BackendError, GenRequest
from agents.backends.llamacpp import fold_system
from agents.backends.openai import OpenAIGenerator, normalise_base_url
from schemas import GeneratorSpec, JudgeSpec, Message
from streams.runtime import Blocked
from streams.settings import Settings
from tests.fixtures_llama import free_port

FAST = Settings(retries=3, backoff_s=0.01, request_timeout_s=5.0)
PROMPT = GenRequest(prompt="Question: 2+2?\nAnswer:", max_tokens=4)


def completion(text: str = " 4", choices: int = 1) -> dict:
    return {
        "choices": [{"index": i, "text": text, "finish_reason": "stop"} for i in range(choices)],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2 * choices},
    }


@contextlib.asynccontextmanager
async def serve(handler):
    """A real HTTP server on a free loopback port answering both OpenAI endpoints."""
    app = web.Application()
    app.router.add_post("/v1/completions", handler)
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


async def generate(handler, req=PROMPT, settings=FAST, api_key=None):
    async with serve(handler) as url:
        gen = OpenAIGenerator(settings, model="m", base_url=url, api_key=api_key)
        try:
            return await gen.generate(req)
        finally:
            await gen.close()


def test_500_twice_then_success_is_retried():
    calls = []

    async def handler(request):
        calls.append(await request.json())
        if len(calls) <= 2:
            return web.json_response({"error": "boom"}, status=500)
        return web.json_response(completion())

    [g] = asyncio.run(generate(handler))
    assert len(calls) == 3
    assert g.text == " 4" and g.tokens_in == 7 and g.tokens_out == 2 and g.finish_reason == "stop"


def test_a_server_refusing_the_json_schema_form_gets_llama_cpps_form_once_and_from_then_on():
    """llama-cpp-python's server answers `response_format: json_schema` with a 500 (it takes
    `json_object` with a `schema`); vLLM and OpenAI take `json_schema`."""
    formats = []
    schema = {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}

    async def handler(request):
        fmt = (await request.json())["response_format"]
        formats.append(fmt["type"])
        if fmt["type"] != "json_object" or fmt.get("schema") != schema:
            return web.json_response({"error": {"message": "body.response_format.type: Input should be "
                                                           "'text' or 'json_object'"}}, status=500)
        return web.json_response(completion('{"score": 7}'))

    async def go():
        async with serve(handler) as url:
            gen = OpenAIGenerator(FAST, model="m", base_url=url)
            req = GenRequest(prompt="Rate it:", max_tokens=8, json_schema=schema)
            try:
                first, second = await gen.generate(req), await gen.generate(req)
            finally:
                await gen.close()
            return first, second

    first, second = asyncio.run(go())
    assert first[0].text == second[0].text == '{"score": 7}'
    assert formats == ["json_schema", "json_object", "json_object"]  # one refusal, then remembered


def test_always_503_gives_a_retryable_error_after_all_attempts():
    calls = []

    async def handler(request):
        calls.append(1)
        return web.Response(status=503, text="overloaded")

    settings = FAST.replace(retries=4)
    with pytest.raises(BackendError) as info:
        asyncio.run(generate(handler, settings=settings))
    assert info.value.retryable is True
    assert len(calls) == 4
    assert "overloaded" in str(info.value)


def test_429_is_retried():
    calls = []

    async def handler(request):
        calls.append(1)
        if len(calls) == 1:
            return web.Response(status=429, text="slow down")
        return web.json_response(completion())

    assert len(asyncio.run(generate(handler))) == 1 and len(calls) == 2


def test_400_fails_at_once_with_the_servers_text():
    calls = []

    async def handler(request):
        calls.append(1)
        return web.json_response({"error": {"message": "max_tokens too large"}}, status=400)

    with pytest.raises(BackendError) as info:
        asyncio.run(generate(handler))
    assert info.value.retryable is False and info.value.status == 400
    assert "max_tokens too large" in str(info.value)
    assert len(calls) == 1


def test_timeouts_are_retried_then_retryable():
    calls = []

    async def handler(request):
        calls.append(1)
        await asyncio.sleep(0.5)
        return web.json_response(completion())

    settings = FAST.replace(retries=2, request_timeout_s=0.1)
    with pytest.raises(BackendError) as info:
        asyncio.run(generate(handler, settings=settings))
    assert info.value.retryable is True and len(calls) == 2


def test_connection_refused_is_retryable():
    async def go():
        gen = OpenAIGenerator(FAST.replace(retries=2), "m", f"http://127.0.0.1:{free_port()}")
        try:
            await gen.generate(PROMPT)
        finally:
            await gen.close()

    with pytest.raises(BackendError) as info:
        asyncio.run(go())
    assert info.value.retryable is True


def test_n_is_topped_up_when_the_server_ignores_it():
    bodies = []

    async def handler(request):
        bodies.append(await request.json())
        return web.json_response(completion(text=f"s{bodies[-1]['seed']}"))  # one choice

    gens = asyncio.run(generate(handler, req=GenRequest(prompt="p", n=3, seed=5)))
    assert [g.text for g in gens] == ["s5", "s6", "s7"]
    assert [g.seed for g in gens] == [5, 6, 7]
    # the first answer had one choice of three: the other two are asked for one each
    assert [b["n"] for b in bodies] == [3, 1, 1]
    assert sorted(b["seed"] for b in bodies) == [5, 6, 7]


def test_a_server_that_ignores_n_gets_the_requests_of_a_set_side_by_side():
    state = {"now": 0, "max": 0, "bodies": [], "gate": False}
    arrived = asyncio.Event()

    async def handler(request):
        body = await request.json()
        if state["gate"]:  # the measured call: each request waits for the other three (or 3 s)
            state["bodies"].append(body)
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
            if len(state["bodies"]) == 4:
                arrived.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(arrived.wait(), 3.0)
            state["now"] -= 1
        return web.json_response(completion(text=f"s{body['seed']}"))

    async def go():
        async with serve(handler) as url:
            gen = OpenAIGenerator(FAST, "m", url)
            try:
                assert len(await gen.generate(GenRequest(prompt="p", n=1, seed=0))) == 1
                assert not gen.ignores_n  # one asked, one answered: nothing learnt
                await gen.generate(GenRequest(prompt="p", n=2, seed=0))  # one answered of two
                assert gen.ignores_n
                state["gate"] = True
                return await gen.generate(GenRequest(prompt="p", n=4, seed=20))
            finally:
                await gen.close()

    gens = asyncio.run(go())
    assert [g.seed for g in gens] == [20, 21, 22, 23] and [g.text for g in gens] == ["s20", "s21", "s22", "s23"]
    assert [b["n"] for b in state["bodies"]] == [1, 1, 1, 1]
    assert state["max"] == 4  # all four in flight together


def test_one_failed_request_of_a_set_fails_the_call():
    async def handler(request):
        body = await request.json()
        if body["seed"] == 2:
            return web.Response(status=400, text="bad seed")
        return web.json_response(completion())

    async def go():
        async with serve(handler) as url:
            gen = OpenAIGenerator(FAST, "m", url)
            gen.ignores_n = True
            try:
                await gen.generate(GenRequest(prompt="p", n=3, seed=0))
            finally:
                await gen.close()

    with pytest.raises(BackendError) as info:
        asyncio.run(go())
    assert info.value.retryable is False and "bad seed" in str(info.value)


def test_one_request_when_the_server_honours_n():
    bodies = []

    async def handler(request):
        bodies.append(await request.json())
        return web.json_response(completion(choices=bodies[-1]["n"]))

    gens = asyncio.run(generate(handler, req=GenRequest(prompt="p", n=4, seed=0)))
    assert len(gens) == 4 and len(bodies) == 1
    assert [g.seed for g in gens] == [0, 1, 2, 3]
    assert sum(g.tokens_out for g in gens) == 8


def test_chat_body_and_auth_header_and_the_key_is_never_logged(caplog):
    seen = []

    async def handler(request):
        seen.append((request.path, request.headers.get("Authorization"), await request.json()))
        if len(seen) == 1:
            return web.Response(status=502, text="bad gateway")  # forces a warning log
        return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant",
                                  "content": "blue"}, "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 5, "completion_tokens": 1}})

    req = GenRequest(messages=[Message(role="user", content="colour?")], stop=["\n"],
                     temperature=0.3, top_p=0.9, max_tokens=9, seed=2)
    with caplog.at_level(logging.DEBUG):
        [g] = asyncio.run(generate(handler, req=req, api_key="sk-secret-123"))
    path, auth, body = seen[-1]
    assert g.text == "blue" and path == "/v1/chat/completions" and auth == "Bearer sk-secret-123"
    assert body["messages"] == [{"role": "user", "content": "colour?"}]
    assert (body["stop"], body["temperature"], body["top_p"], body["max_tokens"],
            body["seed"], body["n"], body["model"]) == (["\n"], 0.3, 0.9, 9, 2, 1, "m")
    assert "sk-secret-123" not in caplog.text
    assert "sk-secret" not in repr(OpenAIGenerator(FAST, "m", "http://h", "sk-secret-123"))


def test_in_flight_requests_are_bounded():
    state = {"now": 0, "max": 0}

    async def handler(request):
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        await asyncio.sleep(0.05)
        state["now"] -= 1
        return web.json_response(completion())

    async def go():
        async with serve(handler) as url:
            gen = OpenAIGenerator(FAST.replace(max_inflight=2), "m", url)
            await asyncio.gather(*(gen.generate(PROMPT) for _ in range(6)))
            await gen.close()

    asyncio.run(go())
    assert state["max"] == 2


@pytest.mark.parametrize("url", ["http://h:8000", "http://h:8000/", "http://h:8000/v1",
                                 "http://h:8000/v1/"])
def test_base_url_is_normalised(url):
    assert normalise_base_url(url) == "http://h:8000"


def test_fold_system_puts_system_text_into_the_first_user_turn():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert fold_system(msgs) == [{"role": "user", "content": "Be brief.\n\nHi"}]


# --- the registry -------------------------------------------------------------------------


def test_registry_caches_openai_clients_per_model_and_url():
    async def go():
        backends = Backends(Settings(openai_base_url="http://a:1/v1", allowed_endpoints="http://b:2"))
        a = backends.get(GeneratorSpec(backend="openai", model="m"))
        assert backends.get(JudgeSpec(backend="openai", model="m")) is a
        assert a.base_url == "http://a:1"
        b = backends.get(GeneratorSpec(backend="openai", model="m", base_url="http://b:2"))
        assert b is not a and b.base_url == "http://b:2"
        await backends.close()

    asyncio.run(go())


def test_registry_blocks_naming_the_setting_when_openai_has_no_url():
    with pytest.raises(Blocked, match="no server URL") as info:  # the deployment's fault, not the prompt's
        Backends(Settings()).get(GeneratorSpec(backend="openai", model="m"))
    assert "PREFSTREAM_OPENAI_BASE_URL" in info.value.fix


def test_vllm_backend_explains_the_missing_extra():
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(Blocked, match=r"prefstream\[vllm\]") as blocked:  # the worker's install
            Backends(Settings()).get(GeneratorSpec(backend="vllm", model="m"))
        assert blocked.value.reason == "model_load"
    else:
        pytest.skip("vllm is installed here")


# --- the embedded llama.cpp backend ---------------------------------------------------------


@pytest.fixture(scope="module")
def backends():
    b = Backends(Settings())
    yield b
    asyncio.run(b.close())


@pytest.mark.model
def test_llamacpp_is_loaded_once(backends):
    gen = backends.get(GeneratorSpec())
    assert backends.get(JudgeSpec()) is gen and gen.backend == "llamacpp"


@pytest.mark.model
def test_llamacpp_n_seeds_and_same_seed_same_text(backends):
    gen = backends.get(GeneratorSpec())
    req = GenRequest(prompt="Question: Name a fruit.\nAnswer:", n=3, seed=42, max_tokens=12)

    async def go():
        many = await gen.generate(req)
        again = await gen.generate(GenRequest(prompt=req.prompt, seed=42, max_tokens=12))
        return many, again

    many, [again] = asyncio.run(go())
    assert [g.seed for g in many] == [42, 43, 44]
    assert all(g.text and g.tokens_in > 0 and 0 < g.tokens_out <= 12 for g in many)
    assert again.text == many[0].text
    assert all(g.finish_reason in ("stop", "length") and g.latency_s > 0 for g in many)


@pytest.mark.model
def test_llamacpp_same_request_same_texts_whatever_ran_before(backends):
    """A completion request's N candidates decode in one batch from the prompt's shared KV
    cells: the same request (prompt, N, seeds) gives the same texts, whatever ran before it
    (a judge prompt sharing a prefix, another prompt, a chat request)."""
    gen = backends.get(GeneratorSpec())
    prompt = "Question: Name a colour.\nAnswer:"
    req = GenRequest(prompt=prompt, n=4, seed=7, max_tokens=16, temperature=1.0)

    async def go():
        first = await gen.generate(req)
        await gen.generate(GenRequest(prompt="Question: Name a city.\nAnswer:", n=2, seed=3, max_tokens=16))
        await gen.generate(GenRequest(prompt=prompt + " Blue.\nQuestion: Name a tree.\nAnswer:",
                                      prefix=prompt, seed=1, max_tokens=8, grammar='root ::= " " [a-z]+'))
        await gen.generate(GenRequest(messages=[Message(role="user", content="Hi")], seed=1, max_tokens=4))
        return first, await gen.generate(req)

    first, again = asyncio.run(go())
    assert [g.text for g in again] == [g.text for g in first] and [g.seed for g in first] == [7, 8, 9, 10]
    assert len({g.text for g in first}) > 1  # different seeds do sample differently
    assert all(0 < g.tokens_out <= 16 and g.tokens_in > 0 for g in first)


@pytest.mark.model
def test_llamacpp_batched_and_one_by_one_stop_alike(backends):
    """Stop strings end a batched candidate where they begin, as they end a sequential one."""
    gen = backends.get(GeneratorSpec())
    req = GenRequest(prompt="Question: Name a fruit.\nAnswer:", n=3, seed=5, max_tokens=48, stop=["\n"])
    gens = asyncio.run(gen.generate(req))
    assert all("\n" not in g.text for g in gens) and any(g.finish_reason == "stop" for g in gens)


@pytest.mark.model
def test_llamacpp_grammar_is_enforced(backends):
    from agents.evaluators.judge import score_grammar

    gen = backends.get(GeneratorSpec())
    req = GenRequest(prompt="Write a poem about the sea:\n", seed=0, max_tokens=24, temperature=1.0,
                     grammar=score_grammar(10, 3, reason=True))
    [g] = asyncio.run(gen.generate(req))
    scores, _, reason = g.text.partition("\nReason: ")
    assert [1 <= int(x) <= 10 for x in scores.split()] == [True] * 3 and scores.startswith(" ")
    assert "\n" not in reason.rstrip("\n")


@pytest.mark.model
def test_llamacpp_chat(backends):
    gen = backends.get(GeneratorSpec())
    req = GenRequest(messages=[Message(role="system", content="Answer in one word."),
                               Message(role="user", content="Name a colour.")],
                     max_tokens=8, seed=1)
    [g] = asyncio.run(gen.generate(req))
    assert g.text.strip() and g.tokens_in > 0 and g.seed == 1


def test_gemma_folding_keeps_tool_calls_and_results_as_text():
    from agents.backends.llamacpp import fold_system

    msgs = [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "17*23?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "t", "type": "function", "function": {"name": "calc", "arguments": "17*23"}}]},
            {"role": "tool", "name": "calc", "tool_call_id": "t", "content": "391"}]
    out = fold_system(msgs)
    assert [m["role"] for m in out] == ["user", "assistant", "user"]
    assert out[0]["content"] == "Use tools.\n\n17*23?"
    assert out[1]["content"] == "[calls calc(17*23)]" and "tool_calls" not in out[1]
    assert out[2]["content"] == "Tool result (calc): 391"
