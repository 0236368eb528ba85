"""Hostile input: every bad message ends in ``deadletters`` with a reason or is processed
correctly, no agent dies, and inputs == outcomes + dead letters, counted per message.

A real worker (all four agents, echo generator, math verifier) on a real broker (Tansu,
memory storage, one per module) gets the corpus of ``tests/faults/corpus.py`` (1,309
messages on ``prompts``, ``curated``, ``candidates`` and ``judgments``, each with a unique
key) and then batches drawn by hypothesis. A message's fate is found by its key: a dead
letter carries the key it came with, and a processed prompt's outcome carries its id, which
is the key. The 10 MB messages are sent with a producer allowed 16 MB (aiokafka's default
1 MB refuses them at the client; Tansu takes them).
"""
from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter

import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from schemas import EvaluationSpec, EvaluatorSpec, GeneratorSpec, ObjectiveSpec, SynthesisSpec
from streams.admin import create_topics
from streams.broker import EmbeddedBroker
from streams.metrics import Metrics
from streams.commands.run import publish_objective
from streams.runtime import MAX_ORIGINAL_BYTES, Emit, Raw, Stage
from streams.settings import load
from streams.topics import CURATED, Topics, from_settings
from tests.conftest import Workers
from tests.faults import corpus
from tests.faults.harness import Ledger

pytestmark = pytest.mark.faults

SPEC = ObjectiveSpec(name=corpus.OBJECTIVE, version=1,
                     synthesis=SynthesisSpec(candidates=2, generators=[GeneratorSpec(backend="echo", model="echo")]),
                     evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="math")]))


class Target:
    """One worker on its own broker; tells what became of each key."""

    def __init__(self, tmp, namespace: str) -> None:
        self.broker = EmbeddedBroker(log_path=tmp / "tansu.log").start()
        self.settings = load({}, broker=self.broker.address, namespace=namespace, partitions=2,
                             data_dir=str(tmp / "data"), metrics_port=0, objective_wait_s=1.0)
        self.topics = from_settings(self.settings)
        asyncio.run(create_topics(self.settings, self.topics))
        asyncio.run(publish_objective(self.settings, self.topics, SPEC))
        self.pool = Workers(tmp)
        self.worker = self.pool.start(self.settings, PREFSTREAM_OBJECTIVE_WAIT_S="1", PREFSTREAM_LOG_LEVEL="WARNING")
        self.refused: list[str] = []  # keys the producer could not send (with the reason)

    async def send(self, items: list[corpus.Bad]) -> None:
        prod = AIOKafkaProducer(bootstrap_servers=self.settings.brokers, max_request_size=16 << 20, acks="all")
        await prod.start()
        try:
            futures = []
            for item in items:
                try:
                    futures.append(await prod.send(getattr(self.topics, item.topic).name, item.value,
                                                   key=item.key.encode()))
                except Exception as exc:  # noqa: BLE001 - the honest outcome: counted, reported
                    self.refused.append(f"{item.key}: {type(exc).__name__}: {exc}")
            await asyncio.gather(*futures)
        finally:
            await prod.stop()

    def fates(self, keys: set[str], timeout: float) -> tuple[dict[str, list], dict[str, list], bool]:
        """key → dead letters carrying it, key → outcomes for it (prompt id == key)."""
        ledger = Ledger(self.topics)

        def done(lg):
            return keys <= (lg.outcomes.keys() | {d.key for d in lg.letters})

        finished = asyncio.run(ledger.follow(self.settings, done, timeout))
        dead: dict[str, list] = {k: [] for k in keys}
        for d in ledger.letters:
            if d.key in keys:
                dead[d.key].append(d)
        done_ = {k: ledger.outcomes.get(k, []) for k in keys}
        return dead, done_, finished

    def alive(self, pid: int) -> None:
        log = open(self.worker.log_path, errors="replace").read()
        assert self.worker.poll() is None and self.worker.pid == pid, log[-3000:]
        assert "Crashed reason" not in log, log[log.index("Crashed reason") - 2000:][:4000]

    def close(self) -> None:
        self.pool.stop_all()
        self.broker.stop()


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    import uuid

    t = Target(tmp_path_factory.mktemp("hostile"), "t" + uuid.uuid4().hex[:10])
    yield t
    t.close()


