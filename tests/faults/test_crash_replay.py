"""Crash and replay: nothing lost, nothing duplicated at the tap.

Two runs, each on the broker where its faults are honest (Tansu expires a crashed worker's
group membership, so kill -9 is honest on it; noida-db never does):

1. Tansu, memory storage. During 2,000 prompts produced at a steady rate, with two workers
   in one consumer group and a fast model (the echo model server, behind the ``openai``
   backend with its retries and circuit breaker), at seeded random moments: a random worker
   is killed with SIGKILL and restarted, five times (partitions move); the broker is frozen
   (SIGSTOP) for a few seconds and resumed, the same broker back (memory storage does not
   survive a restart); the model server is taken away for 60 s; the tap (``prefstream
   tap``) is killed with SIGKILL and restarted.
2. Tansu, ``s3://`` storage on a local S3 server (moto's): the broker is stopped and
   started again during 300 prompts; its topics, offsets and groups survive, the worker and
   the tap reconnect. (On S3 storage every produce, fetch and commit is an S3 request, ~7
   prompts/s here: too slow for the 2,000-prompt run.)

At the end every prompt has exactly one outcome (replays yield the same record ids), the
tap's file holds exactly one record per expected id, and the expected ids are computed
independently: every stage's ``process()`` run in-process over the same prompts.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError

from schemas import GeneratorSpec
from streams.admin import create_topics
from streams.broker import EmbeddedBroker
from streams.commands.run import publish_objective
from streams.settings import load
from streams.topics import from_settings
from tests.conftest import settings_env
from tests.faults.harness import Ledger, expected_records, math_objective, math_prompts, send_prompts
from tests.faults.services import ROOT, EchoModel, S3Server, TansuS3

pytestmark = pytest.mark.faults

SEED = 20260407
KILLS = 5
OUTAGE_S = 60.0
# the workers ride out a 60 s model outage: an attempt while the circuit is open waits
# rather than counts, and the budget is far beyond the outage
WORKER_ENV = {"PREFSTREAM_RETRIES": "30", "PREFSTREAM_BACKOFF_S": "0.5", "PREFSTREAM_BREAKER_COOLDOWN_S": "2",
              "PREFSTREAM_OUTAGE_BUDGET_S": "300", "PREFSTREAM_REQUEST_TIMEOUT_S": "10",
              "PREFSTREAM_LOG_LEVEL": "WARNING"}


def plan(rng: random.Random, window: float) -> list[tuple[float, str]]:
    """Run 1's faults, at seeded random moments within the production window."""
    kills: list[float] = []
    while len(kills) < KILLS:  # at least 6 s apart, so each kill meets a settled group
        t = rng.uniform(4, window)
        if all(abs(t - k) > 6 for k in kills):
            kills.append(t)
    events = [(t, "kill-worker") for t in kills]
    events.append((rng.uniform(4, window - 10), "pause-broker"))
    events.append((rng.uniform(4, window - OUTAGE_S / 2), "model-down"))
    events.append((rng.uniform(4, window), "kill-tap"))
    return sorted(events)


