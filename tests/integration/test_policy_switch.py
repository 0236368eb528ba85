"""Policies in a running pipeline (real broker, real worker processes), against a loopback
stand-in for vLLM (vLLM cannot be installed here): it records every call, answers
``/v1/load_lora_adapter`` as vLLM does (or 404 as a server without runtime LoRA loading), and
writes which model (adapter) answered into each completion, so a record's text shows which
version made it.

* Switch mid-stream: every record names the version that made it; none before the switch
  carries v2, none after it v1.
* A server that cannot load adapters blocks synthesize (``adapter_unsupported``), dead-letters
  nothing, and after the fix every prompt is processed once.
"""
from __future__ import annotations

import asyncio
import json
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from schemas import EvaluationSpec, EvaluatorSpec, GeneratorSpec, ObjectiveSpec, Policy, SynthesisSpec
from streams.admin import create_topics
from streams.policies import publish_policy
from streams.commands.run import publish_objective
from streams.topics import from_settings
from tests.integration.test_blocked import _prompts, _read, _status, _submit, _until


class FakeVLLM(BaseHTTPRequestHandler):
    lora = True  # False: answers 404 on /v1/load_lora_adapter (no VLLM_ALLOW_RUNTIME_LORA_UPDATING)
    calls: list = []
    loaded: set = set()

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        cls = type(self)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls.calls.append((self.path, body))
        if self.path == "/v1/load_lora_adapter":
            if not cls.lora:
                return self._send(404, b'{"detail":"Not Found"}')
            if body["lora_name"] in cls.loaded:
                return self._send(400, f"The lora adapter '{body['lora_name']}' has already been loaded.".encode())
            cls.loaded.add(body["lora_name"])
            return self._send(200, f"Success: LoRA adapter '{body['lora_name']}' added successfully.".encode())
        if body["model"] not in cls.loaded | {"base"}:
            return self._send(404, f'{{"error":"The model `{body["model"]}` does not exist."}}'.encode())
        text = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        i = int(re.search(r"What is (\d+) \+", text).group(1))
        choices = []
        for j in range(body.get("n", 1)):  # even seeds answer right, odd ones wrong: one pair per prompt
            answer = 2 * i if (body["seed"] + j) % 2 == 0 else 2 * i + 1
            content = f"[{body['model']}] The answer is {answer}."
            choices.append({"index": j, "finish_reason": "stop", "message": {"role": "assistant", "content": content},
                            "text": content})
        self._send(200, json.dumps({"choices": choices, "usage": {"prompt_tokens": 5, "completion_tokens": 6}}).encode())

    def _send(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def vllm():
    FakeVLLM.lora, FakeVLLM.calls, FakeVLLM.loaded = True, [], set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeVLLM)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _setup(settings, url: str, tmp_path: Path):
    settings = settings.replace(allowed_endpoints=url)  # the operator allows this model server
    topics = from_settings(settings)
    asyncio.run(create_topics(settings, topics))
    spec = ObjectiveSpec(name="default", version=1, synthesis=SynthesisSpec(candidates=2, generators=[
        GeneratorSpec(backend="openai", model="base", base_url=url, policy="tutor")]),
        evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="math")]))
    asyncio.run(publish_objective(settings, topics, spec))
    return settings, topics


def _publish(settings, tmp_path: Path, version: int) -> Policy:
    peft = tmp_path / f"adapter-{version}"
    peft.mkdir()
    (peft / "adapter_config.json").write_text('{"r": 8}')
    return asyncio.run(publish_policy(settings, Policy(name="tutor", base_model="base", adapter_peft=str(peft))))


def _log_has(proc, text: str):
    def check():
        return text in Path(proc.log_path).read_text(errors="replace")
    check.__doc__ = f"worker log says {text!r}"
    return check


