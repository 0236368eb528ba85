"""What every agent binding shares: decode → process → emit, with failures as data.

A stage's ``process()`` returns a list of ``Emit``; raising ``Rejected`` (or any error)
turns the input into a ``DeadLetter`` carrying the reason, the msgspec error path and the
original bytes, and the agent goes on with the next message.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable


from schemas import DeadLetter
from streams.metrics import Metrics
from streams.topics import MALFORMED, Topic, Topics

logger = logging.getLogger(__name__)

_PATH = re.compile(r" - at `(\$[^`]*)`$")


@dataclass(frozen=True)
class Emit:
    topic: str  # the topic's short name: "candidates"
    key: str
    value: Any


# a dead letter keeps at most this much of the original (base64 in JSON: ~4/3 of it on the
# wire), so the letter always fits under the producer's max request size (1 MB)
MAX_ORIGINAL_BYTES = 256 * 1024
MAX_KEY_CHARS = 1000


class Undeliverable(Exception):
    """The broker will never take this output (it is too large): the input is dead-lettered.
    Transient send failures are retried by the binding's ``send`` and never end here."""


class Rejected(Exception):
    """A message this stage refuses, with the reason (it is dead-lettered, not retried)."""

    def __init__(self, reason: str, prompt_id: str | None = None) -> None:
        super().__init__(reason)
        self.prompt_id = prompt_id


def error_path(err: Exception) -> str | None:
    m = _PATH.search(str(err))
    return m.group(1) if m else None


def _prompt_id_of(value: Any) -> str | None:
    for attr in ("prompt_id", "prompt"):
        v = getattr(value, attr, None)
        if isinstance(v, str):
            return v
        if v is not None and isinstance(getattr(v, "id", None), str):
            return v.id
    return getattr(value, "id", None) if type(value).__name__ == "Prompt" else None


@dataclass
class Raw:
    """One consumed record, as the transport hands it over."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


class Stage:
    """Runs one stage's handler over raw records and sends what it emits.

    ``send(topic: Topic, key: bytes, value: bytes)`` is supplied by the binding (faust's
    topic.send in a worker) so this class is testable without a broker.
    """

    def __init__(self, name: str, source: Topic, topics: Topics, metrics: Metrics,
                 handler: Callable[[Any], Awaitable[list[Emit]]],
                 send: Callable[[Topic, bytes, bytes], Awaitable[None]]) -> None:
        self.name, self.source, self.topics, self.metrics = name, source, topics, metrics
        self.handler, self.send = handler, send

    async def handle(self, raw: Raw) -> None:
        started = time.perf_counter()
        self.metrics.messages_in.labels(self.name, self.source.spec.short).inc()
        value = None
        try:
            value = self.source.codec.decode(raw.value)
        except Exception as err:  # noqa: BLE001 - MALFORMED, or anything else a hostile message provokes
            await self.dead_letter(raw, err, reason=f"not a {self.source.codec.tag} message: {err}")
            return
        try:
            emits = await self.handler(value)
        except Exception as err:  # noqa: BLE001 - every failure becomes a dead letter
            await self.dead_letter(raw, err, value)
            return
        out = []
        try:
            for e in emits:
                topic = getattr(self.topics, e.topic)
                out.append((topic, e.key.encode(), topic.codec.encode(e.value)))
        except Exception as err:  # noqa: BLE001 - an output that cannot be encoded: dead letter
            await self.dead_letter(raw, err, value)
            return
        # ``send`` returns once the broker has acknowledged the output, so when this returns
        # (and the input's offset may be committed) every output is stored. The sends are
        # queued in order and acknowledged together: one round trip per input, not per output.
        sent = await asyncio.gather(*(self.send(*o) for o in out), return_exceptions=True)
        for e, result in zip(emits, sent):
            if isinstance(result, Undeliverable):
                await self.dead_letter(raw, result, value)
                return
            if isinstance(result, BaseException):
                raise result
            self.metrics.messages_out.labels(self.name, e.topic).inc()
        self.metrics.processing.labels(self.name).observe(time.perf_counter() - started)

    async def dead_letter(self, raw: Raw, err: Exception, value: Any = None, reason: str | None = None) -> None:
        kind = "rejected" if isinstance(err, Rejected) else (
            "malformed" if isinstance(err, MALFORMED) else "error")
        prompt_id = getattr(err, "prompt_id", None) or (_prompt_id_of(value) if value is not None else None)
        key = raw.key.decode("utf-8", "replace")[:MAX_KEY_CHARS] if raw.key else None
        prompt_id = prompt_id[:MAX_KEY_CHARS] if prompt_id else prompt_id
        reason = reason or str(err)
        if len(raw.value) > MAX_ORIGINAL_BYTES:
            reason = (f"{reason[:1500]} [original truncated: the first {MAX_ORIGINAL_BYTES} "
                      f"of {len(raw.value)} bytes kept]")
        logger.warning("%s: dead letter from %s[%d]@%d (%s): %s", self.name, raw.topic, raw.partition,
                       raw.offset, type(err).__name__, err, exc_info=kind == "error",
                       extra={"agent": self.name, "topic": raw.topic, "partition": raw.partition,
                              "offset": raw.offset, "error_type": type(err).__name__, "outcome": kind})
        letter = DeadLetter(
            stage=self.name, error_type=type(err).__name__, error=reason[:2000], path=error_path(err),
            original=raw.value[:MAX_ORIGINAL_BYTES], topic=raw.topic, partition=raw.partition, offset=raw.offset, key=key,
            prompt_id=prompt_id, created_at=time.time(),
        )
        dl = self.topics.deadletters
        try:
            await self.send(dl, (prompt_id or key or "").encode(), dl.codec.encode(letter))
        except Undeliverable:  # cannot happen with the caps above; never let it stop the agent
            logger.error("%s: the dead letter for %s[%d]@%d was refused by the broker", self.name, raw.topic,
                         raw.partition, raw.offset)
            kind = "undeliverable"
        self.metrics.dead_letters.labels(self.name, self.source.spec.short, kind).inc()
