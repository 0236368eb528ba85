"""A broken environment is not bad data: what counts as the environment's fault, and a stage
that holds its input, says why, and goes on once the cause is fixed."""
from __future__ import annotations

import asyncio
import errno
import urllib.request
import logging

import pytest

from agents.backends.base import BackendError
from schemas import Message, Prompt
from streams import health as health_mod
from streams.broker import free_port
from streams.health import Health, environmental
from streams.metrics import Metrics
from streams.runtime import Blocked, Emit, Raw, Rejected, Stage
from streams.topics import CURATED, Topics
from tests.conftest import get_json
from tests.stages import handle


@pytest.mark.parametrize("err, reason", [
    (FileNotFoundError(errno.ENOENT, "No such file", "/models/x.gguf"), "os_error"),
    (PermissionError(errno.EACCES, "Permission denied", "/root/.cache"), "os_error"),
    (OSError(errno.ENOSPC, "No space left on device"), "disk_full"),
    (MemoryError(), "out_of_memory"),
    (BackendError("gave up after 3 attempts", retryable=True), "backend_down"),
    (Blocked("no_objective", "no objective published", "prefstream objective apply FILE"), "no_objective"),
])
def test_the_environments_faults_block(err, reason):
    b = environmental(err)
    assert b is not None and b.reason == reason and b.fix


@pytest.mark.parametrize("err", [
    Rejected("unknown objective 'x'"), ValueError("bad value"), KeyError("k"),
    BackendError("rejected the request (HTTP 400)", retryable=False, status=400),
])
def test_the_messages_faults_do_not_block(err):
    assert environmental(err) is None


def _stage(handler, health):
    topics, sent, metrics = Topics("ns"), [], Metrics()
    return Stage("synthesize", topics.prompts, topics, metrics, handler, health), topics, sent, metrics


def _raw(topics, pid="p1") -> Raw:
    return Raw("ns.prompts", 0, 7, pid.encode(),
               topics.prompts.codec.encode(Prompt(id=pid, messages=[Message(role="user", content="hi")])))


def test_a_blocked_stage_holds_its_input_retries_and_goes_on_once_fixed(monkeypatch, caplog):
    monkeypatch.setattr(health_mod, "RETRY_FIRST_S", 0.001)
    monkeypatch.setattr(health_mod, "RETRY_MAX_S", 0.002)
    health = Health(Metrics().registry, worker="w:1")
    tries = []

    async def handler(p):
        tries.append(p.id)
        if len(tries) <= 3:  # the model file is missing for three tries, then it is there
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/models/m.gguf")
        return [Emit(CURATED, p.id, p)]

    stage, topics, sent, metrics = _stage(handler, health)
    seen_blocked = []

    async def watch():
        while len(tries) < 4:
            seen_blocked.append(health.is_blocked("synthesize"))
            await asyncio.sleep(0)

    async def go():
        await asyncio.gather(handle(stage, _raw(topics), sent), watch())

    with caplog.at_level(logging.INFO, logger="streams.health"):
        asyncio.run(go())
    assert [t for t, _, _ in sent] == ["ns.curated"]  # no dead letter, the one output after the fix
    assert len(tries) == 4 and any(seen_blocked) and not health.is_blocked("synthesize")
    assert metrics.sample("prefstream_dead_letters_total", agent="synthesize", topic="prompts", outcome="error") is None
    assert metrics.sample("prefstream_messages_in_total", agent="synthesize", topic="prompts") == 1
    blocked_logs = [r for r in caplog.records if "blocked (os_error)" in r.getMessage()]
    assert len(blocked_logs) == 1 and "/models/m.gguf" in blocked_logs[0].getMessage()  # once per change
    assert any("unblocked" in r.getMessage() for r in caplog.records)


def test_health_exports_the_reason_and_the_fix_and_clears_them():
    metrics = Metrics()
    health = Health(metrics.registry, worker="w:1")
    health.add("curate")
    assert health.ready() and [s.blocked for s in health.states()] == [False]
    health.block("curate", Blocked("no_objective", "no objective published", "prefstream objective apply FILE"))
    assert metrics.sample("prefstream_stage_blocked", stage="curate", reason="no_objective") == 1
    [state] = list(health.states())
    assert state.blocked and state.reason == "no_objective" and state.fix == "prefstream objective apply FILE"
    health.block("curate", Blocked("something new", "odd", "fix it"))  # an unknown reason: a bounded label
    assert metrics.sample("prefstream_stage_blocked", stage="curate", reason="environment") == 1
    assert metrics.sample("prefstream_stage_blocked", stage="curate", reason="no_objective") == 0
    health.clear("curate")
    assert health.ready() and metrics.sample("prefstream_stage_blocked", stage="curate", reason="environment") == 0


def test_readiness_says_not_ready_while_a_stage_is_blocked():
    metrics = Metrics()
    health = Health(metrics.registry, worker="w:1")
    port = free_port()
    assert metrics.serve(port, "127.0.0.1", health)
    base = f"http://127.0.0.1:{port}"
    assert get_json(f"{base}/readyz") == (200, {"ready": True, "worker": "w:1", "blocked": []})
    health.block("synthesize", Blocked("model_missing", "the GGUF file /m.gguf does not exist", "set PREFSTREAM_MODEL_PATH"))
    status, body = get_json(f"{base}/readyz")
    assert status == 503 and not body["ready"]
    assert body["blocked"][0]["reason"] == "model_missing" and body["blocked"][0]["fix"] == "set PREFSTREAM_MODEL_PATH"
    assert get_json(f"{base}/healthz")[0] == 200
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
        assert 'prefstream_stage_blocked{reason="model_missing",stage="synthesize"} 1.0' in r.read().decode()
    health.clear("synthesize")
    assert get_json(f"{base}/readyz")[0] == 200
