"""Shared fixtures: a real Kafka-protocol broker (Tansu) on a free loopback port, a unique
topic namespace per test, and worker processes that are always stopped."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker
from streams.settings import Settings, load
from tests.fixtures_llama import llama_server  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def settings(broker, namespace, tmp_path) -> Settings:
    # metrics_port=0: several workers run at once in tests; a test that scrapes sets a free port
    return load({}, broker=broker.address, namespace=namespace, partitions=2, data_dir=str(tmp_path / "data"),
                objective_wait_s=20.0, metrics_port=0)


def get_json(url: str) -> tuple[int, dict]:
    """GET ``url``: (status, JSON body), for 4xx/5xx too (a worker's /readyz answers 503)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def settings_env(s: Settings) -> dict[str, str]:
    return {**os.environ, "PREFSTREAM_BROKER": s.broker, "PREFSTREAM_NAMESPACE": s.namespace,
            "PREFSTREAM_PARTITIONS": str(s.partitions), "PREFSTREAM_DATA_DIR": s.data_dir,
            "PREFSTREAM_METRICS_PORT": str(s.metrics_port), "PYTHONUNBUFFERED": "1",
            "PREFSTREAM_ALLOWED_ENDPOINTS": s.allowed_endpoints or ""}


class Workers:
    """Start `prefstream worker` processes; every one is stopped at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen] = []

    def start(self, s: Settings, agents: str | None = None, **env: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "streams.commands.cli", "worker"] + (["--agents", agents] if agents else [])
        log = (self.tmp_path / f"worker-{len(self.procs)}.log").open("ab")
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**settings_env(s), **env}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        proc.log_path = log.name
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


@pytest.fixture
def workers(tmp_path):
    w = Workers(tmp_path)
    yield w
    w.stop_all()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"reference data missing at {DATA}: the checkout needs ../shared/data beside it")
    return DATA
