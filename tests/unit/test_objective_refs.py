"""The objective by reference: curated, candidate and judged sets name ``name@version`` on the
bus; every worker resolves it from the versions published, waits (blocked) for a version it has
not read yet and never takes another one instead; messages written before references, carrying
the whole spec, are still read."""
from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from agents.objectives.registry import ObjectiveRegistry
from agents.pipeline import PIPELINE
from benchmarks.common import echo_objective
from schemas import CandidateSet, Curated, JudgedSet, Message, ObjectiveSpec, Prompt
from schemas.objectives import by_reference, parse_ref
from streams.health import Health
from streams.metrics import Metrics
from streams.runtime import Blocked, Raw, Rejected, Stage
from streams.settings import load
from streams.topics import Topics

V1 = echo_objective("echo")  # the bench objective: echo generators, the length evaluator, margin 0
V2 = msgspec.structs.replace(V1, version=2, instantiation=msgspec.structs.replace(V1.instantiation, pairs="none"))
PROMPT = Prompt(id="p-1", messages=[Message(role="user", content="What is 2 plus 3?")], objective="echo")
SETTINGS = load({}, broker="127.0.0.1:9", namespace="t", objective_wait_s=0.05)


class App:
    def task(self, fn):  # the background readers (prompt stats) are not started here
        return fn


class Ctx:
    """What a stage's binding reads from the worker's context, and each stage of the pipeline
    table bound on it (``stage``: decode → handler → encode, as the worker runs it)."""

    def __init__(self, registry: ObjectiveRegistry) -> None:
        from agents.backends import Backends
        from agents.evaluators import build_evaluators

        self.settings, self.objectives, self.topics, self.metrics = SETTINGS, registry, Topics("t"), Metrics()
        self.backends = Backends(SETTINGS)
        self.evaluators = build_evaluators(self.backends, SETTINGS)
        self.handlers = {d.name: (d, d.bind(App(), self)) for d in PIPELINE.stages}

    def stage(self, name: str, health: Health | None = None) -> Stage:
        decl, handler = self.handlers[name]
        return Stage(name, self.topics.of(decl.input), self.topics, self.metrics, handler, health, decl.outputs)


async def registry(*specs: ObjectiveSpec) -> ObjectiveRegistry:
    reg = ObjectiveRegistry(SETTINGS)
    for s in specs:
        await reg.update(s)
    reg.ready.set()
    return reg


def raw(topic, value) -> Raw:
    return Raw(topic.name, 0, 0, b"p-1", topic.codec.encode(value))


def test_a_bound_message_goes_on_the_bus_by_reference_and_an_old_one_with_its_spec_is_still_read():
    cur = Curated(prompt=PROMPT, objective=V2)
    assert cur.objective_ref == "echo@2"  # the spec, where carried, decides the reference
    wire = msgspec.json.encode(by_reference(cur))
    assert b'"objective_ref":"echo@2"' in wire and b"synthesis" not in wire
    assert len(wire) < len(msgspec.json.encode(cur)) - 1000  # the spec is over a kilobyte
    back = msgspec.json.decode(wire, type=Curated)
    assert back.objective is None and back.objective_ref == "echo@2"
    old = msgspec.json.decode(msgspec.json.encode(cur).replace(b',"objective_ref":"echo@2"', b""), type=Curated)
    assert old.objective == V2 and old.objective_ref == "echo@2"  # written before references: its spec
    for cls in (Curated, CandidateSet, JudgedSet):  # naming no objective, or a malformed one: the message's fault
        with pytest.raises(msgspec.ValidationError, match="objective_ref"):
            msgspec.json.decode(b'{"type":"%s","id":"x","prompt":{"type":"prompt.v1","id":"p","messages":[]},'
                                b'"candidates":[],"judged":[]}' % cls.__struct_config__.tag.encode(), type=cls)
    with pytest.raises(msgspec.ValidationError, match=r"\$\.objective_ref"):
        msgspec.json.decode(wire.replace(b"echo@2", b"echo@two"), type=Curated)
    assert parse_ref("my.obj-1@12") == ("my.obj-1", 12)


