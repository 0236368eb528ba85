"""The ingest API's pure parts: body parsing (all-or-nothing batches), feedback labels, keys,
rate limits, SSE assembly, the captured prompt and the bounded capture queue."""
from __future__ import annotations

import asyncio

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from schemas import Feedback
from streams.commands.serving.admission import RateLimiter, key_hash, load_keys
from streams.broker import free_port
from streams.commands.serving.capture import Capture, Captured, Publisher
from streams.commands import CliError
from streams.commands.ingest import check_bind
from streams.commands.serving.server import parse_feedback, parse_prompts
from streams.commands.serving.proxy import StreamText
from streams.settings import SettingsError, load
from streams.topics import Topics

KH = key_hash("sk-1")


def test_one_prompt_an_array_and_json_lines_are_accepted():
    [one], errors = parse_prompts(b'{"prompt": "Name a colour."}', KH)
    assert not errors and one.source == "prompt" and one.messages[0].content == "Name a colour."
    assert one.metadata["key_hash"] == KH and one.created_at > 0
    many, errors = parse_prompts(b'[{"prompt": "a"}, {"messages": [{"role": "user", "content": "b"}]}]', KH)
    assert not errors and [p.source for p in many] == ["prompt", "chat"]
    lines = b'{"question": "1+1?", "answer": "two\\n#### 2"}\n\n{"prompt": "c"}\n'
    many, errors = parse_prompts(lines, KH, objective="math", may_verify=True)
    assert not errors and [p.objective for p in many] == ["math", "math"]
    assert many[0].verification.answer == "2"


def test_ids_are_content_derived_so_a_resend_is_idempotent():
    a, _ = parse_prompts(b'{"prompt": "same"}', KH)
    b, _ = parse_prompts(b'{"prompt": "same"}', key_hash("sk-2"))
    assert a[0].id == b[0].id


def test_a_batch_with_bad_items_yields_every_error_and_no_prompts():
    body = b'[{"prompt": "fine"}, {"nothing": 1}, 7, {"messages": [{"role": "robot"}]}]'
    prompts, errors = parse_prompts(body, KH)
    assert [p.messages[0].content for p in prompts] == ["fine"]  # the route refuses the whole batch
    assert [e["index"] for e in errors] == [1, 2, 3]
    assert "unknown format" in errors[0]["reason"] and "got int" in errors[1]["reason"]
    assert "role" in errors[2]["reason"]


def test_malformed_bodies_are_reported():
    [], [err] = parse_prompts(b'{"prompt": ', KH)
    assert err["index"] == 0 and "not valid JSON" in err["reason"]
    _, errors = parse_prompts(b'{"prompt": "a"}\n{"prompt": \n', KH)
    assert [e["index"] for e in errors] == [1] and "invalid JSON" in errors[0]["reason"]
    _, [err] = parse_prompts(b'{"question": "q"}', KH)  # plain `prompt` missing too
    assert "unknown format" in err["reason"]


def test_feedback_is_validated_and_filled_in_by_the_server():
    body = (b'[{"prompt_id": "p-1", "candidate_id": "c-1", "kind": "thumbs", "value": 0},'
            b' {"prompt_id": "p-1", "response_id": "chatcmpl-1", "other_id": "c-2", "kind": "ab", "value": 0.5},'
            b' {"prompt_id": "p-1", "candidate_id": "c-3", "kind": "score", "value": 0.75}]')
    labels, errors = parse_feedback(body, KH)
    assert not errors and [f.kind for f in labels] == ["thumbs", "ab", "score"]
    assert all(f.user == KH and f.id.startswith("f-") and f.created_at > 0 for f in labels)
    again, _ = parse_feedback(body, KH)
    assert [f.id for f in again] == [f.id for f in labels]  # deterministic ids
    other, _ = parse_feedback(body, key_hash("sk-2"))
    assert other[0].id != labels[0].id


