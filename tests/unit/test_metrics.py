"""The metrics factory and its two wrappers, the JSON log format, and the pure parts of
`status` and `deadletters`."""
from __future__ import annotations

import asyncio
import json
import logging
import socket
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest

from agents.backends.base import BackendError, GenRequest
from agents.backends.echo import EchoGenerator
from agents.backends.registry import Backends
from schemas import (Candidate, DeadLetter, GeneratorSpec, Judged, JudgedSet, Message, ObjectiveSpec, Outcome,
                     PreferenceRecord, Prompt, Sampling, Score, Side)
from streams.commands.deadletters import replay_plan, select
from streams.logs import JsonFormatter, check_format, dict_config
from streams.metrics import MeteredGenerator, Metrics, objective_of
from streams.runtime import Emit
from streams.topics import JUDGMENTS, OUTCOMES, PREFERENCES, PREFERENCES_SHADOW
from streams.settings import SettingsError, load
from streams.commands.reports.status import _lag_per_topic, Ends, dead_letter_summary, newest_objectives

OBJ = ObjectiveSpec(name="obj", version=4)
PROMPT = Prompt(id="p1", messages=[Message(role="user", content="hi")])


def _record(kind_objective: str = "obj@4") -> PreferenceRecord:
    side = Side(candidate_id="c", model="m", score=1.0)
    return PreferenceRecord(id="r1", prompt_id="p1", objective=kind_objective, prompt=[], chosen=[], rejected=[],
                            score_chosen=1.0, score_rejected=0.0, margin=1.0, chosen_side=side, rejected_side=side)


def test_instrument_counts_records_outcomes_and_versions():
    m = Metrics()

    async def handler(value):
        return [Emit(PREFERENCES, "p1", _record()), Emit(PREFERENCES_SHADOW, "p1", _record("shadowed@2")),
                Emit(OUTCOMES, "p1", Outcome(prompt_id="p1", objective="obj@4", status="records"))]

    wrapped = m.instrument(handler)
    asyncio.run(wrapped(None))
    asyncio.run(wrapped(None))
    assert m.sample("prefstream_records_total", objective="obj", kind="pair") == 2
    assert m.sample("prefstream_outcomes_total", objective="obj", outcome="records") == 2
    assert m.sample("prefstream_objective_version", objective="obj") == 4
    assert m.sample("prefstream_records_total", objective="shadowed", kind="pair") == 2
    assert m.sample("prefstream_objective_version", objective="shadowed") == 2


def test_judged_sets_count_scorings_by_result():
    m = Metrics()
    cand = Candidate(id="c", text="t", backend="echo", model="echo", sampling=Sampling(temperature=1, top_p=1,
                                                                                       max_tokens=1))
    scores = [Score(evaluator="math", value=1.0), Score(evaluator="judge", value=None, error="parse_failure"),
              Score(evaluator="judge", value=None, error="HTTP 500")]
    jset = JudgedSet(id="j", prompt=PROMPT, objective=OBJ, judged=[Judged(candidate=cand, scores=scores, score=1.0)])
    m.observe([Emit(JUDGMENTS, "p1", jset)])
    assert m.sample("prefstream_evaluator_scores_total", objective="obj", evaluator="math", result="scored") == 1
    assert m.sample("prefstream_evaluator_scores_total", objective="obj", evaluator="judge",
                    result="parse_failure") == 1
    assert m.sample("prefstream_evaluator_scores_total", objective="obj", evaluator="judge", result="error") == 1
    assert m.sample("prefstream_objective_version", objective="obj") == 4


def test_objective_of_reads_specs_and_refs():
    assert objective_of(SimpleNamespace(objective=OBJ)) == ("obj", 4)
    assert objective_of(SimpleNamespace(objective="a@b@12")) == ("a@b", 12)
    assert objective_of(SimpleNamespace(objective="plain")) == ("plain", None)
    assert objective_of(object()) == (None, None)


