"""What every agent binding shares: decode → process → emit, with failures as data.

A stage's ``process()`` returns a list of ``Emit``; raising ``Rejected`` (or any error that
is the message's fault) turns the input into a ``DeadLetter`` carrying the reason, the msgspec
error path and the original bytes, and the agent goes on with the next message. An error that
is the environment's fault (``Blocked``, and what ``streams.health.environmental`` takes for
one) dead-letters nothing: the stage holds the input and tries it again until the cause is
fixed (``Stage.outputs_when_ready``).
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, NamedTuple


from schemas import DeadLetter
from streams.metrics import Metrics
from streams.topics import DEADLETTERS, MALFORMED, Topic, Topics, TopicSpec

logger = logging.getLogger(__name__)

_PATH = re.compile(r" - at `(\$[^`]*)`$")


@dataclass(frozen=True)
class Emit:
    topic: TopicSpec  # a declared topic (``streams.topics.CANDIDATES``), one of the stage's outputs
    key: str
    value: Any


Handler = Callable[[Any], Awaitable[list[Emit]]]


@dataclass(frozen=True)
class StageDecl:
    """One row of the pipeline table: what a stage reads, what it may write, its pure
    ``process`` and how many inputs it works on at once. ``bind(app, ctx)`` makes the
    handler the runtime calls per input (it may add the app's background tasks);
    ``worker`` is the process (deployment) the stage runs in: its own name unless it
    rides along with another stage's."""

    name: str
    input: TopicSpec
    outputs: tuple[TopicSpec, ...]  # besides ``deadletters``, which every stage may write
    process: Callable[..., Any]
    bind: Callable[[Any, Any], Handler]
    concurrency: str  # the Settings field holding it
    worker: str = ""

    @property
    def runs_in(self) -> str:
        return self.worker or self.name


@dataclass(frozen=True)
class Pipeline:
    """The whole graph, declared once: the runtime binds it, ``status`` and the deploy files
    follow it, ``prefstream pipeline`` prints it. ``setup(app, ctx, workers)`` makes what
    the stages of those workers share (models, evaluators, objectives) before they bind."""

    stages: tuple[StageDecl, ...]
    setup: Callable[[Any, Any, tuple[str, ...]], None]

    @property
    def workers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.runs_in for s in self.stages))

    def of(self, workers: tuple[str, ...]) -> tuple[StageDecl, ...]:
        unknown = set(workers) - set(self.workers)
        if unknown:
            raise ValueError(f"unknown agents {sorted(unknown)}; choose from {', '.join(self.workers)}")
        return tuple(s for s in self.stages if s.runs_in in workers)

    def table(self) -> list[dict[str, str]]:
        return [{"stage": s.name, "worker": s.runs_in, "input": s.input.short,
                 "outputs": ", ".join(t.short for t in s.outputs), "process": f"{s.process.__module__}.process",
                 "concurrency": s.concurrency} for s in self.stages]


# a dead letter keeps at most this much of the original (base64 in JSON: ~4/3 of it on the
# wire), so the letter always fits under the producer's max request size (1 MB)
MAX_ORIGINAL_BYTES = 256 * 1024
MAX_KEY_CHARS = 1000


class Undeliverable(Exception):
    """The broker will never take this output (it is too large): the input is dead-lettered.
    Transient send failures are retried by the binding's ``send`` and never end here."""


class Blocked(Exception):
    """The environment's fault, not the message's: a model that cannot load, a half-written
    cache, a backend down past its budget, a sandbox that cannot contain, no objective
    published. The input is neither dead-lettered nor committed: the stage stops taking
    work, retries with back-off and says why (log, ``prefstream_stage_blocked``, ``status``,
    readiness) until the cause is fixed.

    ``reason`` is a short, bounded label (a metric label value: ``model_missing``,
    ``no_objective``, ``sandbox_unavailable``, …); ``fix`` tells the operator what to do."""

    def __init__(self, reason: str, detail: str, fix: str) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.fix = reason, detail, fix


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


class Out(NamedTuple):
    """One encoded output of one input, ready for the producer."""

    topic: Topic
    key: bytes
    value: bytes


