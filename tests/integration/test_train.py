"""`prefstream train` for real, on a tiny random Gemma 3 and a real broker: a process killed
with SIGKILL after its first published version and started again trains every pair of its
objective exactly once across the versions it publishes (none of another objective), and the
versions only go up; each version's files are the ones its sha256 names."""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("peft")
pytest.importorskip("gguf")

from streams.admin import create_topics, producer  # noqa: E402
from streams.commands.train.export import sha256  # noqa: E402
from streams.commands.train.state import State  # noqa: E402
from streams.policies import policy_history  # noqa: E402
from streams.topics import from_settings  # noqa: E402
from tests.conftest import ROOT, settings_env  # noqa: E402
from tests.integration.test_tap import pair  # noqa: E402
from tests.tiny_gemma import tiny_gemma  # noqa: E402


async def publish(settings, records) -> None:
    topics = from_settings(settings)
    await create_topics(settings, topics)
    p = producer(settings)
    await p.start()
    try:
        for r in records:
            t = topics.preferences
            await p.send_and_wait(t.name, t.codec.encode(r), key=r.prompt_id.encode())
    finally:
        await p.stop()


def start(settings, base: Path, out: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "streams.commands.cli", "train", "--objective", "math", "--policy", "tutor",
           "--every", "4", "--lr", "1e-2", "--rank", "4", "--until-idle", "3", "--base", str(base), "--out", str(out)]
    return subprocess.Popen(cmd, cwd=ROOT, env={**settings_env(settings), "HF_HUB_OFFLINE": "1"},
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def test_train_resumes_after_kill9_without_training_a_record_twice(settings, tmp_path):
    mine = [pair(i, objective="math@1") for i in range(20)]
    other = [pair(100 + i, objective="other@1") for i in range(4)]
    asyncio.run(publish(settings, mine[:10] + other + mine[10:]))
    base, out, log = tiny_gemma(tmp_path / "tiny"), tmp_path / "train", tmp_path / "train.log"

    proc = start(settings, base, out, log)
    try:
        deadline = time.monotonic() + 240
        while State.load(out).round < 1 or State.load(out).version is None:  # the first trained version
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = State.load(out)
    assert killed_at.version >= 2 and len(killed_at.trained) < 20

    again = start(settings, base, out, log)
    assert again.wait(300) == 0, log.read_text()[-3000:]

    history = asyncio.run(policy_history(settings, "tutor"))
    versions = [p.version for p in history]
    assert versions == sorted(set(versions)) and versions[0] == 1
    assert history[0].trained_on["records"] == 0  # v1: the untrained adapter (the base model)
    trained = []
    for p in history[1:]:
        assert sha256(p.adapter_gguf) == p.sha256
        assert (Path(p.adapter_peft) / "adapter_config.json").is_file()
        ids = json.loads((Path(p.adapter_gguf).parent / "trained.json").read_text())["ids"]
        assert p.trained_on["records"] == len(ids) and p.trained_on["steps"] >= 1
        trained += ids
    assert sorted(trained) == sorted(r.id for r in mine)  # each pair once, no other objective's
    assert history[-1].trained_on["records_total"] == 20
    assert State.load(out).version == versions[-1] and not State.load(out).pending
