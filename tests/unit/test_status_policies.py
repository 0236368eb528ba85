"""`prefstream status`'s policies: the newest version of each name with its base model, adapter
sha256 (a prefix in the table) and when it was published; none where the topics are missing."""
from __future__ import annotations

import asyncio
import io

from rich.console import Console

from schemas import Policy
from streams.commands.reports.policies import newest_policies, policy_status, render
from streams.policies import PolicyStore
from streams.settings import load
from streams.topics import from_settings


def policy(name: str, version: int, sha: str, when: float) -> Policy:
    return Policy(name=name, version=version, base_model=f"base-{name}", adapter_gguf=f"/a/{name}-{version}.gguf",
                  sha256=sha * 64, created_at=when)


def store() -> PolicyStore:
    tutor = {v: policy("tutor", v, c, 1000.0 + v) for v, c in ((1, "a"), (2, "b"), (3, "c"))}
    coach = {1: policy("coach", 1, "d", 5.0)}
    return PolicyStore(live={"tutor": tutor[2], "coach": coach[1]}, versions={"tutor": tutor, "coach": coach})


def test_each_policy_with_its_newest_version():
    rows = newest_policies(store())
    assert [(r["ref"], r["base_model"], r["sha256"], r["published_at"], r["versions"]) for r in rows] == [
        ("coach@1", "base-coach", "d" * 64, 5.0, 1), ("tutor@3", "base-tutor", "c" * 64, 1003.0, 3)]
    assert rows[1]["adapter"] == "/a/tutor-3.gguf"


def test_the_table_shows_a_sha256_prefix():
    out = io.StringIO()
    render(Console(file=out, width=200), newest_policies(store()))
    text = out.getvalue()
    assert "tutor@3" in text and "c" * 12 in text and "c" * 13 not in text and "base-coach" in text
    out = io.StringIO()
    render(Console(file=out, width=200), [])
    assert "no policy published" in out.getvalue()


def test_missing_policy_topics_read_nothing():
    settings = load({}, broker="127.0.0.1:1", namespace="t")  # no broker: reading would fail
    topics = from_settings(settings)
    assert asyncio.run(policy_status(settings, topics, [topics.policy_history.name])) == []
