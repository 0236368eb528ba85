"""The capture proxy of `prefstream ingest`: forwards OpenAI-compatible requests upstream.

- ``Proxy``: forwards chat completions (relaying a stream chunk by chunk) and ``/v1/models``
  to the upstream, and offers each sampled exchange to ``streams.commands.serving.capture.Capture`` once its
  response is complete (a stream cut short is not captured).
- ``StreamText`` assembles a streamed (SSE) response as it passes.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from urllib.parse import urlsplit

import aiohttp
import msgspec
from prometheus_client import CollectorRegistry, Histogram
from starlette.responses import Response, StreamingResponse

from streams.commands.serving.capture import Capture, Captured
from streams.endpoints import Endpoints, redact
from streams.settings import Settings

logger = logging.getLogger(__name__)


class StreamText:
    """Feed it a chat-completions SSE stream chunk by chunk; it keeps choice 0's text."""

    def __init__(self) -> None:
        self._buf = b""
        self._parts: list[str] = []
        self.id: str | None = None
        self.model: str | None = None
        self.finish_reason: str | None = None
        self.done = False

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            if line.startswith(b"data:"):
                self._event(line[5:].strip())

    def _event(self, data: bytes) -> None:
        if data == b"[DONE]":
            self.done = True
            return
        try:
            ev = msgspec.json.decode(data)
            choice = next(c for c in ev.get("choices") or [] if c.get("index", 0) == 0)
        except (msgspec.DecodeError, StopIteration, AttributeError):
            return
        self.id, self.model = ev.get("id") or self.id, ev.get("model") or self.model
        content = (choice.get("delta") or {}).get("content")
        if isinstance(content, str):
            self._parts.append(content)
        self.finish_reason = choice.get("finish_reason") or self.finish_reason

    @property
    def text(self) -> str:
        return "".join(self._parts)

    @property
    def complete(self) -> bool:
        return self.done or self.finish_reason is not None


class Proxy:
    """Forwards OpenAI-compatible requests to ``base`` unchanged and offers sampled exchanges
    to ``capture``. Streaming responses are relayed chunk by chunk as they arrive. The upstream
    client is aiohttp: at concurrency 16 httpx's pool costs several times more CPU per request."""

    ROUTE = "chat.completions"

    def __init__(self, base: str, settings: Settings, capture: Capture, registry: CollectorRegistry) -> None:
        self.base = base.rstrip("/").removesuffix("/v1")
        self.capture, self.rate, self.timeout_s = capture, settings.ingest_capture_rate, settings.request_timeout_s
        self.shown = redact(self.base)  # for answers and logs: never a password in the URL
        self.headers = {"Content-Type": "application/json"}
        key = Endpoints(settings).key_for(self.base)  # only to the origin the key is configured for
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self.session: aiohttp.ClientSession | None = None
        self.upstream_seconds = Histogram(
            "prefstream_proxy_upstream_seconds", "Upstream time to response headers", ["route"], registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.timeout_s))

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def get(self, path: str) -> Response:
        try:
            async with self.session.get(self.base + path, headers=self.headers) as resp:
                return Response(await resp.read(), resp.status, media_type=resp.headers.get("Content-Type"))
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return self._unreachable(exc)

    async def chat(self, body: bytes, key: str) -> Response:
        try:
            req = msgspec.json.decode(body)
        except msgspec.DecodeError:
            req = None  # forwarded as it is: the upstream explains what is wrong with it
        req = req if isinstance(req, dict) else None
        sampled = req is not None and random.random() < self.rate
        if not sampled and req is not None:
            self.capture.captures.labels("not_sampled").inc()
        item = Captured("p-" + uuid.uuid4().hex[:16], req, key, self.ROUTE) if sampled else None
        headers = {"x-prefstream-prompt-id": item.prompt_id} if item else {}
        t0 = time.perf_counter()
        try:
            resp = await self.session.post(self.base + "/v1/chat/completions", data=body, headers=self.headers)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return self._unreachable(exc)
        self.upstream_seconds.labels(self.ROUTE).observe(time.perf_counter() - t0)
        media_type = resp.headers.get("Content-Type")
        if resp.status != 200 or not media_type or not media_type.startswith("text/event-stream"):
            try:
                content = await resp.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                return self._unreachable(exc)
            finally:
                resp.release()
            if item and resp.status == 200:
                item.response_json = content
                self.capture.offer(item)
            return Response(content, resp.status, headers=headers, media_type=media_type)
        return StreamingResponse(self._relay(resp, item), headers=headers, media_type=media_type)

    async def _relay(self, resp: aiohttp.ClientResponse, item: Captured | None):
        stream = item.stream = StreamText() if item else None
        try:
            async for chunk in resp.content.iter_any():
                if stream:
                    stream.feed(chunk)
                yield chunk
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            logger.warning("upstream stream broke off: %r", exc)
            return
        finally:
            resp.release()
        if item and stream.complete:
            self.capture.offer(item)

    def _unreachable(self, exc: BaseException) -> Response:
        msg = f"upstream {self.shown} unreachable: {type(exc).__name__}: {exc}"
        password = urlsplit(self.base).password
        if password:
            msg = msg.replace(password, "***")
        body = msgspec.json.encode({"error": {"message": msg, "type": "upstream_unreachable"}})
        return Response(body, 502, media_type="application/json")
