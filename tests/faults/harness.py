"""What the fault tests share besides the services (``services.py``): math prompts and
their objective, the records a clean run would produce (computed in-process, without the
bus), a producer that makes sure every prompt is stored, a ledger that follows outcomes and
dead letters, and a worker's resident memory."""
from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from pathlib import Path

import msgspec

from agents import curate, evaluate, instantiate, synthesize
from agents.backends.base import GenRequest, Generation
from agents.evaluators import build_evaluators
from schemas import (EvaluationSpec, EvaluatorSpec, GeneratorSpec, Message, ObjectiveSpec, Prompt, SynthesisSpec,
                     Verification)
from streams.admin import producer, reader
from streams.settings import Settings
from streams.topics import Topics
from tests.faults.echo_server import answer

def math_objective(name: str, generator: GeneratorSpec, candidates: int = 2) -> ObjectiveSpec:
    return ObjectiveSpec(
        name=name, version=1,
        synthesis=SynthesisSpec(candidates=candidates, generators=[generator]),
        evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="math")]),
    )


def math_prompts(n: int, objective: str, prefix: str = "p", pad: int = 0) -> list[Prompt]:
    """``n`` prompts "What is A + B?" with the reference answer; ``pad`` adds that many
    characters of context (for memory tests)."""
    out = []
    for i in range(n):
        a, b = 3 * i + 1, 7 * i + 2
        text = ("Context: " + "x" * pad + "\n" if pad else "") + f"What is {a} + {b}?"
        out.append(Prompt(id=f"{prefix}-{i:05d}", messages=[Message(role="user", content=text)],
                          objective=objective, source="faults", verification=Verification(kind="math", answer=str(a + b))))
    return out


class _LocalEcho:
    """The echo model server's answers, in-process."""

    async def generate(self, req: GenRequest) -> list[Generation]:
        text = req.prompt if req.prompt is not None else next(
            (m.content or "" for m in reversed(req.messages) if m.role == "user"), "")
        return [Generation(text=answer(text, None if req.seed is None else req.seed + j), finish_reason="stop",
                           seed=None if req.seed is None else req.seed + j) for j in range(req.n)]


class _LocalBackends:
    def get(self, spec) -> _LocalEcho:
        return _LocalEcho()


async def expected_records(prompts: list[Prompt], spec: ObjectiveSpec) -> dict[str, tuple[str, ...]]:
    """prompt id → the record ids a clean, fault-free run yields: every stage's pure
    ``process()`` run in-process, with the echo server's answers and no broker."""
    backends = _LocalBackends()
    evaluators = build_evaluators(backends)
    out = {}
    for p in prompts:
        [cur] = curate.process(p, {spec.name: spec}, spec.name)
        [cands] = await synthesize.process(cur.value, backends)
        [judged] = await evaluate.process(cands.value, evaluators)
        emits = instantiate.process(judged.value)
        out[p.id] = tuple(e.value.id for e in emits if e.topic.short == "preferences")
    return out


async def send_prompts(settings: Settings, topics: Topics, prompts: list, rate: float | None = None,
                       timeout: float = 300.0, acked: list | None = None) -> int:
    """Produce ``prompts`` (keyed by id) at ``rate`` per second (None: as fast as possible)
    and wait until the broker has acknowledged every one; a send that fails (the broker was
    down) is sent again. ``acked`` gets each id as the broker acknowledges it. Returns how
    many sends were repeated."""
    from aiokafka.errors import KafkaError

    prod = producer(settings)
    await prod.start()
    deadline, started, resent = time.monotonic() + timeout, time.monotonic(), 0
    futures: dict[str, asyncio.Future] = {}

    async def send(p) -> None:
        while True:
            try:
                fut = futures[p.id] = await prod.send(topics.prompts.name, topics.prompts.codec.encode(p),
                                                      key=p.id.encode())
                if acked is not None:
                    fut.add_done_callback(lambda f, pid=p.id: f.exception() is None and acked.append(pid))
                return
            except KafkaError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    try:
        for i, p in enumerate(prompts):
            if rate:
                await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
            await send(p)
        while True:
            await asyncio.wait(list(futures.values()))
            failed = [p for p in prompts if futures[p.id].exception() is not None]
            if not failed:
                return resent
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(failed)} prompts were never acknowledged: {futures[failed[0].id].exception()}")
            resent += len(failed)
            for p in failed:
                await send(p)
    finally:
        await prod.stop()


class Ledger:
    """Follows outcomes and dead letters (and any other topics named) from the start."""

    def __init__(self, topics: Topics, extra: tuple[str, ...] = ()) -> None:
        self.topics = topics
        self.names = ("outcomes", "deadletters") + extra
        self.outcomes: dict[str, list] = defaultdict(list)
        self.letters: list = []
        self.seen: dict[str, list] = defaultdict(list)  # the extra topics' messages
        self.counts: Counter = Counter()
        self.undecodable = 0

    def add(self, short: str, value) -> None:
        self.counts[short] += 1
        if short == "outcomes":
            self.outcomes[value.prompt_id].append(value)
        elif short == "deadletters":
            self.letters.append(value)
        else:
            self.seen[short].append(value)

    async def follow(self, settings: Settings, done, timeout: float, stop: asyncio.Event | None = None,
                     committed_only: bool = False) -> bool:
        """Read until ``done(self)`` holds (True) or ``timeout`` passes / ``stop`` is set
        (False). ``committed_only``: only messages of committed transactions."""
        names = [getattr(self.topics, n).name for n in self.names]
        consumer = await (committed_reader(settings, names) if committed_only else reader(settings, names))
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and not (stop and stop.is_set()):
                for msgs in (await consumer.getmany(timeout_ms=300, max_records=5000)).values():
                    for m in msgs:
                        t = self.topics.by_name(m.topic)
                        try:
                            self.add(t.spec.short, t.codec.decode(m.value))
                        except msgspec.DecodeError:
                            self.undecodable += 1
                if done(self):
                    return True
            return False
        finally:
            await consumer.stop()


async def committed_reader(settings: Settings, names: list[str]):
    """Like ``streams.admin.reader`` (every partition, from the start, no group) but with
    ``read_committed`` isolation: aborted transactions' messages are never seen."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.brokers, enable_auto_commit=False, group_id=None,
                                auto_offset_reset="earliest", isolation_level="read_committed")
    await consumer.start()
    tps = []
    for name in names:
        for _ in range(50):
            if consumer.partitions_for_topic(name):
                break
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
        tps += [TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name) or ())]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return consumer


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` (VmRSS in /proc/PID/status), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