def test_each_stage_sends_references_and_applies_the_version_named_not_the_newest():
    async def go():
        ctx = Ctx(await registry(V1, V2))  # v2 is live: curate binds to it, and makes no pair
        out = await ctx.stage("curate").outputs(raw(ctx.topics.prompts, PROMPT))
        assert [o.topic.spec.short for o in out] == ["curated"] and b"synthesis" not in out[0].value
        assert ctx.topics.curated.codec.decode(out[0].value).objective_ref == "echo@2"
        # a prompt curated under v1 before v2 went live: every later stage applies v1 (a pair)
        sent = {}
        msg = raw(ctx.topics.curated, by_reference(Curated(prompt=PROMPT, objective=V1)))
        for name in ("synthesize", "evaluate", "instantiate"):
            outs = await ctx.stage(name).outputs(msg)
            sent.update({o.topic.spec.short: o for o in outs})
            assert "deadletters" not in sent, sent
            assert all(b'"synthesis"' not in o.value for o in outs)  # no spec on any topic
            msg = Raw(outs[0].topic.name, 0, 0, outs[0].key, outs[0].value)
        assert ctx.topics.judgments.codec.decode(sent["judgments"].value).objective_ref == "echo@1"
        outcome = ctx.topics.outcomes.codec.decode(sent["outcomes"].value)
        assert (outcome.objective, outcome.status) == ("echo@1", "records")

    asyncio.run(go())


def test_a_version_not_read_yet_blocks_the_stage_until_it_is_published_then_goes_through():
    async def go():
        reg = await registry(V1)
        ctx = Ctx(reg)
        health = Health(Metrics().registry, worker="w:1")
        stage = ctx.stage("synthesize", health)
        task = asyncio.create_task(stage.outputs_when_ready(raw(ctx.topics.curated, Curated(prompt=PROMPT,
                                                                                             objective_ref="echo@2"))))
        deadline = time.monotonic() + 10
        while not health.is_blocked("synthesize"):  # it waits objective_wait_s, then blocks
            assert not task.done() and time.monotonic() < deadline, task
            await asyncio.sleep(0.01)
        b = health.blocked["synthesize"]
        assert b.reason == "objective_unknown" and "echo@2" in b.detail and "holds versions 1" in b.detail
        assert "prefstream objective apply" in b.fix
        await reg.update(V2)  # published after the worker read the history
        outs = await asyncio.wait_for(task, 15)
        assert [o.topic.spec.short for o in outs] == ["candidates"]  # no dead letter
        assert ctx.topics.candidates.codec.decode(outs[0].value).objective_ref == "echo@2"
        assert not health.is_blocked("synthesize")

    asyncio.run(go())


def test_resolve_never_guesses_keeps_a_carried_spec_and_refuses_what_this_worker_refused():
    async def go():
        reg = await registry(V1, V2)
        cset = CandidateSet(id="s", prompt=PROMPT, objective_ref="echo@1", candidates=[])
        assert (await reg.resolve(cset, 0)).objective == V1  # the version named, though v2 is live
        with pytest.raises(Blocked) as e:
            await reg.resolve(msgspec.structs.replace(cset, objective_ref="echo@3"), 0.01)
        assert e.value.reason == "objective_unknown"
        with pytest.raises(Blocked, match="holds no version of 'other'"):
            await reg.resolve(msgspec.structs.replace(cset, objective_ref="other@1"), 0.01)
        carried = msgspec.structs.replace(V2, principles=["as it was sent"])
        old = CandidateSet(id="s", prompt=PROMPT, objective=carried, candidates=[])
        assert (await reg.resolve(old, 0)).objective is carried
        # a version naming a model server this worker does not allow: never run, the message refused
        remote = msgspec.structs.replace(V1, version=4, synthesis=msgspec.structs.replace(
            V1.synthesis, generators=[msgspec.structs.replace(g, backend="openai", base_url="http://10.9.9.9/v1")
                                      for g in V1.synthesis.generators]))
        await reg.update(remote)
        assert "echo@4" in reg.refused and reg.get("echo").version == 2
        with pytest.raises(Rejected, match="echo@4 cannot run on this worker"):
            await reg.resolve(msgspec.structs.replace(cset, objective_ref="echo@4"), 0.01)
        with pytest.raises(Rejected, match="not an allowed model server"):  # carried by an old message: the same
            await reg.resolve(msgspec.structs.replace(old, objective=remote), 0)
        history_only = msgspec.structs.replace(V1, version=5)
        await reg.update(history_only, live=False)  # from the history topic: resolvable, not live
        assert reg.versions["echo@5"] == history_only and reg.get("echo").version == 2

    asyncio.run(go())
