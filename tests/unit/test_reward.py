"""The reward-model client against a real HTTP server (aiohttp on 127.0.0.1) that speaks
vLLM's documented wire format for /pooling, /classify, /score, /v1/score, /rerank and
/v1/rerank. No real reward model runs here: the server's "reward" is a fixed function of the
text (how often it says "good" minus "bad"), so the expected order is known."""
from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from agents.evaluators.ensemble import validate
from agents.evaluators.reward import RewardError, RewardModel, normalise, parse_rewards
from schemas import Candidate, EvaluationSpec, EvaluatorSpec, Message, ObjectiveSpec, Prompt, Sampling
from streams.settings import Settings

MODEL = "test/reward-model"
PROMPT = Prompt(id="p", messages=[Message(role="user", content="Say something nice.")])
TEXTS = ["good good", "bad", "good", "bad bad good"]
EXPECTED = [2.0, -1.0, 1.0, -1.0]


def reward_of(text: str) -> float:
    return float(text.count("good") - text.count("bad"))


class VllmLikeServer:
    """The response bodies vLLM's protocol classes define (PoolingResponse, ClassificationResponse,
    ScoreResponse, RerankResponse); data deliberately returned in reverse index order."""

    def __init__(self, token_level: bool = False, fail_first: int = 0) -> None:
        self.requests: list[tuple[str, dict]] = []
        self.token_level, self.fail_first = token_level, fail_first
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        path = request.path.lstrip("/")
        self.requests.append((path, body))
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.json_response({"object": "error", "message": "busy", "type": "ServiceUnavailable",
                                      "code": 503}, status=503)
        if body.get("model") != MODEL:
            return web.json_response({"object": "error", "message": f"The model `{body.get('model')}` does "
                                      "not exist.", "type": "NotFoundError", "code": 404}, status=404)
        head = {"id": "pool-1", "object": "list", "created": int(time.time()), "model": MODEL,
                "usage": {"prompt_tokens": 7, "total_tokens": 7, "completion_tokens": 0}}
        if path in ("score", "v1/score"):
            data = [{"index": i, "object": "score", "score": reward_of(t)} for i, t in enumerate(body["text_2"])]
            return web.json_response({**head, "data": data[::-1]})
        if path in ("rerank", "v1/rerank"):
            results = [{"index": i, "document": {"text": t}, "relevance_score": reward_of(t)}
                       for i, t in enumerate(body["documents"])]
            results.sort(key=lambda r: -r["relevance_score"])
            return web.json_response({"id": "rerank-1", "model": MODEL, "usage": {"total_tokens": 7},
                                      "results": results[: body.get("top_n") or None]})
        texts = body["input"] if "input" in body else [body["messages"][-1]["content"]]
        texts = [texts] if isinstance(texts, str) else texts
        if path == "classify":
            data = [{"index": i, "label": "LABEL_0", "probs": [reward_of(t)], "num_classes": 1}
                    for i, t in enumerate(texts)]
        else:
            out = (lambda r: [[0.0], [0.5], [r]]) if self.token_level else (lambda r: [r])
            data = [{"index": i, "object": "pooling", "data": out(reward_of(t))} for i, t in enumerate(texts)]
        return web.json_response({**head, "data": data[::-1]})


async def _with_server(server: VllmLikeServer, params: dict, texts=TEXTS, **extra):
    app = web.Application()
    app.router.add_post("/{tail:.*}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        objective = ObjectiveSpec(name="o", evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(
            name="reward", params={"base_url": f"http://127.0.0.1:{port}", "model": MODEL, **params})]))
        cands = [Candidate(id=f"c{i}", text=t, backend="x", model="x",
                           sampling=Sampling(temperature=0, top_p=1, max_tokens=1)) for i, t in enumerate(texts)]
        allowed = Settings(allowed_endpoints=f"http://127.0.0.1:{port}")  # the worker's allowlist
        return await RewardModel(allowed).score(PROMPT, cands, objective)
    finally:
        await runner.cleanup()


def run(params: dict, **kw):
    server = VllmLikeServer(**kw)
    scores = asyncio.run(_with_server(server, params))
    return scores, server


