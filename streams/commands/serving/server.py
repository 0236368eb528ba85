"""`prefstream ingest`: an HTTP ingest API and, with an upstream, an OpenAI-compatible capture proxy.

Routes (``/v1/*`` need ``Authorization: Bearer KEY`` when keys are configured):

- ``POST /v1/prompts`` — one prompt (a JSON object), a batch (a JSON array, or JSON lines),
  in the line formats ``prefstream submit`` reads (``streams.commands.serving.inputs.parse_line``), with the
  fields ``streams.commands.serving.items`` lists (no ``id``, no production responses, verification only
  from keys allowed it); ``?objective=NAME`` routes all of them. Answers ``{"ids": [...]}`` once
  the broker has them.
  **Batches are all-or-nothing**: every item is validated first; if any is bad, the answer is
  422 with ``errors: [{"index": i, "reason": ...}]`` for each bad item (counted from 0, blank
  JSON lines skipped) and nothing is published, so a client fixes the batch and resends it
  whole (at most 20 errors are listed, ``more_errors`` counts the rest). Ids are content-derived,
  so a resend after a timeout publishes the same ids again.
- ``POST /v1/feedback`` — human labels (``schemas.Feedback``), same body shapes and the same
  all-or-nothing rule; the server sets ``user`` (the key's hash), ``created_at`` and ``id`` (a
  client sending them is refused). A key's newer label of a candidate replaces its older one.
- With an upstream: ``POST /v1/chat/completions`` (streaming and not) and ``GET /v1/models``
  are forwarded unchanged (the caller's key is never forwarded; ``PREFSTREAM_OPENAI_API_KEY``
  authenticates to the upstream where it is ``PREFSTREAM_OPENAI_BASE_URL``'s origin). A sampled
  request (``ingest_capture_rate``) is captured after its response as a ``Prompt`` (source
  ``proxy``, tags ``route:…``/``model:…``, the key's hash, the production response in
  ``metadata``) and its prompt id is returned in the ``x-prefstream-prompt-id`` header so
  feedback can name it. Capture never delays or breaks
  the request (``streams.commands.serving.proxy``, ``streams.commands.serving.capture``).
- ``GET /healthz``, ``GET /metrics`` (open, the app's own registry).

Limits: body over ``ingest_max_bytes`` → 413 (declared or actual size), over ``ingest_max_items``
items → 413; body not in within ``ingest_body_timeout_s`` → 408 (headers: ``streams.commands.serving.uvicorn``);
missing or wrong key → 401, and past ``ingest_auth_fail_rate`` failures per client address → 429
for that address; over ``ingest_rate_limit`` items/s per key → 429 (a batch may overdraw the
bucket; the key's next requests wait until it is repaid); malformed bodies → 4xx with a short
reason; CORS is off (no CORS headers).
"""
from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import asynccontextmanager
from typing import Callable

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from streams.admin import create_topics
from streams.commands.serving.admission import Gate
from streams.commands.serving.capture import CAPTURE_LINGER_MS, BrokerUnavailable, Capture, Publisher
from streams.commands.serving.items import TooMany, parse_feedback, parse_prompts, refusal
from streams.commands.serving.proxy import Proxy
from streams.settings import Settings
from streams.topics import from_settings

logger = logging.getLogger(__name__)

def _refused(items: int, errors: list[dict]) -> JSONResponse:
    return JSONResponse(refusal(items, errors), status_code=422)


ROUTES = ("/v1/prompts", "/v1/feedback", "/v1/chat/completions", "/v1/models", "/healthz", "/metrics")


class Edge:
    """The outermost ASGI layer. It counts requests by route and status class (bounded labels)
    and sends the proxy's hot path, ``fast[(method, path)]``, straight to its handler: FastAPI's
    middleware stack and routing cost about a quarter of the proxy's CPU per request."""

    def __init__(self, app, registry: CollectorRegistry, fast: dict[tuple[str, str], Callable]) -> None:
        self.app, self.fast = app, fast
        self.requests = Counter("prefstream_ingest_requests_total", "HTTP requests served",
                                ["route", "status"], registry=registry)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in ROUTES else "other"

        async def counted(message):
            if message["type"] == "http.response.start":
                self.requests.labels(route, f"{message['status'] // 100}xx").inc()
            await send(message)

        handler = self.fast.get((scope["method"], scope["path"]))
        if handler is None:
            return await self.app(scope, receive, counted)
        try:
            response = await handler(Request(scope, receive))
        except HTTPException as exc:
            response = JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
        await response(scope, receive, counted)


