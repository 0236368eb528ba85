"""Settings travel whole: a value set in code reaches the workers `run` and `up` start (over a
pipe: no secret in their environment or command line)."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import msgspec

from schemas import EvaluationSpec, EvaluatorSpec, GeneratorSpec, Message, ObjectiveSpec, Prompt, SynthesisSpec
from streams.admin import create_topics, producer, reader
from streams.commands.run import publish_objective, start_worker, stop_process
from streams.topics import from_settings

SPEC = ObjectiveSpec(name="set-in-code", version=1,
                     synthesis=SynthesisSpec(candidates=2, generators=[GeneratorSpec(backend="echo", model="echo")]),
                     evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="length")]))


def test_a_setting_changed_in_code_reaches_the_worker_and_no_secret_is_in_its_environment(settings, tmp_path):
    # neither value exists in any environment variable: only the Settings object carries them
    s = settings.replace(default_objective="set-in-code", sasl_password="secret-set-in-code")
    topics = from_settings(s)
    asyncio.run(create_topics(s, topics))
    asyncio.run(publish_objective(s, topics, SPEC))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFSTREAM_")}
    proc = start_worker(s, tmp_path / "worker.log", env)
    try:
        for where in ("environ", "cmdline"):
            assert b"secret-set-in-code" not in Path(f"/proc/{proc.pid}/{where}").read_bytes()

        async def go():
            p = producer(s)
            await p.start()
            prompt = Prompt(id="p-whole", messages=[Message(role="user", content="Name a colour.")])  # names no objective
            await p.send_and_wait(topics.prompts.name, topics.prompts.codec.encode(prompt), key=b"p-whole")
            await p.stop()
            consumer = await reader(s, [topics.outcomes.name])
            try:
                while True:
                    for msgs in (await asyncio.wait_for(consumer.getmany(timeout_ms=500), 60)).values():
                        for m in msgs:
                            return msgspec.json.decode(m.value)
            finally:
                await consumer.stop()

        outcome = asyncio.run(asyncio.wait_for(go(), 120))
    finally:
        stop_process(proc)
    assert outcome["prompt_id"] == "p-whole" and outcome["objective"] == "set-in-code@1"
