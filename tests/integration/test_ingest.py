"""`prefstream ingest` served by uvicorn on a loopback port: the ingest API against a real Tansu
broker, and the capture proxy against a real llama.cpp server (``python -m llama_cpp.server``)."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager

import httpx
import msgspec
import pytest
import uvicorn

from streams.commands.serving import uvicorn as serving
from streams.admin import reader
from streams.commands.serving.admission import key_hash
from streams.broker import EmbeddedBroker, free_port
from streams.commands.serving.server import build_ingest_app
from streams.settings import load
from streams.topics import from_settings
from tests.conftest import ROOT, settings_env

KEY = "sk-test-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": "gemma-3-270m", "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 8, "temperature": 0, "seed": 7}


@contextmanager
def serve(settings, upstream: str | None = None, publish_timeout_s: float = 10.0):
    """The ingest app on a free loopback port in a background thread; stopped on exit."""
    app = build_ingest_app(settings, upstream=upstream, publish_timeout_s=publish_timeout_s)
    port = free_port()
    server = uvicorn.Server(serving.config(app, settings, "127.0.0.1", port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "ingest server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "ingest server did not stop"


def read_topic(settings, short: str, want: set[str], timeout_s: float = 30.0) -> dict:
    """Records of a topic by id, read from the beginning until every id in ``want`` is seen."""
    topic = getattr(from_settings(settings), short)

    async def go() -> dict:
        consumer = await reader(settings, [topic.name])
        found: dict = {}
        try:
            deadline = time.monotonic() + timeout_s
            while not want <= found.keys() and time.monotonic() < deadline:
                for msgs in (await consumer.getmany(timeout_ms=500)).values():
                    for m in msgs:
                        rec = topic.codec.decode(m.value)
                        found[rec.id] = (rec, m.value)
        finally:
            await consumer.stop()
        return found

    found = asyncio.run(go())
    assert want <= found.keys(), f"missing on {topic.name}: {want - found.keys()}"
    return found


def metric(base: str, name: str, label: str = "") -> float:
    """Sum of a metric's samples in /metrics whose labels contain ``label`` (``reason="broker"``)."""
    text = httpx.get(base + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if (line.startswith(name + "{") or line.startswith(name + " ")) and label in line)


# ---- the ingest API on a real broker -------------------------------------------------------

def test_prompts_and_feedback_are_published_and_bad_batches_publish_nothing(settings):
    # one partition: the topic keeps send order; the key may send reference answers (GSM8K's)
    s = settings.replace(ingest_keys=KEY, partitions=1, ingest_verification_keys=KEY)
    tag = uuid.uuid4().hex[:8]
    with serve(s) as base:
        lines = [{"question": f"What is 2 + 2? {tag}", "answer": "2 + 2 = 4\n#### 4"},
                 {"messages": [{"role": "user", "content": f"Say hi. {tag}"}]},
                 {"prompt": f"Name a colour. {tag}"}]
        jsonl = b"\n".join(msgspec.json.encode(x) for x in lines) + b"\n\n"
        r = httpx.post(base + "/v1/prompts", content=jsonl, headers=AUTH)
        assert r.status_code == 200, r.text
        batch_ids = r.json()["ids"]
        single = httpx.post(base + "/v1/prompts?objective=math", json={"prompt": f"1 + 1? {tag}"}, headers=AUTH)
        assert single.status_code == 200, single.text

        refused_item = {"prompt": f"in a refused batch {tag}"}
        bad = httpx.post(base + "/v1/prompts", headers=AUTH, json=[
            refused_item, {"text": "no known keys"}, {"question": "q", "answer": "no marker"}, "a string"])
        assert bad.status_code == 422
        errors = bad.json()["errors"]
        assert [e["index"] for e in errors] == [1, 2, 3]
        assert "unknown format" in errors[0]["reason"] and "####" in errors[1]["reason"]
        assert "JSON object" in errors[2]["reason"] and "nothing was published" in bad.json()["detail"]
        sentinel = httpx.post(base + "/v1/prompts", json={"prompt": f"sentinel {tag}"}, headers=AUTH).json()["ids"]

        fb = httpx.post(base + "/v1/feedback", headers=AUTH, json=[
            {"prompt_id": batch_ids[0], "candidate_id": "c-1", "kind": "thumbs", "value": 1},
            {"prompt_id": batch_ids[1], "response_id": "chatcmpl-9", "other_id": "c-2", "kind": "ab", "value": 0}])
        assert fb.status_code == 200, fb.text
        bad_fb = httpx.post(base + "/v1/feedback", headers=AUTH, json=[
            {"prompt_id": "p-1", "candidate_id": "c-1", "kind": "ab", "value": 1},
            {"prompt_id": "p-1", "candidate_id": "c-1", "kind": "thumbs", "value": 3}])
        assert bad_fb.status_code == 422
        assert [e["index"] for e in bad_fb.json()["errors"]] == [0, 1]
        assert "other_id" in bad_fb.json()["errors"][0]["reason"]

    got = read_topic(s, "prompts", set(batch_ids + single.json()["ids"] + sentinel))
    assert all(f"in a refused batch {tag}" != rec.messages[0].content for rec, _ in got.values())
    sources = sorted(got[i][0].source for i in batch_ids)
    assert sources == ["chat", "gsm8k", "prompt"]
    assert got[batch_ids[0]][0].verification.answer == "4"
    assert got[single.json()["ids"][0]][0].objective == "math"
    for rec, raw in got.values():
        assert rec.metadata["key_hash"] == key_hash(KEY) and KEY.encode() not in raw
    labels = read_topic(s, "feedback", set(fb.json()["ids"]))
    thumbs, ab = (labels[i][0] for i in fb.json()["ids"])
    assert (thumbs.kind, thumbs.value, thumbs.user) == ("thumbs", 1.0, key_hash(KEY))
    assert (ab.kind, ab.response_id, ab.other_id, ab.value) == ("ab", "chatcmpl-9", "c-2", 0.0)


