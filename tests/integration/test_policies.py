"""Policies on a real broker: publish, list, show, history, rollback through the CLI; versions
only go up; a missing file or a wrong sha256 is refused with the fix, and nothing is published."""
from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from schemas import Policy
from streams.admin import create_topics
from streams.commands.cli import main
from streams.policies import PolicyError, newest_policy, policy_history, publish_policy
from streams.policies.registry import PolicyRegistry
from streams.topics import from_settings
from tests.conftest import settings_env


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def env(settings, monkeypatch):
    for k, v in settings_env(settings).items():
        if k.startswith("PREFSTREAM_"):
            monkeypatch.setenv(k, v)
    monkeypatch.setenv("PREFSTREAM_LOG_LEVEL", "WARNING")
    asyncio.run(create_topics(settings, from_settings(settings)))
    return settings


def adapter(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_publish_list_show_history_rollback(env, tmp_path, capsys):
    a, b = adapter(tmp_path, "a.gguf", b"adapter one"), adapter(tmp_path, "b.gguf", b"adapter two")
    rc, out, _ = cli(capsys, "policy", "publish", "tutor", "--base", "gemma", "--gguf", a, "--json")
    assert rc == 0
    v1 = json.loads(out)
    assert (v1["version"], v1["sha256"], v1["parent"]) == (1, hashlib.sha256(b"adapter one").hexdigest(), None)
    rc, out, _ = cli(capsys, "policy", "publish", "tutor", "--base", "gemma", "--gguf", b, "--note", "round 2",
                     "--json")
    assert rc == 0 and (json.loads(out)["version"], json.loads(out)["parent"]) == (2, 1)

    rc, out, _ = cli(capsys, "policy", "list", "--json")
    assert rc == 0 and [(p["name"], p["version"]) for p in json.loads(out)] == [("tutor", 2)]
    rc, out, _ = cli(capsys, "policy", "show", "tutor@1")
    assert rc == 0 and json.loads(out)["adapter_gguf"] == a

    rc, out, _ = cli(capsys, "policy", "rollback", "tutor", "--to", "1", "--json")
    assert rc == 0
    v3 = json.loads(out)
    assert (v3["version"], v3["adapter_gguf"], v3["sha256"], v3["parent"]) == (3, a, v1["sha256"], 1)
    assert v3["adapter_name"] == "tutor-v1"  # the same adapter, under the name vLLM already serves it
    rc, out, _ = cli(capsys, "policy", "history", "tutor", "--json")
    assert rc == 0 and [p["version"] for p in json.loads(out)] == [1, 2, 3]
    rc, out, _ = cli(capsys, "policy", "show", "tutor")
    assert json.loads(out)["version"] == 3

    rc, _, err = cli(capsys, "policy", "rollback", "tutor", "--to", "9")
    assert rc == 2 and "no version 9" in err and "known versions: 1, 2, 3" in err


def test_versions_only_go_up(env, tmp_path):
    a = adapter(tmp_path, "a.gguf", b"x")
    first = asyncio.run(publish_policy(env, Policy(name="p", base_model="m", adapter_gguf=a)))
    second = asyncio.run(publish_policy(env, Policy(name="p", version=1, base_model="m", adapter_gguf=a)))
    third = asyncio.run(publish_policy(env, Policy(name="p", version=50, base_model="m", adapter_gguf=a)))
    assert [first.version, second.version, third.version] == [1, 2, 3]  # the version asked for is ignored
    assert [p.version for p in asyncio.run(policy_history(env, "p"))] == [1, 2, 3]
    assert asyncio.run(newest_policy(env, "p")).version == 3
    assert asyncio.run(newest_policy(env, "nobody")) is None


def test_refused_adapters_name_the_fix_and_publish_nothing(env, tmp_path, capsys):
    rc, _, err = cli(capsys, "policy", "publish", "p", "--base", "m", "--gguf", str(tmp_path / "missing.gguf"))
    assert rc == 2 and "does not exist" in err and "publish its path" in err
    a = adapter(tmp_path, "a.gguf", b"x")
    rc, _, err = cli(capsys, "policy", "publish", "p", "--base", "m", "--gguf", a, "--sha256", "0" * 64)
    assert rc == 2 and hashlib.sha256(b"x").hexdigest() in err and "without --sha256" in err
    rc, _, err = cli(capsys, "policy", "publish", "p", "--base", "m")
    assert rc == 2 and "--gguf" in err
    rc, _, err = cli(capsys, "policy", "publish", "p", "--base", "m", "--peft", str(tmp_path))
    assert rc == 2 and "adapter_config.json" in err
    rc, _, err = cli(capsys, "policy", "publish", "../p", "--base", "m", "--gguf", a)
    assert rc == 2 and "letters, digits" in err
    assert asyncio.run(policy_history(env)) == []


def test_rollback_refuses_a_changed_file(env, tmp_path):
    a = adapter(tmp_path, "a.gguf", b"x")
    asyncio.run(publish_policy(env, Policy(name="p", base_model="m", adapter_gguf=a)))
    (tmp_path / "a.gguf").write_bytes(b"overwritten")
    from streams.policies import rollback_policy
    with pytest.raises(PolicyError, match="changed since it was hashed"):
        asyncio.run(rollback_policy(env, "p", 1))


def test_registry_follows_new_versions(env, tmp_path):
    a = adapter(tmp_path, "a.gguf", b"x")

    async def go():
        await publish_policy(env, Policy(name="p", base_model="m", adapter_gguf=a))
        reg = PolicyRegistry()
        task = asyncio.create_task(reg.follow(env, from_settings(env)))
        try:
            assert await reg.wait_ready(30)
            assert reg.newest("p").version == 1
            await publish_policy(env, Policy(name="p", base_model="m", adapter_gguf=a))
            for _ in range(100):
                if reg.newest("p").version == 2:
                    break
                await asyncio.sleep(0.1)
            assert reg.newest("p").version == 2 and reg.get("p", 1).version == 1 and reg.get("p", 3) is None
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(go())


def _record(i: int, policy: str | None):
    from schemas import Message, PreferenceRecord, Side

    side = Side(candidate_id=f"c{i}", model="m", score=1.0, policy=policy)
    return PreferenceRecord(id=f"r-{i}", prompt_id=f"p{i}", objective="o@1",
                            prompt=[Message(role="user", content=f"q{i}")],
                            chosen=[Message(role="assistant", content="a")],
                            rejected=[Message(role="assistant", content="b")], score_chosen=1.0,
                            score_rejected=0.0, margin=1.0, chosen_side=side, rejected_side=side, policy=policy)


def _stream(env, tmp_path) -> list:
    """Versions 1..4 of `tutor` published; records from each version and one with no policy."""
    from streams.admin import producer

    a = adapter(tmp_path, "a.gguf", b"x")
    for _ in range(4):
        asyncio.run(publish_policy(env, Policy(name="tutor", base_model="m", adapter_gguf=a)))
    recs = [_record(v, f"tutor@{v}") for v in (1, 2, 3, 4)] + [_record(0, None)]
    topics = from_settings(env)

    async def send():
        p = producer(env)
        await p.start()
        for r in recs:
            # one key, one partition: read in this order, so once r-0 is written every record was read
            await p.send_and_wait(topics.preferences.name, topics.preferences.codec.encode(r), key=b"p")
        await p.stop()

    asyncio.run(send())
    return recs


def test_tap_skips_and_counts_records_over_the_policy_lag(env, tmp_path, capsys):
    import subprocess
    import sys

    import httpx

    from streams.broker import free_port
    from tests.conftest import ROOT
    from tests.integration.test_blocked import _until

    _stream(env, tmp_path)
    out, port = tmp_path / "tap", free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streams.commands.cli", "tap", "--out", str(out), "--max-policy-lag", "1",
                             "--metrics-port", str(port)],
                            cwd=ROOT, env=settings_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    path = out / "preferences.jsonl"
    try:
        _until(lambda: path.is_file() and '"r-0"' in path.read_text(), timeout=60)
        # what Prometheus scrapes from the tap (the dashboard's "stale rows skipped" panel)
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert 'prefstream_policy_stale_skipped_total{policy="tutor"} 2.0' in scraped
    finally:
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=60)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == ["r-0", "r-3", "r-4"], stderr  # tutor@1, @2 are > 1 behind @4
    assert [r.get("policy") for r in sorted(lines, key=lambda r: r["id"])] == [None, "tutor@3", "tutor@4"]
    assert 'skipped 2 records more than 1 versions behind' in stdout and '"tutor@1": 1' in stdout


