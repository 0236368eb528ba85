"""The newest spec of every objective, read from the compacted ``objectives`` topic.

The reader takes the newest version per name itself, so it is right on brokers that do
not compact (Tansu) as well as on Apache Kafka.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import msgspec
import yaml

from schemas import ObjectiveSpec
from streams.admin import reader
from streams.settings import Settings
from streams.topics import Topics

logger = logging.getLogger(__name__)

DEFAULT_OBJECTIVE = Path(__file__).with_name("default_objective.yaml")


class ObjectiveError(ValueError):
    pass


def load_objective(path: str | Path | None = None) -> ObjectiveSpec:
    """An objective from YAML (the bundled default when ``path`` is None)."""
    path = Path(path) if path else DEFAULT_OBJECTIVE
    if not path.is_file():
        raise ObjectiveError(f"objective file {path} does not exist; see `streams/default_objective.yaml`")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ObjectiveError(f"{path}: an objective is a YAML mapping with at least `name`")
    data.setdefault("type", "objective.v1")
    try:
        return msgspec.convert(data, ObjectiveSpec)
    except msgspec.ValidationError as e:
        raise ObjectiveError(f"{path}: {e}") from None


class ObjectiveRegistry:
    """name → newest ObjectiveSpec, kept current by a background reader."""

    def __init__(self) -> None:
        self.specs: dict[str, ObjectiveSpec] = {}
        self._changed = asyncio.Condition()

    def get(self, name: str) -> ObjectiveSpec | None:
        return self.specs.get(name)

    async def update(self, spec: ObjectiveSpec) -> None:
        old = self.specs.get(spec.name)
        if old is None or spec.version >= old.version:
            self.specs[spec.name] = spec
            logger.info("objective %s now live", spec.ref)
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, name: str, timeout: float) -> ObjectiveSpec | None:
        async def _wait() -> ObjectiveSpec:
            async with self._changed:
                await self._changed.wait_for(lambda: name in self.specs)
            return self.specs[name]

        if name in self.specs:
            return self.specs[name]
        try:
            return await asyncio.wait_for(_wait(), timeout)
        except asyncio.TimeoutError:
            return None

    async def follow(self, settings: Settings, topics: Topics) -> None:
        """Read the objectives topic from the start, forever."""
        codec = topics.objectives.codec
        consumer = await reader(settings, [topics.objectives.name])
        try:
            async for msg in consumer:
                try:
                    await self.update(codec.decode(msg.value))
                except msgspec.DecodeError as e:
                    logger.error("bad objective at %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, e)
        finally:
            await consumer.stop()
