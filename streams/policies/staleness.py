"""The staleness bound: records from a policy more than K versions behind the newest published
version of that policy are skipped and counted (``prefstream tap --max-policy-lag K``,
``streams.commands.tap.dataset.rows(..., max_policy_lag=K)``), the knob every asynchronous trainer has
(TRL's ``max_staleness``, AReaL's ``max_head_offpolicyness``, prime-rl's ``max_async_level``).

A record is as stale as its stalest side: every ``name@version`` it carries (the record's
``policy`` and each side's) is checked. Records with no policy are never skipped; nor are
those of a policy whose versions the reader does not know (yet). Given a ``Metrics``, each skip
also counts on ``prefstream_policy_stale_skipped_total{policy=NAME}`` (the name only: bounded).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import Callable, Iterator

from schemas.policies import parse_ref

logger = logging.getLogger(__name__)


def policy_refs(record) -> list[tuple[str, int]]:
    """Every ``(name, version)`` a record carries: its own ``policy`` and its sides'."""
    sides = [getattr(record, a, None) for a in ("chosen_side", "rejected_side", "side")]
    sides += [r.side for r in getattr(record, "ranked", None) or []]
    refs = [getattr(record, "policy", None)] + [s.policy for s in sides if s is not None]
    out = []
    for ref in refs:
        if ref:
            name, version = parse_ref(ref)
            if version is not None:
                out.append((name, version))
    return out


class Staleness:
    """``keep(record)``: False (and counted) when the record lags its policy's newest version by
    more than ``max_lag``. ``newest(name)`` is the newest published version, or None."""

    def __init__(self, max_lag: int | None, newest: Callable[[str], int | None], metrics=None) -> None:
        if max_lag is not None and max_lag < 0:
            raise ValueError(f"max_policy_lag must be >= 0 (0: only the newest version), not {max_lag}")
        self.max_lag, self.newest, self.metrics = max_lag, newest, metrics
        self.by_policy: Counter[str] = Counter()  # "name@version" → records skipped

    @property
    def skipped(self) -> int:
        return sum(self.by_policy.values())

    def lag(self, record) -> int:
        """How many versions the record's stalest side is behind (0 where none is known)."""
        lags = [newest - v for name, v in policy_refs(record) if (newest := self.newest(name)) is not None]
        return max([0, *lags])

    def keep(self, record) -> bool:
        if self.max_lag is None or self.lag(record) <= self.max_lag:
            return True
        ref = getattr(record, "policy", None)
        self.by_policy[ref or "?"] += 1
        if self.metrics is not None:
            name = parse_ref(ref)[0] if ref else next((n for n, _ in policy_refs(record)), "?")
            self.metrics.child(self.metrics.policy_stale_skipped, name).inc()
        return False

    def filter(self, records: Iterator) -> Iterator:
        for r in records:
            if self.keep(r):
                yield r

    def summary(self) -> dict:
        return {"max_policy_lag": self.max_lag, "skipped_stale": self.skipped, "skipped_by_policy": dict(self.by_policy)}


def from_registry(max_lag: int | None, registry, metrics=None) -> Staleness:
    """A bound over a ``PolicyRegistry``'s newest versions (kept current by its reader)."""
    def newest(name: str) -> int | None:
        p = registry.newest(name)
        return p.version if p is not None else None

    return Staleness(max_lag, newest, metrics)


@contextlib.asynccontextmanager
async def following(settings, topics, max_lag: int | None, wait_s: float = 30.0, metrics=None):
    """A ``Staleness`` whose newest versions a ``PolicyRegistry`` reads in the background for as
    long as the block runs (caught up first, so early records are judged against every version
    published so far). ``max_lag`` None: no reader, nothing skipped."""
    from streams.policies.registry import PolicyRegistry

    registry = PolicyRegistry()
    if max_lag is None:
        yield from_registry(None, registry, metrics)
        return
    task = asyncio.create_task(registry.follow(settings, topics))
    ready = asyncio.create_task(registry.ready.wait())
    try:
        await asyncio.wait([task, ready], timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        if task.done():  # the reader failed (a missing topic): say so rather than judge on nothing
            task.result()
        if not registry.ready.is_set():
            logger.warning("the policy topics were not read within %.0f s; staleness is judged on what was", wait_s)
        yield from_registry(max_lag, registry, metrics)
    finally:
        for t in (task, ready):
            t.cancel()
        await asyncio.gather(task, ready, return_exceptions=True)
