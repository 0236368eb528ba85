"""A worker's live objectives: name → newest valid spec, read from the ``objectives`` topic
by a background reader for as long as the worker runs (``agents.objectives`` writes them)."""
from __future__ import annotations

import asyncio
import logging

from schemas import ObjectiveSpec
from streams import endpoints
from agents.objectives import IDLE_POLLS, caught_up, problems
from streams.settings import Settings
from streams.topics import Topics

logger = logging.getLogger(__name__)


class ObjectiveRegistry:
    """name → newest valid ObjectiveSpec, kept current by a background reader.

    Valid by this worker's ``settings``: a spec naming a model server they do not allow is
    ignored (logged with the reason) and the previous version stays live.

    ``ready`` is set once the reader has caught up with the topic as it was when it
    started, so a worker started after several versions never acts on an old one."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings  # the worker's: decides which model servers a spec may name
        self.specs: dict[str, ObjectiveSpec] = {}
        self.ready = asyncio.Event()
        self._changed = asyncio.Condition()

    def get(self, name: str) -> ObjectiveSpec | None:
        return self.specs.get(name)

    async def update(self, spec: ObjectiveSpec) -> None:
        old = self.specs.get(spec.name)
        found = problems(spec)
        if self.settings is not None:
            found += endpoints.problems(spec, self.settings)
        if found:
            logger.error("objective %s ignored, %s stays live: %s", spec.ref, old.ref if old else "nothing",
                         "; ".join(found))
        elif old is None or spec.version >= old.version:
            self.specs[spec.name] = spec
            logger.info("objective %s now live", spec.ref)
        async with self._changed:
            self._changed.notify_all()

    async def wait_ready(self, timeout: float) -> bool:
        if self.ready.is_set():  # the usual case: no timer, no task per prompt
            return True
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def wait_for(self, name: str, timeout: float) -> ObjectiveSpec | None:
        """The newest spec of ``name`` once caught up, waiting up to ``timeout`` for it."""
        deadline = asyncio.get_running_loop().time() + timeout
        await self.wait_ready(timeout)

        async def _wait() -> ObjectiveSpec:
            async with self._changed:
                await self._changed.wait_for(lambda: name in self.specs)
            return self.specs[name]

        try:
            return await asyncio.wait_for(_wait(), max(0.0, deadline - asyncio.get_running_loop().time()))
        except asyncio.TimeoutError:
            return self.specs.get(name)

    async def follow(self, settings: Settings, topics: Topics) -> None:
        """Read the objectives topic from the start, forever; ``ready`` once caught up."""
        from streams.admin import follow

        ends: dict = {}

        async def after_poll(consumer, idle: int) -> None:
            if not ends:  # what there was to read when the reader started
                ends.update(await consumer.end_offsets(list(consumer.assignment())))
            if not self.ready.is_set() and (idle >= IDLE_POLLS or await caught_up(consumer, ends)):
                self.ready.set()
                logger.info("objectives caught up: %s", ", ".join(s.ref for s in self.specs.values()) or "none")

        await follow(settings, topics.objectives, self.update, after_poll)
