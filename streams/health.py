"""A worker's health: which of its stages are blocked by their environment, and why.

A failure is the message's fault (it does not decode, fails validation, a model server
rejects it as invalid, it names an objective that does not exist: a dead letter) or the
environment's (a model that cannot load, an OS or filesystem error, a backend down past its
budget, out of memory, no objective published, a sandbox that cannot contain: ``Blocked``).
``environmental()`` tells them apart. A blocked stage keeps its input, commits nothing and
takes no new work; it retries with back-off, logs each new reason once, sets
``prefstream_stage_blocked{stage,reason}``, answers 503 on ``/readyz`` and publishes the
reason and the fix on the ``health`` topic (``prefstream status``, ``prefstream run``).
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import time
from dataclasses import dataclass

from streams.runtime import Blocked
from streams.series import LoopGauge

logger = logging.getLogger(__name__)

# the values of the ``reason`` label (a Blocked with another reason is exported as "environment")
REASONS = ("no_objective", "model_missing", "model_load", "backend_down", "sandbox_unavailable", "os_error",
           "disk_full", "out_of_memory", "environment",
           # a generator following a policy (agents.backends.policy, agents.synthesis.policies)
           "policy_unknown", "adapter_unavailable", "adapter_unsupported")
RETRY_FIRST_S = 1.0  # a blocked record is tried again after 1 s, 2 s, 4 s, … at most RETRY_MAX_S
RETRY_MAX_S = 10.0
REPUBLISH_S = 5.0  # a worker re-publishes its stages' health this often (a stale entry: a gone worker)
STALE_S = 60.0  # `status` and `run` ignore entries older than this


def environmental(err: BaseException) -> Blocked | None:
    """The ``Blocked`` that ``err`` amounts to, or None when it is the message's fault."""
    if isinstance(err, Blocked):
        return err
    if isinstance(err, MemoryError):
        return Blocked("out_of_memory", "the worker ran out of memory",
                       "give the worker more memory or lower PREFSTREAM_MAX_INFLIGHT")
    if isinstance(err, OSError):
        name = f" ({err.filename})" if getattr(err, "filename", None) else ""
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            return Blocked("disk_full", f"no space left on device{name}: {err}", "free disk space on the worker")
        return Blocked("os_error", f"{type(err).__name__}{name}: {err}",
                       "fix the file, permission or device the error names, on the worker's machine")
    if getattr(err, "retryable", None) is True:  # a model backend that failed past its retries and budget
        return Blocked("backend_down", f"{type(err).__name__}: {err}",
                       "bring the model server back (or fix its URL in the settings); the stage resumes by itself")
    return None


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class BlockState:
    reason: str
    detail: str
    fix: str
    since: float  # unix time


class Health:
    """The blocked stages of one worker: set by the stages, read by the metrics server's
    ``/readyz`` (another thread: it reads a copy) and by the publisher of the health topic."""

    def __init__(self, registry, worker: str | None = None) -> None:
        self.worker = worker or worker_id()
        self.blocked: dict[str, BlockState] = {}
        self.stages: set[str] = set()
        self.version = 0  # bumped on every change, so a publisher sends only what changed
        self.gauge = LoopGauge("prefstream_stage_blocked",
                           "1 while a stage of this worker is blocked by its environment, by reason",
                           ["stage", "reason"], registry)

    def add(self, stage: str) -> None:
        self.stages.add(stage)

    def block(self, stage: str, b: Blocked) -> None:
        reason = b.reason if b.reason in REASONS else "environment"
        old = self.blocked.get(stage)
        if old is not None and (old.reason, old.detail) == (reason, b.detail):
            return
        if old is not None and old.reason != reason:
            self.gauge.labels(stage, old.reason).set(0)
        since = old.since if old is not None else time.time()
        self.blocked[stage] = BlockState(reason, b.detail, b.fix, since)
        self.gauge.labels(stage, reason).set(1)
        self.version += 1
        logger.error("%s: blocked (%s): %s. Fix: %s. Its input waits in the topic; retrying.",
                     stage, reason, b.detail, b.fix, extra={"agent": stage, "outcome": "blocked"})

    def clear(self, stage: str) -> None:
        old = self.blocked.pop(stage, None)
        if old is None:
            return
        self.gauge.labels(stage, old.reason).set(0)
        self.version += 1
        logger.warning("%s: unblocked after %.0fs (%s): processing again", stage, time.time() - old.since,
                       old.reason, extra={"agent": stage, "outcome": "unblocked"})

    def is_blocked(self, stage: str) -> bool:
        return stage in self.blocked

    def report(self) -> list[dict]:
        """The blocked stages as plain data (any thread)."""
        return [{"stage": s, "reason": b.reason, "detail": b.detail, "fix": b.fix, "since": b.since}
                for s, b in list(self.blocked.items())]

    def ready(self) -> bool:
        return not self.blocked

    def states(self):
        """Every stage's health as the wire message, blocked or not."""
        from schemas import StageHealth

        now = time.time()
        for stage in sorted(self.stages | set(self.blocked)):
            b = self.blocked.get(stage)
            yield StageHealth(worker=self.worker, stage=stage, blocked=b is not None,
                              reason=b.reason if b else None, detail=b.detail if b else "",
                              fix=b.fix if b else "", since=b.since if b else None, updated_at=now)


async def publish_health(settings, topics, health: Health) -> None:
    """Publish every stage's health on the ``health`` topic when it changes, and every
    ``REPUBLISH_S`` regardless (so a reader can tell a live worker from a gone one). A broker
    that is away is waited for: health is advice, never a reason to stop the worker."""
    import asyncio

    from streams.admin import producer

    prod = producer(settings)
    started, sent, last = False, -1, 0.0
    try:
        while True:
            if health.version != sent or time.monotonic() - last >= REPUBLISH_S:
                try:
                    if not started:
                        await prod.start()
                        started = True
                    version = health.version
                    codec = topics.health.codec
                    for state in health.states():
                        await prod.send(topics.health.name, codec.encode(state), key=state.key.encode())
                    sent, last = version, time.monotonic()
                except Exception as exc:  # noqa: BLE001 - the broker away: try again shortly
                    logger.debug("health: publish failed (%s); retrying", exc)
            await asyncio.sleep(0.5)
    finally:
        if started:
            await prod.stop()
