import asyncio

import msgspec

from schemas import Message, Prompt
from streams.metrics import Metrics
from streams.runtime import Emit, Raw, Rejected, Stage
from streams.topics import Topics
from tests.stages import handle


def make_stage(handler):
    topics, sent, metrics = Topics("ns"), [], Metrics()
    return Stage("curate", topics.prompts, topics, metrics, handler), topics, sent, metrics


def raw(value: bytes, key=b"k1") -> Raw:
    return Raw("ns.prompts", 1, 42, key, value)


def test_malformed_goes_to_deadletters_with_path_and_original_then_next_is_processed():
    async def handler(p):
        return [Emit("curated", p.id, p)]

    stage, topics, sent, metrics = make_stage(handler)
    bad = b'{"type":"prompt.v1","id":"x","messages":[{"role":"robot"}]}'
    good = topics.prompts.codec.encode(Prompt(id="ok", messages=[Message(role="user", content="hi")]))

    async def go():
        await handle(stage, raw(b"\xff\xfe not json"), sent)
        await handle(stage, raw(bad), sent)
        await handle(stage, raw(good), sent)

    asyncio.run(go())
    assert [s[0] for s in sent] == ["ns.deadletters", "ns.deadletters", "ns.curated"]
    d1 = topics.deadletters.codec.decode(sent[0][2])
    d2 = topics.deadletters.codec.decode(sent[1][2])
    assert d1.original == b"\xff\xfe not json" and d1.stage == "curate" and (d1.partition, d1.offset) == (1, 42)
    assert d2.path == "$.messages[0].role" and "role" in d2.error
    assert metrics.sample("prefstream_dead_letters_total", agent="curate", topic="prompts", outcome="malformed") == 2
    assert metrics.sample("prefstream_messages_out_total", agent="curate", topic="curated") == 1


def test_rejection_and_crash_both_become_dead_letters_with_prompt_id():
    async def handler(p):
        if p.id == "r":
            raise Rejected("not today", p.id)
        raise RuntimeError("boom")

    stage, topics, sent, metrics = make_stage(handler)
    enc = topics.prompts.codec.encode

    async def go():
        await handle(stage, raw(enc(Prompt(id="r", messages=[Message(role="user", content="x")]))), sent)
        await handle(stage, raw(enc(Prompt(id="c", messages=[Message(role="user", content="x")]))), sent)

    asyncio.run(go())
    letters = [msgspec.json.decode(s[2]) for s in sent]
    assert [(d["prompt_id"], d["error_type"]) for d in letters] == [("r", "Rejected"), ("c", "RuntimeError")]
    assert [s[1] for s in sent] == [b"r", b"c"]
    assert metrics.sample("prefstream_dead_letters_total", agent="curate", topic="prompts", outcome="rejected") == 1
    assert metrics.sample("prefstream_dead_letters_total", agent="curate", topic="prompts", outcome="error") == 1
