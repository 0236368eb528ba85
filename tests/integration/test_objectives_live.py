"""Objectives changed while a real worker runs, on a real broker, with the echo backend and
the math/IFEval verifiers (fast and deterministic).

Three prompt kinds tell the rules apart. Candidates: "Candidate 0" (model `short`) and
"Candidate 0 (seed …) answers: <prompt>" (model `long`).

=====  ==================================  =====================  ============================
kind   prompt                              RULES_A (math 1, if 1, margin 0.2)   RULES_B (math 0, if 1, margin 0.75)
=====  ==================================  =====================  ============================
M      math, reference 7                   pair, margin 1.0       no pair: 0 of 2 scored (math weighs 0)
I2     2 IFEval instructions (long: 1/2)   pair, margin 0.5       no pair: margin 0.5 below 0.75
I1     1 IFEval instruction                pair, margin 1.0       pair, margin 1.0
=====  ==================================  =====================  ============================
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time

import msgspec
import pytest
import yaml

from agents import curate
from agents.evaluators import aggregate
from schemas import Message, ObjectiveSpec, Prompt, Verification
from streams.admin import create_topics, producer, reader
from streams.commands.cli import main
from agents.objectives.registry import ObjectiveRegistry
from agents.objectives import content, load_objective
from streams.topics import from_settings
from tests.conftest import ROOT, settings_env

BASE = {
    "name": "echo",
    "synthesis": {"candidates": 2, "generators": [
        {"backend": "echo", "model": "short", "max_tokens": 2, "count": 1},
        {"backend": "echo", "model": "long", "max_tokens": 40, "count": 1}]},
}
RULES_A = {"evaluation": {"evaluators": [{"name": "math", "weight": 1.0}, {"name": "ifeval", "weight": 1.0}]},
           "instantiation": {"min_margin": 0.2}}
RULES_B = {"evaluation": {"evaluators": [{"name": "math", "weight": 0.0}, {"name": "ifeval", "weight": 1.0}]},
           "instantiation": {"min_margin": 0.75}}
KINDS = {
    "M": ("Write the number 7.", Verification(kind="math", answer="7")),
    "I2": ("Answer in at least five words, all lowercase.", Verification(
        kind="ifeval", instruction_id_list=["length_constraints:number_words", "change_case:english_lowercase"],
        kwargs=[{"relation": "at least", "num_words": 5}, {}])),
    "I1": ("Answer in at least five words.", Verification(
        kind="ifeval", instruction_id_list=["length_constraints:number_words"],
        kwargs=[{"relation": "at least", "num_words": 5}])),
}
# (status, margin or the words the no-pair reason holds) per kind, per rules
EXPECT = {
    "A": {"M": ("records", 1.0), "I2": ("records", 0.5), "I1": ("records", 1.0)},
    "B": {"M": ("no_pair", "only 0 of 2"), "I2": ("no_pair", "below the objective's 0.75"), "I1": ("records", 1.0)},
}
WATCHED = ["curated", "judgments", "outcomes", "preferences", "preferences-shadow", "deadletters"]


def write(tmp_path, fname: str, *parts: dict) -> str:
    data: dict = {}
    for p in (BASE, *parts):
        data.update(p)
    path = tmp_path / fname
    path.write_text(yaml.safe_dump(data))
    return str(path)


def prompt(i: int, objective: str = "echo", tag: str = "") -> tuple[Prompt, str]:
    kind = list(KINDS)[i % 3]
    text, verification = KINDS[kind]
    return Prompt(id=f"p-{tag}{i:04d}-{kind}", messages=[Message(role="user", content=text)], objective=objective,
                  verification=verification), kind


def kind_of(pid: str) -> str:
    return pid.rsplit("-", 1)[1]


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def env(settings, monkeypatch):
    """The CLI, run in this process, talks to the test's broker and namespace."""
    for k, v in settings_env(settings).items():
        if k.startswith("PREFSTREAM_"):
            monkeypatch.setenv(k, v)
    monkeypatch.delenv("PREFSTREAM_OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("PREFSTREAM_LOG_LEVEL", "WARNING")
    asyncio.run(create_topics(settings, from_settings(settings)))
    return settings


class Collector(threading.Thread):
    """Reads the watched topics from the start, in the background, until stopped."""

    def __init__(self, settings) -> None:
        super().__init__(daemon=True)
        self.settings, self.topics = settings, from_settings(settings)
        self.seen: dict[str, list] = {s: [] for s in WATCHED}
        self.lock, self.halt, self.error = threading.Lock(), threading.Event(), None

    def run(self) -> None:
        try:
            asyncio.run(self._read())
        except Exception as e:  # noqa: BLE001 - reported by wait_until
            self.error = e

    async def _read(self) -> None:
        consumer = await reader(self.settings, [getattr(self.topics, s).name for s in WATCHED])
        try:
            while not self.halt.is_set():
                for msgs in (await consumer.getmany(timeout_ms=200)).values():
                    for m in msgs:
                        t = self.topics.by_name(m.topic)
                        with self.lock:
                            self.seen[t.spec.short].append(t.codec.decode(m.value))
        finally:
            await consumer.stop()

    def get(self, short: str) -> list:
        with self.lock:
            return list(self.seen[short])

    def outcomes(self, name: str = "echo") -> dict[str, object]:
        return {o.prompt_id: o for o in self.get("outcomes") if o.objective.split("@")[0] == name}

    def wait_until(self, pred, timeout: float, what: str, worker=None) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert self.error is None, self.error
            if worker is not None:
                assert worker.poll() is None, open(worker.log_path).read()[-3000:]
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.2)