@pytest.mark.parametrize("endpoint", ["pooling", "classify", "score", "v1/score", "rerank", "v1/rerank"])
def test_every_endpoint_batches_the_set_and_keeps_the_raw_reward(endpoint):
    scores, server = run({"endpoint": endpoint})
    assert [s.raw for s in scores] == EXPECTED
    assert len(server.requests) == 1 and server.requests[0][0] == endpoint  # one request per set
    assert all(s.kind == "reward" and s.evaluator == "reward" and 0 < s.value < 1 for s in scores)
    assert scores[0].value > scores[2].value > scores[1].value == scores[3].value
    body = server.requests[0][1]
    if endpoint in ("score", "v1/score"):
        assert body["text_1"] == "Say something nice." and body["text_2"] == TEXTS
    elif endpoint.endswith("rerank"):
        assert body["query"] == "Say something nice." and body["documents"] == TEXTS and body["top_n"] == 4
    else:
        assert body["input"] == [f"Say something nice.\n\n{t}" for t in TEXTS]


def test_chat_input_sends_one_conversation_per_candidate():
    scores, server = run({"endpoint": "pooling", "input": "chat"})
    assert [s.raw for s in scores] == EXPECTED
    assert len(server.requests) == 4
    msgs = sorted((b["messages"] for _, b in server.requests), key=lambda m: m[-1]["content"])
    assert msgs[0] == [{"role": "user", "content": "Say something nice."}, {"role": "assistant", "content": "bad"}]


def test_token_level_pooling_takes_the_last_token():
    scores, _ = run({"endpoint": "pooling"}, token_level=True)
    assert [s.raw for s in scores] == EXPECTED


def test_minmax_and_none_normalisation():
    scores, _ = run({"normalise": "minmax"})
    assert [s.value for s in scores] == [1.0, 0.0, pytest.approx(2 / 3), 0.0]
    assert normalise([3.0, 3.0], "minmax") == [0.5, 0.5]
    assert normalise([-2.0, 0.5, 7.0], "none") == [0.0, 0.5, 1.0]
    assert normalise([0.0], "sigmoid") == [0.5]


def test_a_busy_server_is_retried():
    scores, server = run({"retries": 2}, fail_first=2)
    assert [s.raw for s in scores] == EXPECTED and len(server.requests) == 3


def test_a_server_down_past_its_retries_blocks_and_a_rejected_request_is_unscored():
    from streams.health import environmental

    with pytest.raises(RewardError) as caught:  # 503 on every try: the environment, not the set
        run({"retries": 1}, fail_first=5)
    blocked = environmental(caught.value)
    assert blocked is not None and blocked.reason == "backend_down" and "503" in blocked.detail
    scores, server = run({"model": "wrong/model", "retries": 3})
    assert all(s.value is None and "404" in s.error for s in scores)
    assert len(server.requests) == 1  # a 4xx is not retried


def test_unreachable_server_blocks_the_stage_never_guesses_a_score():
    from streams.health import environmental

    objective = ObjectiveSpec(name="o", evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(
        name="reward", params={"base_url": "http://127.0.0.1:9", "retries": 0, "timeout_s": 2})]))
    cands = [Candidate(id="c", text="x", backend="x", model="x", sampling=Sampling(temperature=0, top_p=1,
                                                                                   max_tokens=1))]
    with pytest.raises(RewardError) as caught:
        asyncio.run(RewardModel(Settings(allowed_endpoints="http://127.0.0.1:9")).score(PROMPT, cands, objective))
    assert environmental(caught.value).reason == "backend_down"


def test_params_are_validated_with_the_objective():
    with pytest.raises(ValueError, match="base_url"):
        validate(EvaluationSpec(evaluators=[EvaluatorSpec(name="reward")]))
    with pytest.raises(ValueError, match="endpoint"):
        validate(EvaluationSpec(evaluators=[EvaluatorSpec(name="reward", params={"base_url": "http://x",
                                                                                 "endpoint": "embeddings"})]))


def test_a_short_or_non_finite_reply_is_an_error():
    with pytest.raises(ValueError):
        parse_rewards("score", {"data": [{"index": 0, "score": 1.0}]}, 2, -1)
    with pytest.raises(ValueError):
        parse_rewards("score", {"data": [{"index": 0, "score": float("nan")}]}, 1, -1)
