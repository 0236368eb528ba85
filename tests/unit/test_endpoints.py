"""An objective's model servers come from the operator's allowlist, and the API key goes only to
the server it was configured for (issue 26, item 3): real HTTP servers on loopback record what
reaches them."""
from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys

import pytest
from aiohttp import web

from agents.backends.base import BackendError, GenRequest
from agents.backends.registry import Backends
from agents.evaluators.reward import RewardModel
from schemas import (Candidate, EvaluationSpec, EvaluatorSpec, GeneratorSpec, JudgeSpec, Message, ObjectiveSpec,
                     Prompt, Sampling, SynthesisSpec)
from streams.endpoints import EndpointError, origin, redact
from agents.objectives.registry import ObjectiveRegistry
from agents.objectives import ObjectiveError, validate
from streams.settings import Settings, SettingsError
from tests.conftest import ROOT

KEY = "sk-secret-for-the-default-server"
REQ = GenRequest(prompt="Question: 2+2?\nAnswer:", max_tokens=2)


@contextlib.asynccontextmanager
async def recording_server(seen: list):
    """A loopback HTTP server that records each request's path and Authorization header and
    answers 400 (not retried), so a test sees exactly what one call sends."""
    async def handler(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("Authorization")))
        return web.json_response({"error": "recorded"}, status=400)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def objective(base_url: str | None = None, judge_url: str | None = None, reward_url: str | None = None,
              version: int = 1) -> ObjectiveSpec:
    evaluators = [EvaluatorSpec(name="math")]
    if reward_url:
        evaluators.append(EvaluatorSpec(name="reward", params={"base_url": reward_url}))
    return ObjectiveSpec(
        name="o", version=version,
        synthesis=SynthesisSpec(generators=[GeneratorSpec(backend="openai", model="m", base_url=base_url)]),
        evaluation=EvaluationSpec(evaluators=evaluators,
                                  judge=JudgeSpec(backend="openai", model="j", base_url=judge_url)))


def test_origins_are_normalised_and_credentials_refused_or_redacted():
    assert origin("http://GPU-A:8000/v1/") == "http://gpu-a:8000"
    assert origin("https://rm.example/x") == "https://rm.example:443"
    for bad in ("ftp://h/x", "file:///etc/passwd", "http://", "http://u:p@h:1"):
        with pytest.raises(EndpointError):
            origin(bad)
    assert redact("http://user:hunter2@h:8000/v1") == "http://***@h:8000/v1"
    assert redact("http://h:8000") == "http://h:8000"
    with pytest.raises(SettingsError, match="PREFSTREAM_ALLOWED_ENDPOINTS"):
        Backends(Settings(allowed_endpoints="gopher://x"))


def test_the_key_goes_only_to_the_default_server_and_others_must_be_allowed():
    async def go():
        default_seen, other_seen, stranger_seen = [], [], []
        async with recording_server(default_seen) as default, recording_server(other_seen) as other, \
                recording_server(stranger_seen) as stranger:
            s = Settings(openai_base_url=default + "/v1", openai_api_key=KEY, allowed_endpoints=other, retries=1)
            backends = Backends(s)
            for url in (None, other):  # the default server, then an allowlisted other one
                with pytest.raises(BackendError):
                    await backends.get(GeneratorSpec(backend="openai", model="m", base_url=url)).generate(REQ)
            with pytest.raises(BackendError, match="PREFSTREAM_ALLOWED_ENDPOINTS"):
                backends.get(GeneratorSpec(backend="openai", model="m", base_url=stranger + "/v1"))
            await backends.close()
        return default_seen, other_seen, stranger_seen

    default_seen, other_seen, stranger_seen = asyncio.run(go())
    assert [auth for _, auth in default_seen] == [f"Bearer {KEY}"]
    assert [auth for _, auth in other_seen] == [None]  # reached, but without the key
    assert stranger_seen == []  # never reached


def test_apply_refuses_an_objective_naming_a_server_not_allowed_and_names_the_setting():
    s = Settings(openai_base_url="http://127.0.0.1:8000/v1", allowed_endpoints="http://gpu-a:8000")
    validate(objective(base_url="http://gpu-a:8000/v1", judge_url="http://127.0.0.1:8000"), s)
    for spec, where in [(objective(base_url="http://attacker.example/v1"), "synthesis.generators[0].base_url"),
                        (objective(judge_url="http://169.254.169.254"), "evaluation.judge.base_url"),
                        (objective(reward_url="http://10.0.0.1:8000"), "(reward).params.base_url")]:
        with pytest.raises(ObjectiveError, match="PREFSTREAM_ALLOWED_ENDPOINTS") as info:
            validate(spec, s)
        assert where in str(info.value)