def test_refusals_over_http(settings):
    s = settings.replace(ingest_keys=f"other-key, {KEY}", ingest_max_bytes=2000)
    with serve(s) as base:
        url = base + "/v1/prompts"
        ok = {"prompt": "hello"}
        assert httpx.post(url, json=ok).status_code == 401
        assert httpx.post(url, json=ok, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.post(url, json=ok, headers={"Authorization": f"Basic {KEY}"}).status_code == 401
        assert httpx.post(url, json=ok, headers={"Authorization": "Bearer other-key"}).status_code == 200

        big = httpx.post(url, json={"prompt": "x" * 3000}, headers=AUTH)  # declared Content-Length
        assert big.status_code == 413 and "2000-byte limit" in big.json()["detail"]
        chunks = (b'{"prompt": "' + b"x" * 500 for _ in range(6))  # chunked: no Content-Length
        chunked = httpx.post(url, content=chunks, headers=AUTH)
        assert chunked.status_code == 413

        malformed = httpx.post(url, content=b'{"prompt": "unclosed', headers=AUTH)
        assert malformed.status_code == 422 and "not valid JSON" in malformed.json()["errors"][0]["reason"]
        assert httpx.post(url, json=[], headers=AUTH).status_code == 422
        bad_lines = httpx.post(url, content=b'{"prompt": "a"}\n{oops\n', headers=AUTH)
        assert bad_lines.status_code == 422 and bad_lines.json()["errors"][0]["index"] == 1

        preflight = httpx.options(url, headers={"Origin": "https://evil.example",
                                                "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in preflight.headers  # CORS off
        assert httpx.get(base + "/healthz").json()["status"] == "ok"
        assert metric(base, "prefstream_ingest_requests_total") >= 10


def test_rate_limit_per_key(settings):
    with serve(settings.replace(ingest_keys=f"{KEY},second", ingest_rate_limit=2.0)) as base:
        codes = [httpx.post(base + "/v1/feedback", content=b"[]", headers=AUTH).status_code for _ in range(4)]
        assert codes[:2] == [422, 422] and 429 in codes[2:]
        other = httpx.post(base + "/v1/feedback", content=b"[]", headers={"Authorization": "Bearer second"})
        assert other.status_code == 422  # another key has its own bucket


def test_broker_down_answers_503_and_upstream_down_502(namespace):
    dead = load({}, broker=f"127.0.0.1:{free_port()}", namespace=namespace, ingest_keys=KEY)
    with serve(dead, upstream=f"http://127.0.0.1:{free_port()}/v1", publish_timeout_s=2.0) as base:
        r = httpx.post(base + "/v1/prompts", json={"prompt": "hi"}, headers=AUTH, timeout=30)
        assert r.status_code == 503 and "retry" in r.json()["detail"]
        assert httpx.get(base + "/healthz").json()["broker_connected"] is False
        r = httpx.post(base + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=30)
        assert r.status_code == 502 and "unreachable" in r.json()["error"]["message"]


def test_the_command_serves_with_keys_from_the_environment(settings, tmp_path):
    port = free_port()
    env = {**settings_env(settings), "PREFSTREAM_INGEST_KEYS": KEY}
    with (tmp_path / "ingest.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streams.commands.cli", "ingest", "--port", str(port)], cwd=ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "ingest.log").read_text()
            try:
                if httpx.get(base + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "prefstream ingest did not answer /healthz"
                time.sleep(0.2)
        assert httpx.post(base + "/v1/prompts", json={"prompt": "hi"}).status_code == 401
        r = httpx.post(base + "/v1/prompts", json={"prompt": "hi from the command"}, headers=AUTH)
        assert r.status_code == 200, r.text
        read_topic(settings, "prompts", set(r.json()["ids"]))
        assert httpx.post(base + "/v1/chat/completions", json=CHAT, headers=AUTH).status_code == 404  # no upstream
    finally:
        proc.terminate()
        proc.wait(20)
    assert KEY not in (tmp_path / "ingest.log").read_text()


# ---- the capture proxy against a real llama.cpp server -------------------------------------


def _same_completion(direct: dict, proxied: dict) -> None:
    for key in ("object", "model", "choices", "usage"):
        assert proxied[key] == direct[key], key
    assert proxied["choices"][0]["message"]["content"]


def _stream(url: str, body: dict, headers=None) -> tuple[list[dict], list[float], httpx.Headers]:
    events, arrivals = [], []
    with httpx.stream("POST", url, json={**body, "stream": True}, headers=headers, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        buf = b""
        for chunk in r.iter_raw():
            arrivals.append(time.monotonic())
            buf += chunk
        resp_headers = r.headers
    for line in buf.decode().splitlines():
        if line.startswith("data: "):
            events.append(line[6:] if line[6:] == "[DONE]" else msgspec.json.decode(line[6:]))
    return events, arrivals, resp_headers


def _text(events: list) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e != "[DONE]")


@pytest.mark.model
def test_proxy_matches_upstream_and_captures(llama_server, settings):
    s = settings.replace(ingest_keys=KEY, partitions=1)
    direct_url = llama_server + "/v1/chat/completions"
    with serve(s, upstream=llama_server + "/v1") as base:
        # the same request twice first: llama.cpp reuses the prefix of its last prompt, so the
        # compared calls both follow an identical call
        httpx.post(direct_url, json=CHAT, timeout=120)
        direct = httpx.post(direct_url, json=CHAT, timeout=120).json()
        proxied = httpx.post(base + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=120)
        assert proxied.status_code == 200, proxied.text
        _same_completion(direct, proxied.json())
        plain_id = proxied.headers["x-prefstream-prompt-id"]

        body = {**CHAT, "max_tokens": 16}
        _stream(direct_url, body)
        d_events, _, _ = _stream(direct_url, body)
        p_events, arrivals, headers = _stream(base + "/v1/chat/completions", body, AUTH)
        assert len(p_events) == len(d_events) > 3 and p_events[-1] == "[DONE]"
        assert [e["object"] for e in p_events[:-1]] == ["chat.completion.chunk"] * (len(p_events) - 1)
        assert _text(p_events) == _text(d_events) and _text(p_events)
        assert len(arrivals) > 1 and arrivals[-1] - arrivals[0] > 0.01  # relayed as generated
        stream_id = headers["x-prefstream-prompt-id"]

        models = httpx.get(base + "/v1/models", headers=AUTH)
        assert models.json() == httpx.get(llama_server + "/v1/models").json()
        assert httpx.post(base + "/v1/chat/completions", json=CHAT).status_code == 401

    got = read_topic(s, "prompts", {plain_id, stream_id})
    plain, raw = got[plain_id]
    assert plain.source == "proxy" and plain.messages[0].content == "Name a colour."
    assert plain.tags == ["route:chat.completions", "model:gemma-3-270m"]
    assert plain.metadata["production_response"] == proxied.json()["choices"][0]["message"]["content"]
    assert plain.metadata["production_response_id"] == proxied.json()["id"]
    assert plain.metadata["production_model"] == "gemma-3-270m"
    assert plain.metadata["key_hash"] == key_hash(KEY) and KEY.encode() not in raw
    streamed = got[stream_id][0]
    assert streamed.metadata["production_response"] == _text(p_events)
    assert streamed.metadata["production_finish_reason"] == p_events[-2]["choices"][0]["finish_reason"]


@pytest.mark.model
def test_proxy_answers_and_counts_drops_with_the_broker_down(llama_server, namespace, tmp_path):
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log").start()
    try:
        s = load({}, broker=broker.address, namespace=namespace, partitions=1, ingest_capture_queue=1)
        body = {**CHAT, "max_tokens": 4}
        with serve(s, upstream=llama_server, publish_timeout_s=3.0) as base:
            first = httpx.post(base + "/v1/chat/completions", json=body, timeout=120)
            read_topic(s, "prompts", {first.headers["x-prefstream-prompt-id"]})
            broker.stop()
            for _ in range(4):  # the drainer is stuck on the first one; the queue holds 1
                r = httpx.post(base + "/v1/chat/completions", json=body, timeout=120)
                assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
            deadline = time.monotonic() + 30
            while metric(base, "prefstream_captures_dropped_total") < 1 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert metric(base, "prefstream_captures_dropped_total") >= 1
            # every sampled request was either queued or dropped at the full queue
            offered = (metric(base, "prefstream_captures_total", 'outcome="queued"')
                       + metric(base, "prefstream_captures_dropped_total", 'reason="queue_full"'))
            assert offered == 5
            assert httpx.get(base + "/healthz").json()["status"] == "ok"
    finally:
        broker.stop()
