"""`prefstream ingest` against a hostile client (issue 26, items 4 and 6): the real app served
by uvicorn on a loopback port, as `prefstream ingest` serves it, with no broker behind it (what
these tests send is refused before anything is published; a publish answers 503)."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from streams.broker import free_port
from streams.settings import load
from tests.conftest import ROOT
from tests.integration.test_ingest import serve

KEY = "sk-hostile-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {KEY}"}
PASSWORD = "hunter2-" + uuid.uuid4().hex[:8]


@pytest.fixture
def dead():
    """Settings whose broker is a closed loopback port."""
    return load({}, broker=f"127.0.0.1:{free_port()}", namespace="t" + uuid.uuid4().hex[:8], ingest_keys=KEY)


def _raw(base: str, data: bytes, wait_s: float = 10.0) -> bytes:
    """Send ``data`` on a new connection and read until the server closes it (or ``wait_s``)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except TimeoutError:
            return out + b"<still open>"
    return out


def test_half_sent_headers_and_bodies_are_cut_off(dead):
    s = dead.replace(ingest_header_timeout_s=1.0, ingest_body_timeout_s=1.0)
    with serve(s, publish_timeout_s=1.0) as base:
        socks = []
        host, port = base.removeprefix("http://").split(":")
        for _ in range(20):  # half a request each, then silence (slowloris)
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(b"POST /v1/prompts HTTP/1.1\r\nHost: x\r\nContent-Type: app")
            socks.append(sock)
        try:
            assert [sock.recv(1) for sock in socks] == [b""] * 20  # closed by the server
        finally:
            for sock in socks:
                sock.close()
        assert _raw(base, b"") == b""  # a connection that never sends a byte
        slow_body = _raw(base, b"POST /v1/prompts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                         + b"\r\nContent-Length: 1000\r\n\r\n{\"prompt\": ")
        assert slow_body.startswith(b"HTTP/1.1 408") and slow_body.endswith(b"}")
        assert httpx.get(base + "/healthz").status_code == 200  # still serving


def test_failed_authentication_is_rate_limited_per_address(dead):
    with serve(dead.replace(ingest_auth_fail_rate=0.05), publish_timeout_s=1.0) as base:
        url = base + "/v1/prompts"
        codes = [httpx.post(url, json={"prompt": "x"}, headers={"Authorization": f"Bearer guess-{i}"}).status_code
                 for i in range(14)]
        assert codes[:10] == [401] * 10 and codes[10:] == [429] * 4
        locked = httpx.post(url, json={"prompt": "x"}, headers=AUTH)  # the address waits, whatever its key
        assert locked.status_code == 429 and "failed authentications" in locked.json()["detail"]


def test_the_limiter_counts_items_and_requests_are_capped_in_items(dead):
    with serve(dead.replace(ingest_rate_limit=10.0, ingest_max_items=100), publish_timeout_s=1.0) as base:
        url = base + "/v1/prompts"
        too_many = httpx.post(url, json=[{"prompt": f"p{i}"} for i in range(101)], headers=AUTH)
        assert too_many.status_code == 413 and "100-item limit" in too_many.json()["detail"]
        batch = httpx.post(url, json=[{"prompt": f"p{i}"} for i in range(60)], headers=AUTH, timeout=30)
        assert batch.status_code == 503  # accepted and charged 60 items; no broker to take them
        after = httpx.post(url, json={"prompt": "one more"}, headers=AUTH, timeout=30)
        assert after.status_code == 429 and "items/s" in after.json()["detail"]


def test_bad_input_gets_4xx_a_short_reason_and_a_capped_error_list(dead):
    with serve(dead.replace(ingest_rate_limit=0), publish_timeout_s=1.0) as base:  # invalid items count too
        url = base + "/v1/prompts"
        many = httpx.post(url, json=[{"nothing": i} for i in range(900)], headers=AUTH)
        assert many.status_code == 422 and len(many.content) < 20_000
        assert len(many.json()["errors"]) == 20 and many.json()["more_errors"] == 880
        for body in (b"[" * 200_000 + b"]" * 200_000, b'{"prompt": "\xff\xfe"}',
                     b'{"prompt": "a", "metadata": ' + b'{"a":' * 20_000 + b"1" + b"}" * 20_001):
            r = httpx.post(url, content=body, headers=AUTH)
            assert r.status_code == 422 and "Traceback" not in r.text, r.text[:300]
            assert len(r.json()["errors"][0]["reason"]) < 300
        feedback = httpx.post(base + "/v1/feedback", content=b"[" * 200_000, headers=AUTH)
        assert feedback.status_code == 422


def test_fields_only_the_pipeline_sets_are_refused_over_http(dead):
    s = dead.replace(ingest_keys=f"{KEY},sk-trusted", ingest_verification_keys="sk-trusted")
    with serve(s, publish_timeout_s=1.0) as base:
        url = base + "/v1/prompts"
        forged = {"prompt": "Capital of France?", "source": "chat",
                  "metadata": {"production_response": "My text, chosen.", "production_model": "gpt-4o"}}
        r = httpx.post(url, json=forged, headers=AUTH)
        assert r.status_code == 422 and "production_model, production_response" in r.json()["errors"][0]["reason"]
        proxy = httpx.post(url, json={"prompt": "x", "source": "proxy"}, headers=AUTH)
        assert proxy.status_code == 422 and "capture proxy" in proxy.json()["errors"][0]["reason"]
        tests = {"prompt": "Write f.", "verification": {"kind": "code", "tests": ["import os"]}}
        refused = httpx.post(url, json=tests, headers=AUTH)
        assert refused.status_code == 422
        assert "PREFSTREAM_INGEST_VERIFICATION_KEYS" in refused.json()["errors"][0]["reason"]
        allowed = httpx.post(url, json=tests, headers={"Authorization": "Bearer sk-trusted"}, timeout=30)
        assert allowed.status_code == 503  # accepted; no broker to publish it to
        label = {"prompt_id": "p", "candidate_id": "c", "kind": "thumbs", "value": 1, "id": "f-mine"}
        fb = httpx.post(base + "/v1/feedback", json=label, headers=AUTH)
        assert fb.status_code == 422 and "unknown field(s) id" in fb.json()["errors"][0]["reason"]


def test_upstream_credentials_are_never_shown(dead, tmp_path):
    """`prefstream ingest --upstream http://user:PASSWORD@…`: not in its log, /healthz or a 502."""
    port, upstream_port = free_port(), free_port()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PREFSTREAM_BROKER": dead.broker,
           "PREFSTREAM_NAMESPACE": dead.namespace, "PREFSTREAM_INGEST_KEYS": KEY}
    log_path = tmp_path / "ingest.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streams.commands.cli", "ingest", "--port", str(port), "--upstream",
                                 f"http://user:{PASSWORD}@127.0.0.1:{upstream_port}/v1"], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                health = httpx.get(base + "/healthz")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "prefstream ingest did not answer /healthz"
                time.sleep(0.2)
        assert health.json()["upstream"] == f"http://***@127.0.0.1:{upstream_port}"
        bad_gateway = httpx.post(base + "/v1/chat/completions", json={"messages": []}, headers=AUTH, timeout=30)
        assert bad_gateway.status_code == 502 and PASSWORD not in bad_gateway.text
    finally:
        proc.terminate()
        proc.wait(20)
    text = log_path.read_text()
    assert "proxying http://***@127.0.0.1" in text and PASSWORD not in text

