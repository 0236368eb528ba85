import asyncio

import msgspec

from schemas import Message, Prompt
from streams.metrics import Metrics
from streams.runtime import Emit, Raw, Rejected, Stage
from streams.topics import CURATED, Topics
from tests.stages import handle


def make_stage(handler):
    topics, sent, metrics = Topics("ns"), [], Metrics()
    return Stage("curate", topics.prompts, topics, metrics, handler), topics, sent, metrics


def raw(value: bytes, key=b"k1") -> Raw:
    return Raw("ns.prompts", 1, 42, key, value)


def test_malformed_goes_to_deadletters_with_path_and_original_then_next_is_processed():
    async def handler(p):
        return [Emit(CURATED, p.id, p)]

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


def test_an_output_outside_the_stage_row_of_the_pipeline_table_is_a_dead_letter_not_a_send():
    from streams.topics import OUTCOMES, PREFERENCES

    async def handler(p):
        return [Emit(PREFERENCES if p.id == "stray" else CURATED, p.id, p)]

    topics, sent, metrics = Topics("ns"), [], Metrics()
    stage = Stage("curate", topics.prompts, topics, metrics, handler, outputs=(CURATED, OUTCOMES))
    codec = topics.prompts.codec

    async def go():
        for pid in ("stray", "fine"):
            await handle(stage, raw(codec.encode(Prompt(id=pid, messages=[Message(role="user", content="hi")]))), sent)

    asyncio.run(go())
    assert [s[0] for s in sent] == ["ns.deadletters", "ns.curated"]
    letter = topics.deadletters.codec.decode(sent[0][2])
    assert "preferences" in letter.error and "pipeline table" in letter.error and letter.prompt_id == "stray"


def test_the_pipeline_table_is_what_the_workers_bind_and_the_readme_shows():
    from agents.pipeline import PIPELINE
    from streams.commands.pipeline import markdown
    from tests.unit.test_layers import ROOT

    for decl in PIPELINE.stages:  # each stage's own emits name only declared topics
        assert decl.input not in decl.outputs and decl.process.__module__ == decl.bind.__module__
    assert PIPELINE.workers == ("curate", "synthesize", "evaluate", "instantiate")
    assert [d.name for d in PIPELINE.of(("evaluate",))] == ["evaluate", "relabel"]
    assert markdown(PIPELINE.table()) in (ROOT / "README.md").read_text(), "README's table: prefstream pipeline --markdown"
