"""`prefstream ingest`: an HTTP ingest API and, with an upstream, an OpenAI-compatible capture proxy.

Routes (``/v1/*`` need ``Authorization: Bearer KEY`` when keys are configured):

- ``POST /v1/prompts`` — one prompt (a JSON object), a batch (a JSON array, or JSON lines),
  in the line formats ``prefstream submit`` reads (``streams.inputs.parse_line``);
  ``?objective=NAME`` routes all of them. Answers ``{"ids": [...]}`` once the broker has them.
  **Batches are all-or-nothing**: every item is validated first; if any is bad, the answer is
  422 with ``errors: [{"index": i, "reason": ...}]`` for each bad item (counted from 0, blank
  JSON lines skipped) and nothing is published, so a client fixes the batch and resends it
  whole. Ids are content-derived, so a resend after a timeout publishes the same ids again.
- ``POST /v1/feedback`` — human labels (``schemas.Feedback``), same body shapes and the same
  all-or-nothing rule; the server fills ``user`` (the key's hash), ``created_at`` and ``id``.
- With an upstream: ``POST /v1/chat/completions`` (streaming and not) and ``GET /v1/models``
  are forwarded unchanged (the caller's key is never forwarded; ``PREFSTREAM_OPENAI_API_KEY``,
  if set, authenticates to the upstream). A sampled request (``ingest_capture_rate``) is
  captured after its response as a ``Prompt`` (source ``proxy``, tags ``route:…``/``model:…``,
  the key's hash, the production response in ``metadata``) and its prompt id is returned in the
  ``x-prefstream-prompt-id`` header so feedback can name it. Capture never delays or breaks
  the request (``streams.proxy``, ``streams.capture``).
- ``GET /healthz``, ``GET /metrics`` (open, the app's own registry).

Limits: body over ``ingest_max_bytes`` → 413 (declared or actual size); missing or wrong key →
401; over ``ingest_rate_limit`` requests/s per key → 429; CORS is off (no CORS headers).
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, Callable

import msgspec
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from schemas import Feedback, Prompt
from schemas.feedback import feedback_id
from streams.admin import create_topics
from streams.admission import Gate
from streams.capture import CAPTURE_LINGER_MS, BrokerUnavailable, Capture, Publisher
from streams.inputs import parse_line
from streams.proxy import Proxy
from streams.settings import Settings
from streams.topics import from_settings

logger = logging.getLogger(__name__)

def split_items(body: bytes) -> list[tuple[int, Any, str | None]]:
    """(index, item, error) for each item of a JSON object, JSON array or JSON-lines body."""
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError:
        lines = [ln for ln in body.splitlines() if ln.strip()]
        if len(lines) < 2:
            return [(0, None, "body is not valid JSON (expected an object, an array or JSON lines)")]
        out = []
        for i, line in enumerate(lines):
            try:
                out.append((i, msgspec.json.decode(line), None))
            except msgspec.DecodeError as exc:
                out.append((i, None, f"invalid JSON: {exc}"))
        return out
    items = doc if isinstance(doc, list) else [doc]
    return [(i, item, None) for i, item in enumerate(items)]


def _reason(exc: Exception) -> str:
    return f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)


def parse_prompts(body: bytes, key: str, objective: str | None = None) -> tuple[list[Prompt], list[dict]]:
    """All prompts of the body, or the errors of every bad item (all-or-nothing)."""
    prompts, errors, now = [], [], time.time()
    for i, item, err in split_items(body):
        try:
            if err:
                raise ValueError(err)
            p = parse_line(item)
        except (ValueError, KeyError, TypeError, msgspec.ValidationError) as exc:
            errors.append({"index": i, "reason": _reason(exc)})
            continue
        prompts.append(msgspec.structs.replace(
            p, objective=objective or p.objective, metadata={**p.metadata, "key_hash": key},
            created_at=p.created_at or now))
    return prompts, errors


def parse_feedback(body: bytes, key: str) -> tuple[list[Feedback], list[dict]]:
    labels, errors, now = [], [], time.time()
    for i, item, err in split_items(body):
        try:
            if err:
                raise ValueError(err)
            if not isinstance(item, dict):
                raise ValueError(f"expected a JSON object, got {type(item).__name__}")
            fb = msgspec.convert({**item, "id": item.get("id") or "-", "user": key, "created_at": now}, Feedback)
        except (ValueError, TypeError, msgspec.ValidationError) as exc:
            errors.append({"index": i, "reason": _reason(exc)})
            continue
        if fb.id == "-":
            fb = msgspec.structs.replace(fb, id=feedback_id(fb.prompt_id, fb.kind, fb.value, fb.candidate_id,
                                                            fb.response_id, fb.other_id, fb.user))
        labels.append(fb)
    return labels, errors


def _refused(items: int, errors: list[dict]) -> JSONResponse:
    detail = (f"{len(errors)} of {items} items are invalid; nothing was published (batches are "
              f"all-or-nothing)") if items else "the body holds no items"
    return JSONResponse({"detail": detail, "errors": errors}, status_code=422)


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
        return {"status": "ok", "upstream": self.proxy.base if self.proxy else None,
                "broker_connected": self.publisher.connected or self.capture_publisher.connected,
                "capture_queue": self.capture.queue.qsize()}


def build_app(settings: Settings, upstream: str | None = None, registry: CollectorRegistry | None = None,
              publish_timeout_s: float = 10.0) -> Edge:
    """The ASGI app (serve it with uvicorn)."""
    registry = registry or CollectorRegistry()
    ing = Ingest(settings, upstream, registry, publish_timeout_s)
    app = FastAPI(title="prefstream ingest", lifespan=ing.lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    # handlers take the bare Request and call authorize() themselves (FastAPI would run it, a
    # sync dependency, in a worker thread)
    @app.post("/v1/prompts")
    async def post_prompts(request: Request):
        key = ing.gate.authorize(request)
        prompts, errors = parse_prompts(await ing.gate.body(request), key, request.query_params.get("objective"))
        if errors or not prompts:
            return _refused(len(prompts) + len(errors), errors)
        return await ing.publish(ing.topics.prompts, prompts, lambda p: p.id)

    @app.post("/v1/feedback")
    async def post_feedback(request: Request):
        key = ing.gate.authorize(request)
        labels, errors = parse_feedback(await ing.gate.body(request), key)
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
