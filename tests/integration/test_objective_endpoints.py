"""A worker ignores an objective version naming a model server its settings do not allow, even
one written straight to the objectives topic (as anyone with write access to it could), and
keeps the previous version live (issue 26, item 3): a real worker on a real broker."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

from schemas import GeneratorSpec, Message, ObjectiveSpec, Prompt, SynthesisSpec
from streams.admin import create_topics, producer, reader
from agents.objectives import publish
from streams.topics import from_settings

ALLOWED = "http://gpu-a:8000"


def spec(version: int, base_url: str) -> ObjectiveSpec:
    gens = [GeneratorSpec(backend="echo", model="m", base_url=base_url)]
    return ObjectiveSpec(name="ep", version=version, synthesis=SynthesisSpec(candidates=2, generators=gens))


async def _curated(settings, topics, prompt: Prompt, timeout_s: float = 60.0):
    p = producer(settings)
    await p.start()
    try:
        await p.send_and_wait(topics.prompts.name, topics.prompts.codec.encode(prompt), key=prompt.id.encode())
    finally:
        await p.stop()
    consumer = await reader(settings, [topics.curated.name])
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                for m in msgs:
                    cur = topics.curated.codec.decode(m.value)
                    if cur.prompt.id == prompt.id:
                        return cur
    finally:
        await consumer.stop()
    raise AssertionError(f"{prompt.id} was not curated within {timeout_s}s")


def test_a_worker_keeps_the_allowed_version_when_a_forged_one_names_another_server(settings, workers):
    s = settings.replace(allowed_endpoints=ALLOWED)
    topics = from_settings(s)
    asyncio.run(create_topics(s, topics))
    asyncio.run(publish(s, topics, spec(1, ALLOWED + "/v1")))
    asyncio.run(publish(s, topics, spec(2, "http://attacker.example:8000/v1")))  # not through `apply`
    worker = workers.start(s, agents="curate")
    prompt = Prompt(id="p-endpoint-1", messages=[Message(role="user", content="Say hi.")], objective="ep")
    cur = asyncio.run(_curated(s, topics, prompt))
    assert cur.objective.version == 1 and cur.objective.synthesis.generators[0].base_url == ALLOWED + "/v1"
    log = Path(worker.log_path).read_text()
    assert "objective ep@2 ignored, ep@1 stays live" in log and "PREFSTREAM_ALLOWED_ENDPOINTS" in log