def test_metered_generator_records_requests_tokens_and_errors():
    m = Metrics()
    gen = MeteredGenerator(EchoGenerator("e1"), m)
    out = asyncio.run(gen.generate(GenRequest(prompt="one two three", n=2, max_tokens=4, seed=1)))
    assert m.sample("prefstream_model_requests_total", backend="echo", model="e1", outcome="ok") == 1
    assert m.sample("prefstream_model_input_tokens_total", backend="echo", model="e1") == sum(g.tokens_in for g in out)
    assert m.sample("prefstream_model_output_tokens_total", backend="echo", model="e1") == 8
    assert m.sample("prefstream_model_request_seconds_count", backend="echo", model="e1") == 1

    class Failing:
        backend, model = "openai", "down"

        async def generate(self, req):
            raise BackendError("gave up", retryable=True)

    bad = MeteredGenerator(Failing(), m)
    with pytest.raises(BackendError):
        asyncio.run(bad.generate(GenRequest(prompt="x")))
    assert m.sample("prefstream_model_requests_total", backend="openai", model="down", outcome="error") == 1
    assert m.sample("prefstream_model_requests_in_flight", backend="openai", model="down") == 0


def test_backends_registry_wraps_generators_only_when_given_metrics():
    spec = GeneratorSpec(backend="echo", model="e")
    assert isinstance(Backends(load({})).get(spec), EchoGenerator)
    m = Metrics()
    wrapped = Backends(load({}), metrics=m).get(spec)
    assert isinstance(wrapped, MeteredGenerator) and wrapped.backend == "echo" and wrapped.model == "e"


def test_serve_on_a_busy_port_logs_the_fix_and_goes_on(caplog):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with caplog.at_level(logging.ERROR):
            assert Metrics().serve(port) is False
    assert "--metrics-port" in caplog.text
    assert Metrics().serve(0) is False


def test_series_scrape_as_prometheus_text():
    m = Metrics()
    seconds = m.processing.labels("curate")
    for v in (0.0005, 0.001, 0.003, 7.0, 500.0):  # 0.001 sits in its own bucket (le: at most)
        seconds.observe(v)
    m.messages_in.labels("curate", "prompts").inc()
    m.messages_in.labels("curate", "prompts").inc(2)
    gauge = m.in_flight.labels("curate")
    gauge.inc(), gauge.inc(), gauge.dec()
    text = generate_latest(m.registry).decode()
    assert 'prefstream_processing_seconds_bucket{agent="curate",le="0.001"} 2.0' in text
    assert 'prefstream_processing_seconds_bucket{agent="curate",le="0.01"} 3.0' in text
    assert 'prefstream_processing_seconds_bucket{agent="curate",le="10.0"} 4.0' in text
    assert 'prefstream_processing_seconds_bucket{agent="curate",le="+Inf"} 5.0' in text
    assert 'prefstream_processing_seconds_count{agent="curate"} 5.0' in text
    assert m.sample("prefstream_processing_seconds_sum", agent="curate") == pytest.approx(507.0045)
    assert 'prefstream_messages_in_total{agent="curate",topic="prompts"} 3.0' in text
    assert "# TYPE prefstream_messages_in_total counter" in text
    assert 'prefstream_messages_in_flight{agent="curate"} 1.0' in text
    assert "# TYPE prefstream_messages_in_flight gauge" in text
    with pytest.raises(ValueError, match="label values expected"):
        m.messages_in.labels("curate")
    with pytest.raises(ValueError, match="Duplicated"):
        Metrics(m.registry)  # the same names twice on one registry


def test_names_lists_the_series_queries_use():
    names = Metrics().names()
    assert {"prefstream_messages_in_total", "prefstream_processing_seconds_bucket",
            "prefstream_model_requests_in_flight", "prefstream_objective_version"} <= names
    assert all(n.startswith("prefstream_") for n in names)


def test_json_log_lines_carry_the_extra_fields():
    rec = logging.LogRecord("streams.runtime", logging.WARNING, __file__, 1, "dead letter %s", ("x",), None)
    rec.topic, rec.partition, rec.offset = "ns.prompts", 1, 42
    line = json.loads(JsonFormatter().format(rec))
    assert line["message"] == "dead letter x" and line["level"] == "WARNING"
    assert (line["topic"], line["partition"], line["offset"]) == ("ns.prompts", 1, 42)


def test_log_format_is_checked():
    assert check_format("JSON") == "json"
    with pytest.raises(SettingsError, match="PREFSTREAM_LOG_FORMAT"):
        check_format("xml")
    assert dict_config("INFO", "json")["formatters"]["default"]["()"].endswith("JsonFormatter")


