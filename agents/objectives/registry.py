"""A worker's objectives: the live spec per name (what curate binds prompts to) and every
published version (what the later stages resolve a message's ``name@version`` to), read
from the ``objectives`` and ``objective-history`` topics by a background reader for as long
as the worker runs (``agents.objectives`` writes them)."""
from __future__ import annotations

import asyncio
import logging
from typing import TypeVar

import msgspec

from agents.objectives import HISTORY, problems
from streams.admin import follow_topics, wait_set
from schemas import ObjectiveSpec
from schemas.objectives import by_reference
from streams import endpoints
from streams.runtime import Blocked, Emit, Rejected
from streams.settings import Settings
from streams.topics import Topics

logger = logging.getLogger(__name__)

Bound = TypeVar("Bound")  # Curated | CandidateSet | JudgedSet


class ObjectiveRegistry:
    """name → newest valid ObjectiveSpec (``specs``) and ``name@version`` → every valid
    version published (``versions``), kept current by a background reader.

    Valid by this worker's ``settings``: a spec naming a model server they do not allow is
    ignored (logged with the reason) and the previous version stays live; a message bound
    to it is refused (``refused``).

    ``ready`` is set once the reader has caught up with the topics as they were when it
    started, so a worker started after several versions never acts on an old one."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings  # the worker's: decides which model servers a spec may name
        self.specs: dict[str, ObjectiveSpec] = {}
        self.versions: dict[str, ObjectiveSpec] = {}
        self.refused: dict[str, str] = {}  # name@version → why this worker will not run it
        self.ready = asyncio.Event()
        self._changed = asyncio.Condition()

    def get(self, name: str) -> ObjectiveSpec | None:
        return self.specs.get(name)

    async def update(self, spec: ObjectiveSpec, live: bool = True) -> None:
        """Take one published version; ``live``: read from the ``objectives`` topic (else the
        history), so it may become the live version of its name."""
        old = self.specs.get(spec.name)
        found = self._problems(spec)
        if found:
            self.refused[spec.ref] = "; ".join(found)
            if live:  # said where it would have gone live (the history holds it too)
                logger.error("objective %s ignored, %s stays live: %s", spec.ref, old.ref if old else "nothing",
                             self.refused[spec.ref])
        else:
            self.versions[spec.ref] = spec
            if live and (old is None or spec.version >= old.version):
                self.specs[spec.name] = spec
                logger.info("objective %s now live", spec.ref)
        async with self._changed:
            self._changed.notify_all()

    def _problems(self, spec: ObjectiveSpec) -> list[str]:
        found = problems(spec)
        if self.settings is not None:
            found += endpoints.problems(spec, self.settings)
        return found

    async def wait_ready(self, timeout: float) -> bool:
        return await wait_set(self.ready, timeout)

    async def _wait(self, known, timeout: float) -> bool:
        """Whether ``known()`` holds within ``timeout`` (checked at every update)."""
        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(known)

        try:
            await asyncio.wait_for(wait(), max(0.0, timeout))
            return True
        except asyncio.TimeoutError:
            return known()

    async def wait_for(self, name: str, timeout: float) -> ObjectiveSpec | None:
        """The newest spec of ``name`` once caught up, waiting up to ``timeout`` for it."""
        deadline = asyncio.get_running_loop().time() + timeout
        await self.wait_ready(timeout)
        await self._wait(lambda: name in self.specs, deadline - asyncio.get_running_loop().time())
        return self.specs.get(name)

    async def resolve(self, msg: Bound, timeout: float) -> Bound:
        """``msg`` with the spec of the version it names attached (``objective``), for the
        stage's ``process()``. A message that carries its spec (written before references)
        keeps it, checked as a published version is. A version not read yet is waited for up
        to ``timeout``, then the stage is blocked (``objective_unknown``) until it is: never
        another version instead. A version this worker refused is the message's fault
        (``Rejected``)."""
        if msg.objective is not None:
            found = self._problems(msg.objective)
            if found:
                raise Rejected(f"objective {msg.objective_ref} cannot run on this worker: {'; '.join(found)}",
                               msg.prompt.id)
            return msg
        ref = msg.objective_ref
        spec = self.versions.get(ref)
        if spec is None:
            deadline = asyncio.get_running_loop().time() + timeout
            await self.wait_ready(timeout)
            known = lambda: ref in self.versions or ref in self.refused  # noqa: E731
            await self._wait(known, deadline - asyncio.get_running_loop().time())
            spec = self.versions.get(ref)
        if spec is None:
            if ref in self.refused:
                raise Rejected(f"objective {ref} cannot run on this worker: {self.refused[ref]}", msg.prompt.id)
            raise self.unknown(ref)
        return msgspec.structs.replace(msg, objective=spec)

    def unknown(self, ref: str) -> Blocked:
        name = ref.rpartition("@")[0]
        have = sorted(spec.version for spec in self.versions.values() if spec.name == name)
        state = "has not read its objectives yet" if not self.ready.is_set() else (
            f"holds versions {', '.join(map(str, have))} of {name!r}" if have else f"holds no version of {name!r}")
        return Blocked("objective_unknown", f"a message names objective {ref}, which this worker {state}",
                       f"check that the worker reads this namespace's {HISTORY} topic (`prefstream objective history "
                       f"{name}` lists what was published); {ref} must be published there (`prefstream objective "
                       "apply FILE` publishes the next version); the stage goes on once it is read")

    async def follow(self, settings: Settings, topics: Topics) -> None:
        """Read the objectives and history topics from the start, forever (a reader each,
        ``streams.admin.follow_topics``); ``ready`` once caught up with both."""
        def caught_up() -> None:
            logger.info("objectives caught up: %s", ", ".join(s.ref for s in self.specs.values()) or "none")

        await follow_topics(settings, [(topics.objectives, lambda spec: self.update(spec, live=True)),
                                       (getattr(topics, HISTORY), lambda spec: self.update(spec, live=False))],
                            self.ready, caught_up)


def sent_by_reference(emits: list[Emit]) -> list[Emit]:
    """A stage's outputs as they go on the bus: a message bound to an objective names it
    (``objective_ref``) and leaves the spec out (``schemas.objectives.by_reference``)."""
    return [Emit(e.topic, e.key, by_reference(e.value)) for e in emits]