def test_dataset_rows_skip_records_over_the_policy_lag(env, tmp_path):
    from streams.commands.tap.dataset import rows
    from streams.metrics import Metrics

    _stream(env, tmp_path)
    stats: dict = {}
    m = Metrics()
    got = {r["id"]: r["policy"] for r in rows(env, "trl-dpo", follow=False, max_policy_lag=0, stats=stats, metrics=m)}
    assert got == {"r-0": None, "r-4": "tutor@4"}  # rows name the policy version too
    assert stats["skipped_stale"] == 3 and stats["skipped_by_policy"] == {"tutor@1": 1, "tutor@2": 1, "tutor@3": 1}
    assert m.sample("prefstream_policy_stale_skipped_total", policy="tutor") == 3
    assert sorted(r["id"] for r in rows(env, "trl-dpo", follow=False)) == ["r-0", "r-1", "r-2", "r-3", "r-4"]


def test_status_lists_the_newest_version_of_each_policy(env, tmp_path, capsys):
    a, b = adapter(tmp_path, "a.gguf", b"one"), adapter(tmp_path, "b.gguf", b"two")
    for name, path in (("tutor", a), ("tutor", b), ("coach", a)):
        asyncio.run(publish_policy(env, Policy(name=name, base_model="gemma", adapter_gguf=path)))
    rc, out, _ = cli(capsys, "status", "--json")
    assert rc == 0
    got = {p["ref"]: p for p in json.loads(out)["policies"]}
    assert list(got) == ["coach@1", "tutor@2"]
    assert got["tutor@2"]["sha256"] == hashlib.sha256(b"two").hexdigest() and got["tutor@2"]["versions"] == 2
    assert got["tutor@2"]["base_model"] == "gemma" and got["tutor@2"]["published_at"] > 0
    rc, out, _ = cli(capsys, "status")
    assert rc == 0 and "tutor@2" in out and hashlib.sha256(b"two").hexdigest()[:12] in out