class Stream(threading.Thread):
    """A steady stream of prompts, one every ``interval`` seconds, until stopped."""

    def __init__(self, settings, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.settings, self.interval = settings, interval
        self.sent: list[tuple[str, float]] = []
        self.halt, self.error = threading.Event(), None

    def run(self) -> None:
        try:
            asyncio.run(self._send())
        except Exception as e:  # noqa: BLE001
            self.error = e

    async def _send(self) -> None:
        topic = from_settings(self.settings).prompts
        p = producer(self.settings)
        await p.start()
        try:
            i = 0
            while not self.halt.is_set():
                pr, _ = prompt(i)
                await p.send_and_wait(topic.name, topic.codec.encode(pr), key=pr.id.encode())
                self.sent.append((pr.id, time.time()))
                i += 1
                await asyncio.sleep(self.interval)
        finally:
            await p.stop()


def check_rules(col: Collector, pids, versions: dict[int, ObjectiveSpec], rules: dict[int, str]) -> None:
    """Every outcome, record and judged set of ``pids`` obeys the rules of its version."""
    outcomes = col.outcomes()
    records = {r.id: r for r in col.get("preferences")}
    judged = {j.prompt.id: j for j in col.get("judgments") if j.objective.name == "echo"}
    for pid in pids:
        o, j = outcomes[pid], judged[pid]
        v = int(o.objective.split("@")[1])
        assert j.objective.version == v and content(j.objective) == content(versions[v]), pid
        for cand in j.judged:  # scores weighed with this version's evaluator weights
            assert cand.score == aggregate(cand.scores, versions[v].evaluation)[1], (pid, v)
        status, detail = EXPECT[rules[v]][kind_of(pid)]
        assert o.status == status, (pid, o)
        if status == "records":
            [rid] = o.record_ids
            assert records[rid].objective == o.objective and records[rid].margin == detail
            assert records[rid].margin >= versions[v].instantiation.min_margin
        else:
            assert detail in o.reason, (pid, o.reason)


def test_apply_and_rollback_take_effect_at_the_next_prompt_without_restarting(env, workers, capsys, tmp_path):
    settings = env
    v1_file, v2_file = write(tmp_path, "v1.yaml", RULES_A), write(tmp_path, "v2.yaml", RULES_B)
    assert cli(capsys, "objective", "apply", v1_file)[0] == 0
    worker = workers.start(settings, PREFSTREAM_METRICS_PORT="0")
    col, stream = Collector(settings), Stream(settings)
    col.start()
    stream.start()
    try:
        def at(version: int) -> int:
            return sum(o.objective == f"echo@{version}" for o in col.outcomes().values())

        col.wait_until(lambda: at(1) >= 5, 120, "5 prompts under echo@1", worker)
        ended_before_v2 = dict(col.outcomes())
        rc, out, _ = cli(capsys, "objective", "apply", v2_file)
        assert rc == 0 and "published echo@2 (was echo@1)" in out and "+  min_margin: 0.75" in out
        col.wait_until(lambda: at(2) >= 5, 60, "5 prompts under echo@2", worker)
        rc, out, _ = cli(capsys, "objective", "rollback", "echo", "--to", "1")
        assert rc == 0 and "published echo@3 (was echo@2)" in out
        col.wait_until(lambda: at(3) >= 5, 60, "5 prompts under echo@3", worker)
    finally:
        stream.halt.set()
        stream.join(10)
    assert stream.error is None, stream.error
    sent = dict(stream.sent)
    col.wait_until(lambda: sent.keys() <= col.outcomes().keys(), 60, "every prompt's outcome", worker)
    col.halt.set()
    col.join(10)

    # no prompt lost, none dead-lettered, one worker process throughout
    assert worker.poll() is None and len(workers.procs) == 1
    assert not [d for d in col.get("deadletters") if d.prompt_id in sent]
    curated = {c.prompt.id: c for c in col.get("curated")}
    assert curated.keys() == sent.keys() and len(col.get("curated")) == len(sent)
    # before the switch every record says v1; the switch happens once, at a message boundary
    assert {o.objective for o in ended_before_v2.values()} == {"echo@1"}
    order = sorted(curated.values(), key=lambda c: c.curated_at)
    assert [c.objective.version for c in order] == sorted(c.objective.version for c in order)
    assert {c.objective.version for c in order} == {1, 2, 3}
    first = {v: min(c.curated_at for c in order if c.objective.version == v) for v in (2, 3)}
    for pid, at_ in sent.items():  # sent after the worker switched: the newer version
        v = curated[pid].objective.version
        assert v >= 2 or at_ < first[2], pid
        assert v == 3 or at_ < first[3], pid
    outcomes = col.outcomes()
    assert all(outcomes[pid].objective == curated[pid].objective.ref for pid in sent)
    v1, v2 = load_objective(v1_file), load_objective(v2_file)
    check_rules(col, sent, {1: v1, 2: v2, 3: v1}, {1: "A", 2: "B", 3: "A"})


def test_new_worker_sees_only_the_newest_version_and_a_shadow_runs_on_its_sample(env, workers, capsys,
                                                                                 tmp_path):
    settings = env
    files = [write(tmp_path, "v1.yaml", RULES_A), write(tmp_path, "v2.yaml", RULES_B),
             write(tmp_path, "v3.yaml", RULES_A, {"instantiation": {"min_margin": 0.3}})]
    for f in files:
        assert cli(capsys, "objective", "apply", f)[0] == 0
    shadow = write(tmp_path, "shadow.yaml", RULES_B, {"name": "echo-shadow", "status": "shadow",
                                                      "routing": {"fraction": 0.5}})
    assert cli(capsys, "objective", "apply", shadow)[0] == 0
    prompts = [prompt(i, tag="n")[0] for i in range(24)]
    sampled = {p.id for p in prompts if curate.in_sample(p.id, 0.5)}
    assert sampled and any(kind_of(p) == "I1" for p in sampled)  # the sample exercises every branch

    async def submit():
        p = producer(settings)
        await p.start()
        topic = from_settings(settings).prompts
        for pr in prompts:
            await p.send_and_wait(topic.name, topic.codec.encode(pr), key=pr.id.encode())
        await p.stop()

    asyncio.run(submit())
    worker = workers.start(settings, PREFSTREAM_METRICS_PORT="0")  # started after three versions were applied
    col = Collector(settings)
    col.start()
    ids = {p.id for p in prompts}
    col.wait_until(lambda: ids <= col.outcomes().keys() and sampled <= col.outcomes("echo-shadow").keys(),
                   120, "every prompt's outcomes", worker)
    col.halt.set()
    col.join(10)

    curated = col.get("curated")
    assert {c.objective.ref for c in curated if c.objective.name == "echo"} == {"echo@3"}
    assert {c.prompt.id for c in curated if c.objective.name == "echo-shadow"} == sampled
    assert {o.objective for o in col.outcomes().values()} == {"echo@3"}
    assert {r.objective for r in col.get("preferences")} == {"echo@3"}
    shadow_records = col.get("preferences-shadow")
    assert shadow_records and {r.objective for r in shadow_records} == {"echo-shadow@1"}
    shadow_outcomes = col.outcomes("echo-shadow")
    for pid in sampled:
        status, _ = EXPECT["B"][kind_of(pid)]
        assert shadow_outcomes[pid].status == status

    rc, out, _ = cli(capsys, "objective", "compare", "echo", "echo-shadow", "--json")
    assert rc == 0
    r = json.loads(out)
    i1 = sum(kind_of(p) == "I1" for p in sampled)
    assert (r["prompts_a"], r["prompts_b"], r["both"]) == (len(ids), len(sampled), len(sampled))
    assert (r["both_pair"], r["a_only_pair"], r["b_only_pair"]) == (i1, len(sampled) - i1, 0)
    assert r["chosen_model_agreement"] == 1.0 and r["reversed"] == 0  # `long` wins under both


def test_cli_apply_unchanged_invalid_rollback_and_a_late_reader(env, capsys, tmp_path):
    settings = env
    v1, v2 = write(tmp_path, "v1.yaml", RULES_A), write(tmp_path, "v2.yaml", RULES_B)
    bad_weights = write(tmp_path, "w.yaml", {"evaluation": {"evaluators": [{"name": "math", "weight": 0.0}]}})
    bad_name = write(tmp_path, "n.yaml", {"evaluation": {"evaluators": [{"name": "vibes"}]}})
    bad_backend = write(tmp_path, "b.yaml", {"synthesis": {"candidates": 2, "generators": [
        {"backend": "openai", "model": "remote"}]}})

    def history() -> list[dict]:
        rc, out, _ = cli(capsys, "objective", "history", "echo", "--json")
        assert rc == 0
        return json.loads(out)

    assert "published echo@1 (new objective)" in cli(capsys, "objective", "apply", v1)[1]
    rc, out, _ = cli(capsys, "objective", "apply", v1)
    assert rc == 0 and out.startswith("unchanged") and len(history()) == 1
    listed = subprocess.run([sys.executable, "-m", "streams.commands.cli", "objective", "list", "--json"], cwd=ROOT,
                            env={**settings_env(settings), "PREFSTREAM_LOG_LEVEL": "WARNING"},
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [{"name": "echo", "version": 1, "status": "active"}]

    for f, reason in [(bad_weights, "weights sum to <= 0"), (bad_name, "vibes"),
                      (bad_backend, "PREFSTREAM_OPENAI_BASE_URL")]:
        rc, out, err = cli(capsys, "objective", "apply", f)
        assert rc == 2 and reason in err and "published" not in out
    assert json.loads(cli(capsys, "objective", "list", "--json")[1])[0]["version"] == 1
    assert len(history()) == 1

    rc, out, _ = cli(capsys, "objective", "apply", v2, "--dry-run")
    assert rc == 0 and "would publish echo@2" in out and "-  min_margin: 0.2" in out and len(history()) == 1
    assert "published echo@2" in cli(capsys, "objective", "apply", v2)[1]
    assert "published echo@3 (was echo@2)" in cli(capsys, "objective", "rollback", "echo", "--to", "1")[1]
    rc, _, err = cli(capsys, "objective", "rollback", "echo", "--to", "9")
    assert rc == 2 and "no version 9" in err
    rows = history()
    assert [(h["version"], h["live"]) for h in rows] == [(1, False), (2, False), (3, True)]
    assert rows[1]["changed"] == ["evaluation.evaluators", "instantiation.min_margin"]
    shown = {v: yaml.safe_load(cli(capsys, "objective", "show", "echo", "--version", str(v))[1]) for v in (1, 3)}
    assert shown[3].pop("version") == 3 and shown[1].pop("version") == 1 and shown[1] == shown[3]
    assert yaml.safe_load(cli(capsys, "objective", "show", "echo")[1])["version"] == 3

    async def late_reader() -> ObjectiveSpec | None:
        reg = ObjectiveRegistry()
        task = asyncio.create_task(reg.follow(settings, from_settings(settings)))
        try:
            return await reg.wait_for("echo", 20)  # the first answer is already the newest
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    seen = asyncio.run(late_reader())
    assert seen is not None and seen.version == 3
    assert content(seen) == content(msgspec.structs.replace(load_objective(v1), version=3))