@pytest.mark.parametrize("item, reason", [
    ({"prompt_id": "p", "kind": "thumbs", "value": 1}, "candidate_id or response_id"),
    ({"prompt_id": "p", "candidate_id": "c", "kind": "thumbs", "value": 0.5}, "1 (up) or 0"),
    ({"prompt_id": "p", "candidate_id": "c", "kind": "ab", "value": 1}, "other_id"),
    ({"prompt_id": "p", "candidate_id": "c", "other_id": "d", "kind": "thumbs", "value": 1}, "only for `ab`"),
    ({"prompt_id": "p", "candidate_id": "c", "kind": "score", "value": 4}, "[0, 1]"),
    ({"prompt_id": "p", "candidate_id": "c", "kind": "stars", "value": 1}, "kind"),
    ({"prompt_id": "", "candidate_id": "c", "kind": "score", "value": 1}, "prompt_id"),
])
def test_bad_feedback_is_refused_with_the_reason(item, reason):
    labels, [err] = parse_feedback(msgspec.json.encode([item]), KH)
    assert not labels and reason in err["reason"]


def test_feedback_round_trips_on_the_wire():
    [fb], _ = parse_feedback(b'{"prompt_id": "p", "candidate_id": "c", "kind": "thumbs", "value": 1}', KH)
    topics = Topics("t")
    assert topics.feedback.codec.decode(topics.feedback.codec.encode(fb)) == fb
    assert isinstance(fb, Feedback) and b'"type":"feedback.v1"' in topics.feedback.codec.encode(fb)


def test_keys_from_the_variable_and_a_file_never_in_repr(tmp_path):
    keyfile = tmp_path / "keys"
    keyfile.write_text("sk-file-1\n\nsk-file-2\n")
    s = load({"PREFSTREAM_INGEST_KEYS": "sk-a, sk-b,", "PREFSTREAM_INGEST_MAX_BYTES": "10"},
             ingest_keys_file=str(keyfile))
    assert load_keys(s) == {"sk-a", "sk-b", "sk-file-1", "sk-file-2"}
    assert "sk-a" not in repr(s) and s.ingest_max_bytes == 10
    assert load_keys(load({})) == frozenset()
    with pytest.raises(SettingsError, match="PREFSTREAM_INGEST_KEYS_FILE"):
        load_keys(load({}, ingest_keys_file=str(tmp_path / "missing")))
    with pytest.raises(SettingsError, match="PREFSTREAM_INGEST_KEYS_FILE"):
        load({"PREFSTREAM_INGEST_KEYS_FILE": str(tmp_path / "missing")})
    assert key_hash("sk-a") != key_hash("sk-b") and "sk-a" not in key_hash("sk-a")


def test_no_keys_means_loopback_only():
    check_bind("127.0.0.1", frozenset())
    check_bind("0.0.0.0", frozenset({"k"}))
    with pytest.raises(CliError, match="PREFSTREAM_INGEST_KEYS"):
        check_bind("0.0.0.0", frozenset())


def test_rate_limiter_is_a_token_bucket_per_key():
    now = [0.0]
    limiter = RateLimiter(2.0, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(3)] == [True, True, False]
    assert limiter.allow("b")  # its own bucket
    now[0] = 0.5  # one token back
    assert [limiter.allow("a") for _ in range(2)] == [True, False]
    assert all(RateLimiter(0).allow("a") for _ in range(100))


def _sse(*events: str) -> bytes:
    return b"".join(f"data: {e}\n\n".encode() for e in events)


def test_stream_text_assembles_split_chunks():
    chunk = '{{"id": "c1", "model": "m", "choices": [{{"index": 0, "delta": {{"content": "{}"}}}}]}}'
    end = '{"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}'
    body = _sse(chunk.format("Hel"), chunk.format("lo"), "not json", end, "[DONE]")
    st = StreamText()
    for i in range(0, len(body), 7):  # arbitrary chunk boundaries
        assert not st.done
        st.feed(body[i:i + 7])
    assert (st.text, st.id, st.model, st.finish_reason, st.complete) == ("Hello", "c1", "m", "stop", True)
    cut = StreamText()
    cut.feed(_sse(chunk.format("Hel")))
    assert not cut.complete