class Stage:
    """Runs one stage's handler over raw records: ``outputs()`` turns one record into the
    encoded messages to send (its dead letter when it is the message's fault); the runtime
    (``streams.batch``, ``streams.txn``) sends them. Testable without a broker."""

    def __init__(self, name: str, source: Topic, topics: Topics, metrics: Metrics,
                 handler: Handler, health: Any = None, outputs: tuple[TopicSpec, ...] | None = None) -> None:
        self.name, self.source, self.topics, self.metrics = name, source, topics, metrics
        self.handler = handler
        # the topics it may write (its row of the pipeline table); None: any declared topic
        self.allowed = None if outputs is None else frozenset((*outputs, DEADLETTERS))
        self.health = health  # streams.health.Health: where a blocked stage says so
        if health is not None:
            health.add(name)
        # the labelled series this stage touches on every message, looked up once
        self._in = metrics.messages_in.labels(name, source.spec.short)
        self._seconds = metrics.processing.labels(name)
        self._out: dict[str, Any] = {}

    @property
    def blocked(self) -> bool:
        return self.health is not None and self.health.is_blocked(self.name)

    async def outputs_when_ready(self, raw: Raw) -> list[Out]:
        """``outputs()``, tried again with back-off for as long as the environment blocks it
        (the stage is marked blocked meanwhile, and unblocked when it goes through)."""
        delay: float | None = None  # the back-off, set at the first block (not on the usual path)
        while True:
            try:
                outs = await self.outputs(raw, count=delay is None)
            except Blocked as b:
                if self.health is None:
                    raise
                from streams.health import RETRY_FIRST_S, RETRY_MAX_S

                self.health.block(self.name, b)
                delay = RETRY_FIRST_S if delay is None else min(RETRY_MAX_S, delay * 2)
                await asyncio.sleep(delay)
                continue
            if self.blocked:
                self.health.clear(self.name)
            return outs

    async def outputs(self, raw: Raw, count: bool = True) -> list[Out]:
        """decode → process → encode. Never raises for a bad message: the dead letter,
        with the reason, is then the one output. Raises ``Blocked`` when the environment,
        not the message, is at fault."""
        started = time.perf_counter()
        if count:  # (a blocked input tried again is counted once)
            self._in.inc()
        value = None
        try:
            value = self.source.codec.decode(raw.value)
        except Exception as err:  # noqa: BLE001 - MALFORMED, or anything else a hostile message provokes
            return [self.letter(raw, err, reason=f"not a {self.source.codec.tag} message: {err}")]
        try:
            emits = await self.handler(value)
        except Exception as err:  # noqa: BLE001 - the message's fault becomes a dead letter
            from streams.health import environmental

            blocked = environmental(err)
            if blocked is not None:
                if blocked is not err:
                    raise blocked from err
                raise
            return [self.letter(raw, err, value)]
        try:
            out = []
            for e in emits:
                if self.allowed is not None and e.topic not in self.allowed:
                    raise ValueError(f"stage {self.name} emitted to {e.topic.short}, which is not one of its "
                                     f"outputs in the pipeline table")
                topic = self.topics.of(e.topic)
                out.append(Out(topic, e.key.encode(), topic.codec.encode(e.value)))
        except Exception as err:  # noqa: BLE001 - an output that cannot be encoded: dead letter
            return [self.letter(raw, err, value)]
        self._seconds.observe(time.perf_counter() - started)
        return out

    def sent(self, out: Out) -> None:
        """Count one output the broker acknowledged (dead letters are counted when made)."""
        short = out.topic.spec.short
        if short == "deadletters":
            return
        counter = self._out.get(short)
        if counter is None:
            counter = self._out[short] = self.metrics.messages_out.labels(self.name, short)
        counter.inc()

    def letter(self, raw: Raw, err: Exception, value: Any = None, reason: str | None = None) -> Out:
        """The dead letter for ``raw``: the reason, the msgspec error path, the original bytes
        (capped, so the letter always fits under the producer's size limit)."""
        kind = "rejected" if isinstance(err, Rejected) else (
            "malformed" if isinstance(err, MALFORMED) else "error")
        if value is None and isinstance(err, Undeliverable):
            try:
                value = self.source.codec.decode(raw.value)
            except Exception:  # noqa: BLE001 - only for the prompt id
                value = None
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
        self.metrics.dead_letters.labels(self.name, self.source.spec.short, kind).inc()
        dl = self.topics.deadletters
        return Out(dl, (prompt_id or key or "").encode(), dl.codec.encode(letter))