def test_corpus_each_message_dead_lettered_with_reason_or_processed(target):
    items = corpus.build()
    assert len(items) >= 1000
    pid = target.worker.pid
    asyncio.run(target.send(items))
    keys = {x.key for x in items}
    dead, done, finished = target.fates(keys, timeout=300)
    target.alive(pid)
    fate = {k: ("dead" if dead[k] and not done[k] else "ok" if done[k] and not dead[k] else
                "both" if dead[k] else "none") for k in keys}
    table = Counter((x.family, x.expect, fate[x.key]) for x in items)
    print(f"\nhostile corpus (Tansu, memory storage): {len(items)} messages, producer refused "
          f"{len(target.refused)}; worker pid {pid} alive")
    for (family, expect, got), n in sorted(table.items()):
        print(f"  {family:16s} expected {expect:4s} got {got:4s}: {n}")
    n_dead, n_ok = sum(v == "dead" for v in fate.values()), sum(v == "ok" for v in fate.values())
    print(f"  inputs={len(items)} outcomes={n_ok} dead_letters={n_dead} (inputs == outcomes + dead letters: "
          f"{len(items) == n_ok + n_dead})")
    for x in items:
        if x.family in ("10MB", "deep_json") and dead[x.key]:
            print(f"  {x.family}: {dead[x.key][0].stage}: {dead[x.key][0].error[:150]}")
    assert finished, sorted(k for k in keys if fate[k] == "none")[:10]
    assert not target.refused, target.refused
    wrong = [(x.key, x.family, x.expect, fate[x.key]) for x in items if fate[x.key] != x.expect]
    assert not wrong, wrong[:20]
    assert all(len(dead[k]) + len(done[k]) == 1 for k in keys), "a message ended more than once"
    assert len(items) == n_ok + n_dead
    for letters in dead.values():
        for d in letters:
            assert d.error and d.error_type and d.stage and len(d.original) <= MAX_ORIGINAL_BYTES


_keys = itertools.count()
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                     | st.text(max_size=20), lambda kids: st.lists(kids, max_size=4)
                     | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=20)
_roles = st.sampled_from(["user", "user", "system", "assistant", "tool", "robot", 7, None])
_message = st.fixed_dictionaries({"role": _roles}, optional={"content": st.text(max_size=60) | _json,
                                                             "name": st.text(max_size=5) | _json})
_fuzzed = st.fixed_dictionaries(
    {"type": st.sampled_from(["prompt.v1", "prompt.v1", "prompt.v2", "curated.v1", 1])},
    optional={"messages": st.lists(_message, max_size=3) | _json, "metadata": _json, "tags": _json,
              "objective": st.sampled_from([corpus.OBJECTIVE, None, 5]), "created_at": _json})
_valid_text = st.text(min_size=1, max_size=200)  # any text: a prompt made of it is processed


@st.composite
def message(draw):
    """(topic, value-maker, expectation): raw bytes, any JSON, a fuzzed prompt, or a valid
    prompt whose text is anything (it must be processed)."""
    kind = draw(st.sampled_from(["bytes", "json", "fuzzed", "valid"]))
    topic = draw(st.sampled_from(["prompts", "prompts", "prompts", "curated", "candidates", "judgments"]))
    if kind == "bytes":
        return topic, draw(st.binary(max_size=300)), "either"
    if kind == "json":
        return topic, json.dumps(draw(_json)).encode(), "either"
    if kind == "fuzzed":
        return "prompts", draw(_fuzzed), "either"
    return "prompts", corpus.prompt("", draw(_valid_text)), "ok"


@hsettings(max_examples=6, deadline=None, derandomize=True, database=None,
           suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=st.lists(message(), min_size=15, max_size=30))
def test_any_message_ends_once_in_dead_letters_or_an_outcome(target, batch):
    pid = target.worker.pid
    items = []
    for topic, value, expect in batch:
        key = f"hy-{next(_keys):05d}"
        if isinstance(value, dict):
            value = json.dumps({**value, "id": key} if "id" in value or value.get("type") == "prompt.v1" else value,
                               ensure_ascii=False).encode("utf-8", "surrogatepass")
        items.append(corpus.Bad(topic, key, value, "hypothesis", expect))
    asyncio.run(target.send(items))
    keys = {x.key for x in items}
    dead, done, finished = target.fates(keys, timeout=120)
    target.alive(pid)
    assert finished, sorted(k for k in keys if not dead[k] and not done[k])
    for x in items:
        assert len(dead[x.key]) + len(done[x.key]) == 1, (x, dead[x.key], done[x.key])
        if x.expect == "ok":
            assert done[x.key], (x, [d.error for d in dead[x.key]])


# the stage itself, without a broker: what the worker test above relies on

def _stage(handler):
    topics = Topics("ns")
    return Stage("curate", topics.prompts, topics, Metrics(), handler), topics


def test_stage_dead_letters_undecodable_bytes_of_every_kind_with_a_capped_original():
    async def handler(p):
        return [Emit(CURATED, p.id, p)]

    stage, topics = _stage(handler)
    bad = [b'{"type":"prompt.v1","id":"a\xffb","messages":[]}',  # invalid UTF-8 in a string
           b'{"type":"prompt.v1","id":"n","messages":[],"metadata":' + b'{"a":' * 5000 + b"1" + b"}" * 5001,
           b"x" * (10 << 20)]
    sent = [out.value for i, raw in enumerate(bad)
            for out in asyncio.run(stage.outputs(Raw("ns.prompts", 0, i, f"k{i}".encode(), raw)))]
    letters = [topics.deadletters.codec.decode(v) for v in sent]
    assert [d.key for d in letters] == ["k0", "k1", "k2"]
    assert letters[0].error_type == "UnicodeDecodeError" and letters[1].error_type == "RecursionError"
    assert len(letters[2].original) == MAX_ORIGINAL_BYTES and f"of {10 << 20} bytes kept" in letters[2].error
    assert all(len(v) < 1_000_000 for v in sent)  # every letter fits the producer's limit