class Rig:
    """The processes of one run (workers, tap, broker, model server) and the faults done
    to them, each noted with its time."""

    def __init__(self, tmp: Path, settings, pool, n_workers: int, rng: random.Random, broker=None,
                 model: EchoModel | None = None) -> None:
        self.tmp, self.settings, self.pool, self.rng = tmp, settings, pool, rng
        self.broker, self.model = broker, model
        self.live = [self.pool.start(settings, **WORKER_ENV) for _ in range(n_workers)]
        self.tap_dir = tmp / "tap"
        self.tap = self.start_tap()
        self.log: list[str] = []
        self.restarts: list[str] = []  # processes that exited on their own, restarted
        self.killed: set[int] = set()
        self.started = time.monotonic()

    def start_tap(self) -> subprocess.Popen:
        out = (self.tmp / "tap.log").open("ab")
        return subprocess.Popen([sys.executable, "-m", "streams.commands.cli", "tap", "--out", str(self.tap_dir)], cwd=ROOT,
                                env=settings_env(self.settings), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def note(self, what: str) -> None:
        self.log.append(f"{time.monotonic() - self.started:6.1f}s {what}")

    async def kill_worker(self) -> None:
        victim = self.rng.choice(self.live)
        self.killed.add(victim.pid)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(10)
        self.note(f"kill -9 worker pid {victim.pid}")
        await asyncio.sleep(self.rng.uniform(0.5, 3.0))
        self.live[self.live.index(victim)] = self.pool.start(self.settings, **WORKER_ENV)
        self.note("worker restarted")

    async def pause_broker(self) -> None:
        self.broker.proc.send_signal(signal.SIGSTOP)
        self.note("broker frozen (SIGSTOP)")
        await asyncio.sleep(self.rng.uniform(3.0, 6.0))
        self.broker.proc.send_signal(signal.SIGCONT)
        self.note("broker resumed (SIGCONT)")

    async def restart_broker(self) -> None:
        await asyncio.to_thread(self.broker.stop)
        self.note("broker stopped")
        await asyncio.sleep(self.rng.uniform(2.0, 5.0))
        await asyncio.to_thread(self.broker.start)
        self.note("broker started (same S3 storage, same port)")

    async def model_outage(self) -> None:
        self.model.kill()
        self.note("model server killed")
        await asyncio.sleep(OUTAGE_S)
        await asyncio.to_thread(self.model.start)
        self.note("model server back")

    async def kill_tap(self) -> None:
        os.killpg(self.tap.pid, signal.SIGKILL)
        self.tap.wait(10)
        self.note("kill -9 tap")
        self.tap = self.start_tap()

    async def run(self, events: list[tuple[float, str]]) -> None:
        actions = {"kill-worker": self.kill_worker, "pause-broker": self.pause_broker,
                   "restart-broker": self.restart_broker, "model-down": self.model_outage, "kill-tap": self.kill_tap}
        tasks = []
        for at, what in events:
            await asyncio.sleep(max(0.0, self.started + at - time.monotonic()))
            tasks.append(asyncio.create_task(actions[what]()))
        await asyncio.gather(*tasks)

    async def supervise(self, stop: asyncio.Event) -> None:
        """Restart a worker or the tap that exited on its own (a worker started while the
        broker is down gives up), as a process supervisor would."""
        while not stop.is_set():
            for i, proc in enumerate(self.live):
                if proc.poll() is not None and proc.pid not in self.killed:
                    self.restarts.append(f"worker pid {proc.pid} exited with {proc.returncode}")
                    self.live[i] = self.pool.start(self.settings, **WORKER_ENV)
            if self.tap.poll() is not None and self.tap.returncode != -signal.SIGKILL:
                self.restarts.append(f"tap exited with {self.tap.returncode}")
                self.tap = self.start_tap()
            await asyncio.sleep(0.5)

    def tap_ids(self) -> list[str]:
        path = self.tap_dir / "preferences.jsonl"
        return [json.loads(line)["id"] for line in path.read_text().splitlines()] if path.exists() else []

    def stop_tap(self) -> None:
        if self.tap.poll() is None:
            self.tap.terminate()
            self.tap.wait(30)

    def worker_logs(self) -> str:
        return "".join(Path(p.log_path).read_text(errors="replace") for p in self.pool.procs)


@dataclass
class Result:
    ledger: Ledger
    finished: bool
    resent: int
    expected: dict[str, tuple[str, ...]]
    tap: Counter
    seconds: float


def drive(rig: Rig, topics, prompts, spec, events, rate: float, deadline_s: float) -> Result:
    """Produce ``prompts`` at ``rate`` while the faults happen; wait (up to ``deadline_s``)
    for an outcome per prompt and for the tap to hold every expected record."""
    ids = {p.id for p in prompts}

    async def progress(ledger: Ledger, stop: asyncio.Event) -> None:
        while not stop.is_set():  # shown when the test fails (pytest captures it otherwise)
            await asyncio.sleep(15)
            print(f"{time.monotonic() - rig.started:6.1f}s outcomes for {len(ledger.outcomes)}/{len(ids)} prompts",
                  flush=True)

    async def warm_up() -> None:
        """The first prompt alone, through every stage: the workers have joined and read
        the objective before the clock (and the faults) start."""
        await send_prompts(rig.settings, topics, prompts[:1])
        if not await Ledger(topics).follow(rig.settings, lambda lg: prompts[0].id in lg.outcomes, 180):
            raise AssertionError("the warm-up prompt got no outcome in 180 s; see the worker logs")
        rig.started = time.monotonic()

    async def scenario():
        expected = asyncio.create_task(asyncio.to_thread(asyncio.run, expected_records(prompts, spec)))
        await warm_up()
        ledger, stop = Ledger(topics), asyncio.Event()
        follow = asyncio.create_task(ledger.follow(rig.settings, lambda lg: ids <= lg.outcomes.keys(), deadline_s))
        helpers = [asyncio.create_task(rig.supervise(stop)), asyncio.create_task(progress(ledger, stop))]
        resent, _ = await asyncio.gather(send_prompts(rig.settings, topics, prompts[1:], rate=rate), rig.run(events))
        finished = await follow
        stop.set()
        await asyncio.gather(*helpers)
        return ledger, finished, resent, await expected

    ledger, finished, resent, expected = asyncio.run(scenario())
    want = {r for rids in expected.values() for r in rids}
    deadline = time.monotonic() + (30 if finished else 0)
    while not want <= set(rig.tap_ids()) and time.monotonic() < deadline:
        time.sleep(0.5)
    rig.stop_tap()
    return Result(ledger, finished, resent, expected, Counter(rig.tap_ids()), time.monotonic() - rig.started)


def report_and_check(title: str, rig: Rig, r: Result, prompts, seed: int) -> None:
    """Print the figures, then assert: one outcome per prompt, the same record ids as a
    clean run, and the tap holding each expected record exactly once."""
    want = Counter(rid for rids in r.expected.values() for rid in rids)
    outcome_ids = {pid: {tuple(o.record_ids) for o in outs} for pid, outs in r.ledger.outcomes.items()}
    lost = sorted(set(want) - set(r.tap))
    duplicated = sorted(rid for rid, n in r.tap.items() if n > 1)
    unexpected = sorted(set(r.tap) - set(want))
    replays = r.ledger.counts["outcomes"] - len(r.ledger.outcomes)
    print(f"\n{title}, seed {seed}:")
    print("\n".join("  " + line for line in rig.log))
    print(f"  exited on their own and restarted by the supervisor: {rig.restarts or 'none'}")
    print(f"  prompts={len(prompts)} (re-sent by the producer: {r.resent}) prompts_with_outcome={len(r.ledger.outcomes)} "
          f"outcome_messages={r.ledger.counts['outcomes']} (replayed work: {replays})")
    print(f"  expected_records={len(want)} tap_records={sum(r.tap.values())} lost={len(lost)} "
          f"duplicated={len(duplicated)} unexpected={len(unexpected)} dead_letters={len(r.ledger.letters)} "
          f"seconds={r.seconds:.0f}")
    missing = {p.id for p in prompts} - r.ledger.outcomes.keys()
    assert r.finished, f"{len(missing)} prompts without an outcome by the deadline, e.g. {sorted(missing)[:3]}"
    assert not r.ledger.letters, [(d.stage, d.error) for d in r.ledger.letters[:5]]
    assert all(len(v) == 1 for v in outcome_ids.values()), "a replay produced different record ids"
    assert {pid: next(iter(v)) for pid, v in outcome_ids.items()} == r.expected
    assert (lost, duplicated, unexpected) == ([], [], [])


def _rig(stack: ExitStack, tmp_path, workers, namespace, broker, model, name: str, n: int, n_workers: int, rng):
    """Topics on ``broker``, an objective generating through ``model``, ``n`` math prompts and a
    rig of ``n_workers`` workers; workers and tap are stopped before the broker goes (a worker
    stops fast while the broker is there)."""
    settings = load({}, broker=broker.address, namespace=namespace, partitions=2,
                    data_dir=str(tmp_path / "data"), metrics_port=0, allowed_endpoints=model.base_url)
    topics = from_settings(settings)
    spec = math_objective(name, GeneratorSpec(backend="openai", model="echo", base_url=model.base_url))
    prompts = math_prompts(n, spec.name)
    asyncio.run(create_topics(settings, topics))
    asyncio.run(publish_objective(settings, topics, spec))
    rig = Rig(tmp_path, settings, workers, n_workers, rng, broker=broker, model=model)
    stack.callback(workers.stop_all)
    stack.callback(rig.stop_tap)
    return rig, topics, spec, prompts


def test_kills_broker_freeze_and_model_outage_lose_and_duplicate_nothing(tmp_path, workers, namespace):
    n, rate, rng = 2000, 25.0, random.Random(SEED)
    with ExitStack() as stack:
        broker = stack.enter_context(EmbeddedBroker(log_path=tmp_path / "tansu.log"))
        model = stack.enter_context(EchoModel(tmp_path))
        rig, topics, spec, prompts = _rig(stack, tmp_path, workers, namespace, broker, model, "crash", n, 2, rng)
        result = drive(rig, topics, prompts, spec, plan(rng, n / rate), rate, deadline_s=360)
    report_and_check("kill -9 x5, broker frozen, model gone 60 s, tap kill -9 (Tansu, memory storage, 2 workers)",
                     rig, result, prompts, SEED)
    assert len(rig.log) == 2 * KILLS + 2 + 2 + 1, rig.log  # every fault happened
    assert "circuit open" in rig.worker_logs(), "the model outage never reached a worker"


def test_broker_restart_on_s3_storage_loses_and_duplicates_nothing(tmp_path, workers, namespace):
    n, rate, rng = 300, 30.0, random.Random(SEED + 1)
    with ExitStack() as stack:
        s3 = stack.enter_context(S3Server(tmp_path))
        broker = stack.enter_context(TansuS3(tmp_path, s3))
        model = stack.enter_context(EchoModel(tmp_path))
        rig, topics, spec, prompts = _rig(stack, tmp_path, workers, namespace, broker, model, "restart", n, 1, rng)
        events = [(rng.uniform(3, n / rate), "restart-broker")]
        result = drive(rig, topics, prompts, spec, events, rate, deadline_s=240)
    report_and_check("broker stopped and started (Tansu, s3:// storage on a local S3 server, 1 worker)",
                     rig, result, prompts, SEED + 1)
    assert len(rig.log) == 2, rig.log


class _Channel:
    """A faust topic's ``send`` as the worker sees it: enqueues, returns the delivery future."""

    def __init__(self, outcomes: list) -> None:
        self.outcomes, self.calls = outcomes, 0

    def get_topic_name(self) -> str:
        return "ns.curated"

    async def send(self, key, value):
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception) and not isinstance(outcome, KafkaTimeoutError):
            raise outcome  # refused before it was queued
        fut = asyncio.get_running_loop().create_future()
        fut.set_exception(outcome) if isinstance(outcome, Exception) else fut.set_result(outcome)
        return fut


def test_deliver_returns_only_once_the_broker_acknowledged_and_retries_transient_failures():
    from faust.exceptions import ProducerSendError

    from streams.app import deliver

    down = ProducerSendError("Error while sending")
    down.__cause__ = KafkaConnectionError("broker down")
    channel = _Channel([down, KafkaTimeoutError("batch expired"), "ack"])
    asyncio.run(deliver(channel, b"k", b"v"))
    assert channel.calls == 3 and channel.outcomes == []


def test_deliver_raises_undeliverable_for_a_message_over_the_size_limit():
    from streams.app import deliver
    from streams.runtime import Undeliverable

    channel = _Channel([MessageSizeTooLargeError("too big")])
    with pytest.raises(Undeliverable, match="size limit"):
        asyncio.run(deliver(channel, b"k", b"v" * 10))
