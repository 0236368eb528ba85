"""For stage tests without a broker: what the runtime does with one input's outputs."""
from __future__ import annotations

from streams.runtime import Raw, Stage


async def handle(stage: Stage, raw: Raw, sent: list) -> None:
    """``raw`` through ``stage`` (retried while blocked), each output appended to ``sent`` as
    ``(topic name, key, value)`` and counted as the runtime counts an acknowledged one."""
    for out in await stage.outputs_when_ready(raw):
        sent.append((out.topic.name, out.key, out.value))
        stage.sent(out)