class Ingest:
    """The state behind the routes: the gate (keys, limits), the two producers, the capture and the proxy."""

    def __init__(self, settings: Settings, upstream: str | None, registry: CollectorRegistry,
                 publish_timeout_s: float) -> None:
        self.settings, self.registry, self.timeout_s = settings, registry, publish_timeout_s
        self.topics = from_settings(settings)
        self.gate = Gate(settings)
        self.publisher = Publisher(settings, timeout_s=publish_timeout_s)
        self.capture_publisher = Publisher(settings, timeout_s=publish_timeout_s, linger_ms=CAPTURE_LINGER_MS)
        self.capture = Capture(self.capture_publisher, self.topics.prompts, settings.ingest_capture_queue, registry)
        self.proxy = Proxy(upstream, settings, self.capture, registry) if upstream else None
        self.published = Counter("prefstream_ingest_published_total", "Records published by the ingest API",
                                 ["topic"], registry=registry)

    @asynccontextmanager
    async def lifespan(self, app):
        try:
            await asyncio.wait_for(create_topics(self.settings, self.topics), self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - the proxy must serve even with the broker down
            logger.warning("could not create topics on %s (%r); going on", self.settings.broker, exc)
        drainer = asyncio.create_task(self.capture.run())
        if self.proxy:
            await self.proxy.start()
        gc.freeze()  # the start-up heap leaves the collector's scans: no 20-50 ms pauses under load
        try:
            yield
        finally:
            await self.capture.flush(self.timeout_s)
            drainer.cancel()
            if self.proxy:
                await self.proxy.close()
            await self.publisher.close()
            await self.capture_publisher.close()

    async def publish(self, topic, records: list, key_of) -> JSONResponse | dict:
        try:
            await self.publisher.publish(topic.name, [(key_of(r).encode(), topic.codec.encode(r)) for r in records])
        except BrokerUnavailable as exc:
            return JSONResponse({"detail": f"broker unavailable, nothing acknowledged; retry: {exc}"}, 503)
        self.published.labels(topic.spec.short).inc(len(records))
        return {"ids": [r.id for r in records]}

    def health(self) -> dict:
        return {"status": "ok", "upstream": self.proxy.shown if self.proxy else None,
                "broker_connected": self.publisher.connected or self.capture_publisher.connected,
                "capture_queue": self.capture.queue.qsize()}


def build_ingest_app(settings: Settings, upstream: str | None = None, registry: CollectorRegistry | None = None,
              publish_timeout_s: float = 10.0) -> Edge:
    """The ASGI app (serve it with uvicorn)."""
    registry = registry or CollectorRegistry()
    ing = Ingest(settings, upstream, registry, publish_timeout_s)
    app = FastAPI(title="prefstream ingest", lifespan=ing.lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    # handlers take the bare Request and call authorize() themselves (FastAPI would run it, a
    # sync dependency, in a worker thread)
    max_items = settings.ingest_max_items

    @app.post("/v1/prompts")
    async def post_prompts(request: Request):
        key = ing.gate.authorize(request)
        body, objective = await ing.gate.body(request), request.query_params.get("objective")
        try:
            prompts, errors = parse_prompts(body, key, objective, ing.gate.may_verify(key), max_items)
        except TooMany as exc:
            return JSONResponse({"detail": str(exc)}, 413)
        ing.gate.charge(key, len(prompts) + len(errors))
        if errors or not prompts:
            return _refused(len(prompts) + len(errors), errors)
        return await ing.publish(ing.topics.prompts, prompts, lambda p: p.id)

    @app.post("/v1/feedback")
    async def post_feedback(request: Request):
        key = ing.gate.authorize(request)
        try:
            labels, errors = parse_feedback(await ing.gate.body(request), key, max_items)
        except TooMany as exc:
            return JSONResponse({"detail": str(exc)}, 413)
        ing.gate.charge(key, len(labels) + len(errors))
        if errors or not labels:
            return _refused(len(labels) + len(errors), errors)
        return await ing.publish(ing.topics.feedback, labels, lambda f: f.prompt_id)

    fast = {}
    if ing.proxy:
        async def chat_completions(request: Request) -> Response:
            key = ing.gate.authorize(request)
            return await ing.proxy.chat(await ing.gate.body(request), key)

        fast[("POST", "/v1/chat/completions")] = chat_completions

        @app.get("/v1/models")
        async def models(request: Request):
            ing.gate.authorize(request)
            return await ing.proxy.get("/v1/models")

    @app.get("/healthz")
    async def healthz():
        return ing.health()

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Edge(app, registry, fast)