def test_captured_prompt_carries_the_production_response_never_the_key():
    req = {"model": "m", "temperature": 0.2, "messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {}}]}]}
    resp = b'{"id": "chatcmpl-1", "model": "m-7b", "choices": [{"message": {"content": "Hello"}, "finish_reason": "stop"}]}'
    p = Captured("p-1", req, KH, "chat.completions", response_json=resp).to_prompt()
    assert [(m.role, m.content) for m in p.messages] == [("system", "Be brief."), ("user", "Hi")]
    assert p.source == "proxy" and p.tags == ["route:chat.completions", "model:m"]
    assert p.metadata == {"key_hash": KH, "production_response": "Hello", "production_model": "m-7b",
                          "production_response_id": "chatcmpl-1", "production_finish_reason": "stop",
                          "production_sampling": {"temperature": 0.2}}
    with pytest.raises(ValueError, match="no messages"):
        Captured("p-2", {"model": "m"}, KH, "chat.completions", response_json=resp).to_prompt()


def test_capture_queue_is_bounded_and_broker_outages_are_counted():
    async def go():
        dead = load({}, broker=f"127.0.0.1:{free_port()}")  # nothing listens there
        publisher = Publisher(dead, timeout_s=2.0, retry_s=60.0)
        registry = CollectorRegistry()
        capture = Capture(publisher, Topics("t").prompts, size=2, registry=registry)
        item = Captured("p-1", {"messages": [{"role": "user", "content": "hi"}]}, KH, "chat.completions",
                        response_json=b'{"choices": [{"message": {"content": "yo"}}]}')
        assert [capture.offer(item) for _ in range(3)] == [True, True, False]
        drainer = asyncio.create_task(capture.run())
        await capture.flush(10)
        drainer.cancel()
        await publisher.close()
        value = registry.get_sample_value
        return (value("prefstream_captures_dropped_total", {"reason": "queue_full"}),
                value("prefstream_captures_dropped_total", {"reason": "broker"}),
                value("prefstream_capture_queue_depth"))

    assert asyncio.run(go()) == (1.0, 2.0, 0.0)


# ---- only the pipeline sets what the pipeline sets (issue 26, items 4 and 6) ----------------

@pytest.mark.parametrize("item, named", [
    ({"prompt": "p", "metadata": {"production_response": "my text", "production_model": "gpt-4o"}},
     "production_model, production_response"),
    ({"prompt": "p", "metadata": {"production_response_id": "chatcmpl-1"}}, "production_response_id"),
    ({"prompt": "p", "metadata": {"key_hash": "k-someone-else"}}, "key_hash"),
    ({"prompt": "p", "source": "proxy"}, "capture proxy"),
    ({"prompt": "p", "id": "p-chosen-by-me"}, "unknown field(s) id"),
    ({"prompt": "p", "created_at": 1.0, "score": 1}, "unknown field(s) created_at, score"),
])
def test_fields_only_the_pipeline_sets_are_refused_and_named(item, named):
    prompts, [err] = parse_prompts(msgspec.json.encode([item]), KH, may_verify=True)
    assert not prompts and named in err["reason"]


@pytest.mark.parametrize("item", [
    {"prompt": "Write f.", "verification": {"kind": "code", "tests": ["import os; os.system('id')"]}},
    {"prompt": "Give JSON.", "verification": {"kind": "json_schema", "json_schema": {"type": "object"}}},
    {"question": "2+2?", "answer": "#### 5"},
    {"prompt": "2+2?", "answer": "5"},
    {"prompt": "Write.", "instruction_id_list": ["length_constraints:number_words"], "kwargs": [{}]},
])
def test_verification_needs_a_key_allowed_it(item):
    body = msgspec.json.encode(item)
    prompts, [err] = parse_prompts(body, KH)
    assert not prompts and "PREFSTREAM_INGEST_VERIFICATION_KEYS" in err["reason"]
    [p], errors = parse_prompts(body, KH, may_verify=True)
    assert not errors and p.verification is not None


def test_feedback_ids_and_users_are_the_servers():
    for field, value in (("id", "f-mine"), ("user", "k-victim"), ("created_at", 0)):
        item = {"prompt_id": "p", "candidate_id": "c", "kind": "thumbs", "value": 1, field: value}
        labels, [err] = parse_feedback(msgspec.json.encode([item]), KH)
        assert not labels and f"unknown field(s) {field}" in err["reason"]


def test_one_key_holds_one_label_per_candidate_however_many_it_sends():
    from agents.evaluators.human import FeedbackStore

    store = FeedbackStore(max_labels=4)
    honest = [key_hash(f"sk-honest-{i}") for i in range(3)]
    for h in honest:
        [fb], _ = parse_feedback(b'{"prompt_id": "p", "candidate_id": "c", "kind": "thumbs", "value": 1}', h)
        store.add(fb)
    flood = [{"prompt_id": "p", "candidate_id": "c", "kind": "score", "value": i / 100} for i in range(50)]
    labels, errors = parse_feedback(msgspec.json.encode(flood), KH)
    assert not errors and len({f.id for f in labels}) == 50
    for fb in labels:
        store.add(fb)
    assert sorted(store.labels("c")) == [0.49, 1.0, 1.0, 1.0]  # the flooder's newest label only


def test_error_lists_are_capped_and_items_counted_against_the_cap():
    from streams.commands.serving.items import MAX_ERRORS, TooMany, refusal

    body = msgspec.json.encode([{"nothing": i} for i in range(5000)])
    prompts, errors = parse_prompts(body, KH)
    answer = refusal(len(prompts) + len(errors), errors)
    assert len(answer["errors"]) == MAX_ERRORS and answer["more_errors"] == 5000 - MAX_ERRORS
    assert len(msgspec.json.encode(answer)) < 20_000
    with pytest.raises(TooMany, match="1000-item limit"):
        parse_prompts(msgspec.json.encode([{"prompt": "x"}] * 1001), KH, max_items=1000)
    with pytest.raises(TooMany):
        parse_feedback(b"\n".join([b'{"prompt_id": "p", "candidate_id": "c", "kind": "thumbs", "value": 1}'] * 11),
                       KH, max_items=10)


@pytest.mark.parametrize("body, reason", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"prompt": "a", "metadata": ' + b'{"a":' * 5000 + b"1" + b"}" * 5001, "nested too deeply"),
    (b'{"prompt": "\xff\xfe"}', "not UTF-8"),
    (b'{"prompt": "a"}\n{"prompt": "\xff"}\n', "not UTF-8"),
])
def test_deep_nesting_and_bad_utf8_are_refused_with_a_short_reason(body, reason):
    prompts, errors = parse_prompts(body, KH)
    assert errors and reason in errors[-1]["reason"] and len(errors[-1]["reason"]) < 300


def test_the_limiter_charges_items_and_a_batch_may_overdraw():
    now = [0.0]
    limiter = RateLimiter(10.0, clock=lambda: now[0])
    assert limiter.allow("a")
    limiter.charge("a", 49)  # a 50-item batch
    assert not limiter.allow("a")
    now[0] = 4.0  # 40 tokens back: still in debt
    assert not limiter.allow("a")
    now[0] = 5.0
    assert limiter.allow("a")
    fails = RateLimiter(1.0, clock=lambda: now[0], burst=10)
    assert fails.tokens("addr") == 10
