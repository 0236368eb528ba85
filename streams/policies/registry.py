"""A worker's view of the policies: every version of every policy, read from ``policy-history``
and ``policies`` by background readers for as long as the worker runs (``streams.policies``
writes them). Synthesize asks it for a policy's newest version at each prompt; the tap and
the dataset API for how far behind a record's version is."""
from __future__ import annotations

import asyncio
import logging

from schemas import Policy
from streams.admin import follow_topics, wait_set
from streams.settings import Settings
from streams.topics import Topics

logger = logging.getLogger(__name__)


class PolicyRegistry:
    """name → version → Policy. ``ready`` is set once both readers have caught up with their
    topics as they were when they started, so a worker never acts on an old version."""

    def __init__(self) -> None:
        self.versions: dict[str, dict[int, Policy]] = {}
        self.ready = asyncio.Event()
        self._changed = asyncio.Condition()

    def newest(self, name: str) -> Policy | None:
        known = self.versions.get(name)
        return known[max(known)] if known else None

    def get(self, name: str, version: int) -> Policy | None:
        return self.versions.get(name, {}).get(version)

    def add(self, policy: Policy) -> None:
        known = self.versions.setdefault(policy.name, {})
        if policy.version not in known:
            newest = max(known, default=0)
            known[policy.version] = policy
            if policy.version > newest:
                logger.info("policy %s now newest", policy.ref)

    async def update(self, policy: Policy) -> None:
        self.add(policy)
        async with self._changed:
            self._changed.notify_all()

    async def wait_ready(self, timeout: float) -> bool:
        return await wait_set(self.ready, timeout)

    async def wait_for(self, name: str, timeout: float) -> Policy | None:
        """The newest version of ``name`` once caught up, waiting up to ``timeout`` for one."""
        deadline = asyncio.get_running_loop().time() + timeout
        await self.wait_ready(timeout)

        async def _wait() -> Policy:
            async with self._changed:
                await self._changed.wait_for(lambda: name in self.versions)
            return self.newest(name)

        try:
            return await asyncio.wait_for(_wait(), max(0.0, deadline - asyncio.get_running_loop().time()))
        except asyncio.TimeoutError:
            return self.newest(name)

    async def follow(self, settings: Settings, topics: Topics) -> None:
        """Read both policy topics from the start, forever; ``ready`` once both caught up."""
        def caught_up() -> None:
            logger.info("policies caught up: %s", ", ".join(
                p.ref for n in sorted(self.versions) if (p := self.newest(n))) or "none")

        await follow_topics(settings, [(topics.policy_history, self.update), (topics.policies, self.update)],
                            self.ready, caught_up)