def test_a_policy_switch_mid_stream_every_record_names_its_version(settings, workers, vllm, tmp_path):
    settings, topics = _setup(settings, vllm, tmp_path)
    v1 = _publish(settings, tmp_path, 1)
    worker = workers.start(settings)
    before = _prompts(4, "before")
    _submit(settings, topics, before)
    seen = _read(settings, topics, ["outcomes", "preferences"], lambda s: len(s["outcomes"]) >= len(before))
    v2 = _publish(settings, tmp_path, 2)
    _until(_log_has(worker, "policy tutor@2 now newest"), timeout=60)
    after = _prompts(4, "after")
    _submit(settings, topics, after)
    seen = _read(settings, topics, ["outcomes", "preferences", "deadletters", "candidates"],
                 lambda s: len(s["outcomes"]) >= len(before) + len(after))
    assert seen["deadletters"] == []
    by_prompt = {r.prompt_id: r for r in seen["preferences"]}
    assert set(by_prompt) == {p.id for p in before + after}  # one pair per prompt
    for pid, r in by_prompt.items():
        want = v1 if pid.startswith("before") else v2
        assert r.policy == want.ref and r.chosen_side.policy == r.rejected_side.policy == want.ref
        # the text came from the adapter the record names
        assert r.chosen[0].content.startswith(f"[{want.served_name}]")
        assert r.rejected[0].content.startswith(f"[{want.served_name}]")
    assert {c.policy for s in seen["candidates"] for c in s.candidates} == {"tutor@1", "tutor@2"}
    loads = [b for path, b in FakeVLLM.calls if path == "/v1/load_lora_adapter"]
    assert loads == [{"lora_name": "tutor-v1", "lora_path": v1.adapter_peft},
                     {"lora_name": "tutor-v2", "lora_path": v2.adapter_peft}]  # once per version
    asked = Counter(b["model"] for path, b in FakeVLLM.calls if path != "/v1/load_lora_adapter")
    assert set(asked) == {"tutor-v1", "tutor-v2"}  # never the base model


def test_a_server_without_lora_blocks_synthesize_and_loses_nothing(settings, workers, vllm, tmp_path):
    FakeVLLM.lora = False
    settings, topics = _setup(settings, vllm, tmp_path)
    _publish(settings, tmp_path, 1)
    workers.start(settings)
    prompts = _prompts(3)
    _submit(settings, topics, prompts)

    def blocked():
        """synthesize blocked in status"""
        return [b for b in _status(settings)["stages"]["blocked"] if b["stage"] == "synthesize"] or None

    [entry] = _until(blocked)
    assert entry["reason"] == "adapter_unsupported" and "HTTP 404" in entry["detail"] and "tutor@1" in entry["detail"]
    assert "--enable-lora" in entry["fix"] and "VLLM_ALLOW_RUNTIME_LORA_UPDATING" in entry["fix"]
    FakeVLLM.lora = True  # the fix: the server restarted with runtime LoRA loading
    seen = _read(settings, topics, ["outcomes", "deadletters"], lambda s: len(s["outcomes"]) >= len(prompts),
                 timeout=180)
    assert seen["deadletters"] == []
    counts = Counter(o.prompt_id for o in seen["outcomes"])
    assert set(counts) == {p.id for p in prompts} and set(counts.values()) == {1}


def test_a_restarted_server_is_given_the_adapter_again(settings, workers, vllm, tmp_path):
    settings, topics = _setup(settings, vllm, tmp_path)
    v1 = _publish(settings, tmp_path, 1)
    workers.start(settings)
    first, second = _prompts(2, "first"), _prompts(2, "second")
    _submit(settings, topics, first)
    _read(settings, topics, ["outcomes"], lambda s: len(s["outcomes"]) >= len(first))
    FakeVLLM.loaded.clear()  # the server restarted: it knows no adapter; requests naming one get 404
    _submit(settings, topics, second)
    seen = _read(settings, topics, ["outcomes", "deadletters"], lambda s: len(s["outcomes"]) >= 4)
    assert seen["deadletters"] == [] and len({o.prompt_id for o in seen["outcomes"]}) == 4
    loads = [b["lora_name"] for path, b in FakeVLLM.calls if path == "/v1/load_lora_adapter"]
    assert loads == [v1.served_name, v1.served_name]