def test_the_cli_refuses_it_before_asking_the_broker(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: evil\nsynthesis:\n  generators:\n    - backend: openai\n      model: m\n"
                    "      base_url: http://attacker.example:8000/v1\n")
    env = {"PATH": "/usr/bin:/bin", "PREFSTREAM_BROKER": "127.0.0.1:9", "PREFSTREAM_OPENAI_API_KEY": KEY}
    proc = subprocess.run([sys.executable, "-m", "streams.commands.cli", "objective", "apply", str(path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "http://attacker.example:8000 is not an allowed model server" in proc.stderr
    assert "PREFSTREAM_ALLOWED_ENDPOINTS" in proc.stderr and KEY not in proc.stderr


def test_a_worker_ignores_it_and_keeps_the_previous_version(caplog):
    async def go():
        reg = ObjectiveRegistry(Settings(allowed_endpoints="http://gpu-a:8000"))
        await reg.update(objective(base_url="http://gpu-a:8000/v1", version=1))
        await reg.update(objective(base_url="http://attacker.example/v1", version=2))
        return reg.get("o")

    live = asyncio.run(go())
    assert live.version == 1 and live.synthesis.generators[0].base_url == "http://gpu-a:8000/v1"
    assert "o@2 ignored, o@1 stays live" in caplog.text and "attacker.example" in caplog.text


def test_the_reward_evaluator_never_calls_a_server_the_worker_does_not_allow():
    prompt = Prompt(id="p", messages=[Message(role="user", content="hi")])
    cands = [Candidate(id="c", text="x", backend="x", model="x",
                       sampling=Sampling(temperature=0, top_p=1, max_tokens=1))]

    async def go():
        seen: list = []
        async with recording_server(seen) as url:
            [score] = await RewardModel(Settings()).score(prompt, cands, objective(reward_url=url))
        return seen, score

    seen, score = asyncio.run(go())
    assert seen == [] and score.value is None and "PREFSTREAM_ALLOWED_ENDPOINTS" in score.error


def test_the_capture_proxy_and_the_worker_apply_the_same_rules():
    import faust
    from prometheus_client import CollectorRegistry

    from agents.pipeline import PIPELINE
    from streams.app import Context
    from streams.metrics import Metrics
    from streams.commands.serving.proxy import Proxy
    from streams.topics import from_settings

    s = Settings(openai_base_url="http://vllm:8000/v1", openai_api_key=KEY)
    same = Proxy("http://vllm:8000/v1", s, None, CollectorRegistry())
    other = Proxy("http://elsewhere:8000/v1", s, None, CollectorRegistry())
    assert same.headers.get("Authorization") == f"Bearer {KEY}" and "Authorization" not in other.headers
    ctx = Context(s, from_settings(s), Metrics())
    PIPELINE.setup(faust.App("t", broker="kafka://127.0.0.1:1", web_enabled=False), ctx, ("curate",))
    assert ctx.objectives.settings is s  # the worker's registry judges objectives by the worker's settings


def _gguf_objective(model: str) -> ObjectiveSpec:
    return ObjectiveSpec(name="o", version=1, synthesis=SynthesisSpec(
        candidates=2, generators=[GeneratorSpec(backend="llamacpp", model=model)]))


def test_an_objective_names_model_files_only_inside_the_operators_model_dir(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "policy.gguf").write_bytes(b"GGUF")
    (tmp_path / "secret.gguf").write_bytes(b"not yours")
    (models / "escape.gguf").symlink_to(tmp_path / "secret.gguf")
    allowed = Settings(model_dir=str(models))
    validate(_gguf_objective("policy.gguf"), allowed)
    for model in ("/etc/passwd.gguf", "../secret.gguf", "escape.gguf", str(tmp_path / "secret.gguf")):
        with pytest.raises(ObjectiveError, match="PREFSTREAM_MODEL_DIR"):
            validate(_gguf_objective(model), allowed)
        with pytest.raises(BackendError, match="outside PREFSTREAM_MODEL_DIR"):  # the worker's last line
            Backends(allowed).get(GeneratorSpec(backend="llamacpp", model=model))
    with pytest.raises(ObjectiveError, match="PREFSTREAM_MODEL_DIR is unset"):
        validate(_gguf_objective("policy.gguf"), Settings())