def test_newest_objective_wins_and_dead_letters_are_summarised():
    specs = [OBJ, ObjectiveSpec(name="obj", version=2), ObjectiveSpec(name="b", status="shadow")]
    assert [(o["ref"], o["status"]) for o in newest_objectives(specs)] == [("b@1", "shadow"), ("obj@4", "active")]
    rec = lambda p, o: SimpleNamespace(partition=p, offset=o, timestamp=0)  # noqa: E731
    letters = [(rec(0, 0), DeadLetter(stage="curate", error_type="Rejected", error="old", created_at=1.0)),
               (rec(1, 0), DeadLetter(stage="curate", error_type="Rejected", error="new", created_at=3.0)),
               (rec(0, 1), DeadLetter(stage="evaluate", error_type="BackendError", error="mid", created_at=2.0))]
    s = dead_letter_summary(letters, newest=2)
    assert s["count"] == 3 and s["by_reason"] == {"curate Rejected": 2, "evaluate BackendError": 1}
    assert [d["error"] for d in s["newest"]] == ["new", "mid"] and s["newest"][0]["ref"] == "1:0"


def test_lag_counts_uncommitted_partitions_from_their_beginning():
    from aiokafka import TopicPartition

    a0, a1 = TopicPartition("ns.a", 0), TopicPartition("ns.a", 1)
    ends = {a0: Ends(0, 3, 10), a1: Ends(2, 5, 5)}
    assert _lag_per_topic({a0: 7}, ends) == {"ns.a": {"committed": 9, "end": 15, "lag": 6,
                                                     "uncommitted_partitions": 1}}


def test_replay_plan_sends_each_original_once_and_only_into_the_namespace():
    mk = lambda topic, key, orig, stage="curate": DeadLetter(stage=stage, error_type="Rejected", error="e",  # noqa: E731
                                                             topic=topic, key=key, original=orig)
    letters = [("0:0", mk("ns.prompts", "p1", b"a")), ("0:1", mk("ns.prompts", "p1", b"a")),
               ("0:2", mk("other.prompts", "p2", b"b")), ("1:0", mk("ns.curated", "p3", b"c", "synthesize")),
               ("1:1", mk("ns.prompts", "p4", b"")),
               ("1:2", DeadLetter(stage="curate", error_type="DecodeError", topic="ns.prompts", original=b"{...",
                                  error="bad [original truncated: the first 262144 of 9000000 bytes kept]"))]
    plan, skipped = replay_plan(letters, {"ns.prompts", "ns.curated"})
    assert plan == [("ns.prompts", "p1", b"a"), ("ns.curated", "p3", b"c")]
    assert skipped == {"same original message as another letter": 1, "original topic is not in this namespace": 1,
                       "no original bytes kept": 1,
                       "original was truncated when it was dead-lettered (too large to keep whole)": 1}
    assert [r for r, _ in select(letters, stage="synthesize")] == ["1:0"]
    assert [r for r, _ in select(letters, topic="prompts", refs={"0:1", "1:0"})] == ["0:1"]


@pytest.mark.parametrize("argv", [["status"], ["deadletters", "list"]])
def test_an_unreachable_broker_is_named_with_the_fix(argv, monkeypatch, capsys):
    from streams.broker import free_port
    from streams.commands.cli import main

    monkeypatch.setenv("PREFSTREAM_BROKER", f"127.0.0.1:{free_port()}")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot reach the broker" in err and "PREFSTREAM_BROKER" in err


def test_replay_recognises_the_runtime_s_truncated_originals():
    from streams.runtime import MAX_ORIGINAL_BYTES, Raw, Stage
    from streams.topics import Topics

    topics = Topics("ns")

    async def handler(value):
        return []

    stage = Stage("curate", topics.prompts, topics, Metrics(), handler)
    [out] = asyncio.run(stage.outputs(Raw("ns.prompts", 0, 1, b"k", b"x" * (MAX_ORIGINAL_BYTES + 1))))
    letter = topics.deadletters.codec.decode(out.value)
    plan, skipped = replay_plan([("0:0", letter)], {"ns.prompts"})
    assert plan == [] and list(skipped) == ["original was truncated when it was dead-lettered (too large to keep whole)"]
