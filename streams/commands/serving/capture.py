"""Publishing from `prefstream ingest` without ever holding up a user's request.

- ``Publisher``: one aiokafka producer, started on first use and, after a failed start, tried
  again no sooner than ``retry_s`` later; every publish is bounded by ``timeout_s`` and fails
  as ``BrokerUnavailable`` (the ingest routes answer 503, the capture queue counts a drop).
- ``Capture``: the proxy's fire-and-forget capture. ``offer()`` never waits: it puts the
  capture on a bounded asyncio queue, or counts it dropped when the queue is full. One
  background task (``run()``) drains the queue in batches, turns each capture into a
  ``Prompt`` (off the request path) and publishes it; a broker outage drops the batch and
  counts it, and the next batch tries again.
- ``Captured`` is one proxied exchange (``streams.commands.serving.proxy`` makes them) and the ``Prompt`` it
  becomes.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge

from schemas import Message, Prompt
from streams.admin import producer
from streams.settings import Settings
from streams.topics import Topic

if TYPE_CHECKING:
    from streams.commands.serving.proxy import StreamText

logger = logging.getLogger(__name__)

BATCH = 512  # captures published together at most
CAPTURE_LINGER_MS = 50  # captures wait for company: fewer, larger produce requests


class BrokerUnavailable(RuntimeError):
    pass


class Publisher:
    def __init__(self, settings: Settings, timeout_s: float = 10.0, retry_s: float = 2.0,
                 linger_ms: int | None = None) -> None:
        if linger_ms is not None:
            settings = settings.replace(producer_linger_ms=linger_ms)
        self.settings, self.timeout_s, self.retry_s = settings, timeout_s, retry_s
        self._producer = None
        self._lock = asyncio.Lock()
        self._next_try = 0.0

    @property
    def connected(self) -> bool:
        return self._producer is not None

    async def _started(self):
        async with self._lock:
            if self._producer is None:
                if time.monotonic() < self._next_try:
                    raise BrokerUnavailable(f"broker {self.settings.broker} unreachable (retrying soon)")
                p = producer(self.settings, request_timeout_ms=int(self.timeout_s * 1000), retry_backoff_ms=500)
                try:
                    await asyncio.wait_for(p.start(), self.timeout_s)
                except Exception as exc:  # noqa: BLE001 - any failure to start is an outage
                    self._next_try = time.monotonic() + self.retry_s
                    await _stop(p, self.timeout_s)
                    raise BrokerUnavailable(f"broker {self.settings.broker} unreachable: {exc!r}") from None
                self._producer = p
            return self._producer

    async def publish(self, topic: str, records: list[tuple[bytes, bytes]]) -> None:
        """Send (key, value) records and wait until the broker acknowledged all of them."""
        p = await self._started()

        async def send_all() -> None:
            futures = [await p.send(topic, value, key=key) for key, value in records]
            await asyncio.gather(*futures)

        try:
            await asyncio.wait_for(send_all(), self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - KafkaError, timeout: the broker did not take it
            raise BrokerUnavailable(f"publishing to {topic} failed: {exc!r}") from None

    async def close(self) -> None:
        p, self._producer = self._producer, None
        if p is not None:
            await _stop(p, self.timeout_s)


async def _stop(p, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(p.stop(), timeout_s)
    except Exception as exc:  # noqa: BLE001 - stopping with the broker down may time out
        logger.warning("producer did not stop cleanly: %r", exc)


@dataclass
class Captured:
    """One proxied exchange: the request, and the response as JSON bytes or assembled text."""

    prompt_id: str
    request: dict[str, Any]
    key_hash: str
    route: str
    response_json: bytes | None = None
    stream: StreamText | None = None
    created_at: float = field(default_factory=time.time)

    def to_prompt(self) -> Prompt:
        """The captured prompt; raises ValueError/ValidationError for a request it cannot carry."""
        req = self.request
        messages = [_message(m) for m in req.get("messages") or []]
        if not messages:
            raise ValueError("request has no messages")
        if self.stream is not None:
            text, model, rid, finish = (self.stream.text, self.stream.model, self.stream.id,
                                        self.stream.finish_reason)
        else:
            resp = msgspec.json.decode(self.response_json or b"{}")
            choice = (resp.get("choices") or [{}])[0]
            text = (choice.get("message") or {}).get("content") or ""
            model, rid, finish = resp.get("model"), resp.get("id"), choice.get("finish_reason")
        sampling = {k: req[k] for k in ("temperature", "top_p", "max_tokens", "max_completion_tokens",
                                        "seed", "n") if k in req}
        meta = {"key_hash": self.key_hash, "production_response": text,
                "production_model": model or req.get("model"), "production_response_id": rid,
                "production_finish_reason": finish, "production_sampling": sampling}
        tags = [f"route:{self.route}"] + ([f"model:{req['model']}"] if req.get("model") else [])
        return Prompt(id=self.prompt_id, messages=messages, tags=tags, source="proxy",
                      metadata={k: v for k, v in meta.items() if v is not None}, created_at=self.created_at)


def _message(m: Any) -> Message:
    """An OpenAI message as a ``Message``: text parts joined, ``developer`` read as ``system``."""
    if not isinstance(m, dict):
        raise ValueError(f"a message must be an object, got {type(m).__name__}")
    content = m.get("content")
    if isinstance(content, list):
        content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    role = "system" if m.get("role") == "developer" else m.get("role")
    return msgspec.convert({**m, "role": role, "content": content}, Message)


class Capture:
    def __init__(self, publisher: Publisher, topic: Topic, size: int, registry: CollectorRegistry) -> None:
        self.publisher, self.topic = publisher, topic
        self.queue: asyncio.Queue[Captured] = asyncio.Queue(max(1, size))
        self.captures = Counter("prefstream_captures_total", "Proxied requests, by capture outcome",
                                ["outcome"], registry=registry)  # queued, published, not_sampled
        self.dropped = Counter("prefstream_captures_dropped_total", "Captures lost, by reason",
                               ["reason"], registry=registry)  # queue_full, broker, invalid
        Gauge("prefstream_capture_queue_depth", "Captures waiting for the broker",
              registry=registry).set_function(self.queue.qsize)
        self._outage = False

    def offer(self, item: Captured) -> bool:
        """Queue a capture; never waits. False (and a counted drop) when the queue is full."""
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped.labels("queue_full").inc()
            return False
        self.captures.labels("queued").inc()
        return True

    async def run(self) -> None:
        """Drain the queue until cancelled."""
        while True:
            batch = [await self.queue.get()]
            while len(batch) < BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                await self._publish(batch)
            finally:
                for _ in batch:
                    self.queue.task_done()

    async def _publish(self, batch: list[Captured]) -> None:
        records = []
        for item in batch:
            try:
                prompt = item.to_prompt()
            except (ValueError, TypeError, AttributeError, msgspec.ValidationError) as exc:
                self.dropped.labels("invalid").inc()
                logger.warning("capture %s not published: %s", item.prompt_id, exc)
                continue
            records.append((prompt.id.encode(), self.topic.codec.encode(prompt)))
        if not records:
            return
        try:
            await self.publisher.publish(self.topic.name, records)
        except BrokerUnavailable as exc:
            self.dropped.labels("broker").inc(len(records))
            if not self._outage:
                logger.warning("captures dropped while the broker is unavailable: %s", exc)
            self._outage = True
            return
        if self._outage:
            logger.info("broker back: captures are published again")
        self._outage = False
        self.captures.labels("published").inc(len(records))

    async def flush(self, timeout_s: float) -> None:
        """Wait (bounded) until every queued capture was published or dropped."""
        try:
            await asyncio.wait_for(self.queue.join(), timeout_s)
        except asyncio.TimeoutError:
            logger.warning("%d captures still queued at shutdown", self.queue.qsize())
