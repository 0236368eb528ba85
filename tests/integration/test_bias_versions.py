"""Bias figures per objective version across two workers: the counters both export, summed,
equal the figures recomputed from the judged sets on the topic (and `report`'s)."""
from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

from agents.evaluators.bias import by_version, counts
from schemas import (EvaluationSpec, EvaluatorSpec, GeneratorSpec, InstantiationSpec, JudgedSet, JudgeSpec, Message,
                     ObjectiveSpec, Outcome, Prompt, SynthesisSpec)
from streams.admin import create_topics, producer
from streams.broker import free_port
from agents.objectives import apply, read_all
from streams.commands.run import publish_objective
from streams.topics import from_settings
from tests.conftest import ROOT, settings_env

N = 16


def objective(judge_w: float) -> ObjectiveSpec:
    """Echo writers of two lengths (ties within each), an echo-backed judge (its verdicts
    mostly unreadable: parse failures; same family as the writers)."""
    return ObjectiveSpec(
        name="bv",
        synthesis=SynthesisSpec(candidates=4, generators=[
            GeneratorSpec(backend="echo", model="echo", max_tokens=32),
            GeneratorSpec(backend="echo", model="echo", max_tokens=6)]),
        evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="length", weight=1.0),
                                              EvaluatorSpec(name="judge", weight=judge_w)],
                                  judge=JudgeSpec(backend="echo", model="echo", retries=0),
                                  aggregation="weighted_mean", features=[], guards=[]),
        instantiation=InstantiationSpec(min_margin=0.0),
    )


def _assigned(log: str) -> int | None:
    found = re.findall(r"evaluate: assigned \[([^\]]*)\]", Path(log).read_text())
    return len(found[-1].split(",")) if found and found[-1].strip() else None


def _events(port: int) -> Counter:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = Counter()
    for m in re.finditer(r'^prefstream_bias_events_total\{([^}]*)\} (\S+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        out[(f'{labels["objective"]}@{labels["version"]}', labels["figure"], labels["outcome"])] += float(m.group(2))
    return out


def _submit(settings, topics, start: int) -> None:
    async def go():
        p = producer(settings)
        await p.start()
        for i in range(start, start + N):
            pr = Prompt(id=f"p-bv-{i:03d}", objective="bv", messages=[Message(role="user", content=f"q {i} " * 4)])
            await p.send(topics.prompts.name, topics.prompts.codec.encode(pr), key=pr.id.encode())
        await p.stop()

    asyncio.run(go())


def _outcomes(settings, topics, ref: str, want: int) -> int:
    deadline = time.monotonic() + 180
    while True:
        n = sum(isinstance(v, Outcome) and v.objective == ref
                for _, v, _ in asyncio.run(read_all(settings, [topics.outcomes])))
        if n >= want or time.monotonic() > deadline:
            return n
        time.sleep(1)


def test_bias_per_version_summed_over_two_workers_equals_the_judged_sets(settings, workers):
    topics = from_settings(settings)
    asyncio.run(create_topics(settings, topics))
    asyncio.run(publish_objective(settings, topics, objective(1.0)))
    ports = [free_port(), free_port()]
    procs = [workers.start(settings.replace(metrics_port=port)) for port in ports]
    deadline = time.monotonic() + 90
    while not all(_assigned(p.log_path) == 1 for p in procs) and time.monotonic() < deadline:
        time.sleep(1)  # each worker holds one of the two partitions
    assert all(_assigned(p.log_path) == 1 for p in procs), [open(p.log_path).read()[-2000:] for p in procs]
    _submit(settings, topics, 0)
    assert _outcomes(settings, topics, "bv@1", N) == N
    assert asyncio.run(apply(settings, topics, objective(3.0))).spec.ref == "bv@2"
    deadline = time.monotonic() + 60
    while not all("objective bv@2 now live" in Path(p.log_path).read_text() for p in procs):
        assert time.monotonic() < deadline, "v2 never went live in both workers"
        time.sleep(0.5)
    _submit(settings, topics, N)
    assert _outcomes(settings, topics, "bv@2", N) == N

    scraped = [_events(port) for port in ports]
    assert all(sum(s.values()) > 0 for s in scraped)  # both workers judged sets
    total = scraped[0] + scraped[1]
    judged = [v for _, v, _ in asyncio.run(read_all(settings, [topics.judgments])) if isinstance(v, JudgedSet)]
    trackers = by_version(judged)
    assert sorted(trackers) == ["bv@1", "bv@2"]
    for ref, tracker in trackers.items():
        for figure, (hits, n) in counts(tracker).items():
            assert (total[(ref, figure, "hit")], total[(ref, figure, "total")]) == (hits, n), (ref, figure)
        assert tracker.ties[1] > 0 and tracker.families[1] > 0 and tracker.parses[1] > 0

    # `report` shows the same figures per version, from the topics
    proc = subprocess.run([sys.executable, "-m", "streams.commands.cli", "report", "--topic", "--json", "-"], cwd=ROOT,
                          env=settings_env(settings), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    by_ref = json.loads(proc.stdout)["bias"]["by_version"]
    for ref, tracker in trackers.items():
        hits, n = counts(tracker)["tie_rate"]
        assert by_ref[ref]["tie_rate"] == hits / n and by_ref[ref]["judged_sets"] == len(tracker.seen)
        hits, n = counts(tracker)["parse_failure_rate"]
        assert by_ref[ref]["parse_failure_rate"] == hits / n
