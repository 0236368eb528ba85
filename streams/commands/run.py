"""``prefstream run``: the one-shot main job.

Starts the embedded broker (unless one is configured), creates the topics, publishes the
objective, starts the worker processes (``--workers``, each with every agent), submits the prompts, and waits until
every prompt has ended — as preference records, a no-pair outcome or a dead letter —
counting outcomes per prompt id (never lag: Tansu's end offsets are wrong), or until a stage
has been blocked by its environment for ``block_fail_s`` (then it stops with the cause and
the fix, and writes no summary: nothing was dead-lettered for it). Then it
writes ``preferences.jsonl`` and ``summary.json``, and for ``prefstream report`` the judged
sets, records, outcomes and dead letters (``streams.commands.reports.summary.save_run``).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from tqdm import tqdm

from agents.evaluators.bias import BiasTracker
from schemas import (RECORD_TYPES, Withdrawn, DeadLetter, JudgedSet, ObjectiveSpec, Outcome, PreferenceRecord, Prompt,
                     StageHealth)
from streams.admin import create_topics, producer, reader
from streams.broker import EmbeddedBroker
from agents.objectives import publish, validate
from streams.commands.reports.summary import save_run
from streams.runtime import Blocked
from streams.settings import Settings, dumps
from streams.commands.tap.follow import JsonlSink, open_sinks
from streams.topics import MALFORMED, Topics, from_settings

logger = logging.getLogger(__name__)


class RunError(RuntimeError):
    pass


@dataclass
class Ledger:
    """Per prompt id: how it ended under the objective it named. Balanced when every
    submitted id has ended. Outcomes under other objectives the prompt was also routed to
    (shadows) are kept per (prompt id, objective name) and never decide it."""

    expected: set[str]
    named: dict[str, str | None] = field(default_factory=dict)  # prompt id → objective name (None: any)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    other_outcomes: dict[tuple[str, str], Outcome] = field(default_factory=dict)
    dead: dict[str, DeadLetter] = field(default_factory=dict)
    records: dict[str, PreferenceRecord] = field(default_factory=dict)
    other_dead: int = 0
    bias: BiasTracker = field(default_factory=BiasTracker)  # the judged sets of expected prompts
    judged: dict[str, JudgedSet] = field(default_factory=dict)  # every one, any objective (for the report)
    letters: list[DeadLetter] = field(default_factory=list)  # every dead letter of an expected prompt

    def add_outcome(self, o: Outcome) -> None:
        if o.prompt_id not in self.expected:
            return
        name, want = o.objective.rsplit("@", 1)[0], self.named.get(o.prompt_id)
        if want is None or want == name:
            self.outcomes[o.prompt_id] = o
        else:
            self.other_outcomes[(o.prompt_id, name)] = o

    def add_dead(self, d: DeadLetter) -> None:
        if d.prompt_id in self.expected:
            self.dead.setdefault(d.prompt_id, d)
            self.letters.append(d)
        else:
            self.other_dead += 1

    def ended(self, pid: str) -> bool:
        if pid in self.dead:
            return True
        o = self.outcomes.get(pid)
        return o is not None and all(r in self.records for r in o.record_ids)

    def done(self) -> int:
        return sum(1 for pid in self.expected if self.ended(pid))


def start_worker(settings: Settings, log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """One ``prefstream worker`` with every agent, handed ``settings`` whole over a pipe (a
    value set in code reaches it; secrets never touch a file or the environment). ``env`` is
    the process environment (HOME, caches); PREFSTREAM_* variables there are not read."""
    settings = settings.replace(data_dir=str(log_path.parent / f"{log_path.stem}-data"))
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "streams.commands.cli", "worker", "--settings-stdin"]
    log = log_path.open("ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.PIPE, env=env,
                            start_new_session=True)
    try:
        proc.stdin.write(dumps(settings))
        proc.stdin.close()
    except BrokenPipeError:  # it exited at once; its log says why, and drive() reports the exit
        pass
    proc.log_path = log_path
    return proc


def start_workers(settings: Settings, log_dir: Path, env: dict[str, str] | None = None) -> list[subprocess.Popen]:
    """``settings.workers`` worker processes in one consumer group, each running every agent
    (the partitions are shared out among them). The first logs to ``worker.log`` and serves
    /metrics on ``metrics_port``; worker ``i`` logs to ``worker-i.log`` on ``metrics_port + i``."""
    if settings.workers < 1:
        raise RunError(f"PREFSTREAM_WORKERS={settings.workers}: run at least 1 worker")
    if settings.workers > settings.partitions:
        raise RunError(f"PREFSTREAM_WORKERS={settings.workers} is more than PREFSTREAM_PARTITIONS="
                       f"{settings.partitions}: a worker beyond the partitions would idle; raise the "
                       f"partitions or lower --workers")
    procs = []
    try:
        for i in range(settings.workers):
            port = settings.metrics_port + i if settings.metrics_port else 0
            name = "worker" if i == 0 else f"worker-{i}"
            procs.append(start_worker(settings.replace(metrics_port=port), log_dir / f"{name}.log", env))
    except BaseException:
        stop_processes(procs)
        raise
    return procs


def stop_process(proc: subprocess.Popen | None, grace: float = 15.0) -> None:
    stop_processes([proc] if proc is not None else [], grace)


def stop_processes(procs: list[subprocess.Popen], grace: float = 15.0) -> None:
    """SIGTERM to all at once, then each gets ``grace`` seconds before it is killed."""
    live = [p for p in procs if p.poll() is None]
    for proc in live:
        proc.send_signal(signal.SIGTERM)
    for proc in live:
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def publish_objective(settings: Settings, topics: Topics, spec: ObjectiveSpec) -> None:
    await publish(settings, topics, spec)  # the live version and its history entry


async def drive(settings: Settings, topics: Topics, prompts: list[Prompt], sink: JsonlSink,
                workers: list[subprocess.Popen], progress: bool = True, embedded: bool = False) -> Ledger:
    """Submit ``prompts`` and read until each has ended; a worker that exits meanwhile fails the run."""
    ledger = Ledger({p.id for p in prompts}, {p.id: p.objective for p in prompts})
    names = [topics.preferences.name, topics.outcomes.name, topics.deadletters.name, topics.judgments.name,
             topics.health.name]
    watch = BlockWatch(settings, topics, workers, embedded)
    consumer = await reader(settings, names)
    prod = producer(settings)
    await prod.start()
    bar = tqdm(total=len(ledger.expected), desc="prompts", unit="prompt", disable=not progress, file=sys.stderr)
    try:
        codec = topics.prompts.codec
        for p in prompts:
            await prod.send(topics.prompts.name, codec.encode(p), key=p.id.encode())
        await prod.flush()
        while (n := ledger.done()) < len(ledger.expected):
            for w in workers:
                if w.poll() is not None:
                    raise RunError(f"a worker exited with code {w.returncode}; see {getattr(w, 'log_path', 'its log')}")
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                for msg in msgs:
                    _consume(topics, msg, ledger, sink, watch)
            sink.flush()
            watch.check()
            bar.update(ledger.done() - n)
        await _drain_judged(topics, consumer, ledger, sink)
    finally:
        bar.close()
        await prod.stop()
        await consumer.stop()
    return ledger


def prepare_models(settings: Settings, spec: ObjectiveSpec) -> None:
    """Assemble the bundled model once, here, before the workers start (they would otherwise
    race for the cache); a failure stops the run with its fix."""
    from agents.backends.llamacpp import bundled_model_path

    judged = any(e.name in ("judge", "pairwise") for e in spec.evaluation.evaluators)
    specs = [*spec.synthesis.generators, *([spec.evaluation.judge] if judged else [])]
    if settings.model_path or not any(g.backend == "llamacpp" and not g.model.endswith(".gguf") for g in specs):
        return
    try:
        bundled_model_path()
    except Blocked as b:
        raise RunError(f"the bundled model is not usable: {b.detail}. Fix: {b.fix}") from None
    except OSError as e:
        raise RunError(f"cannot assemble the bundled model into the cache ({e}); free disk space or set HOME "
                       "to a writable directory, or set PREFSTREAM_MODEL_PATH to a GGUF file") from None


class BlockWatch:
    """The newest health of each of this run's workers' stages (``health`` topic); raises
    ``RunError`` once a stage has been blocked for ``settings.block_fail_s``."""

    def __init__(self, settings: Settings, topics: Topics, workers: list[subprocess.Popen],
                 embedded: bool = False) -> None:
        self.settings, self.topics, self.embedded = settings, topics, embedded
        host = socket.gethostname()
        self.workers = {f"{host}:{w.pid}" for w in workers}
        self.states: dict[str, StageHealth] = {}

    def add(self, h: StageHealth) -> None:
        if h.worker in self.workers:
            self.states[h.key] = h

    def check(self) -> None:
        now = time.time()
        for h in self.states.values():
            if h.blocked and h.since is not None and now - h.since >= self.settings.block_fail_s:
                kept = ("the embedded broker keeps them only while it runs: run again after the fix" if self.embedded
                        else f"they wait in {self.topics.prompts.name} on {self.settings.broker}")
                raise RunError(f"stage {h.stage} has been blocked for {now - h.since:.0f}s ({h.reason}): "
                               f"{h.detail}. Fix: {h.fix}. Prompts not yet processed were not dead-lettered; "
                               f"{kept}")


def _consume(topics: Topics, msg, ledger: Ledger, sink: JsonlSink, watch: BlockWatch | None = None) -> None:
    topic = topics.by_name(msg.topic)
    try:
        value = topic.codec.decode(msg.value)
    except MALFORMED as e:
        logger.error("undecodable record at %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, e)
        return
    if isinstance(value, RECORD_TYPES):  # pair, unpaired, ranking, reward
        if value.prompt_id in ledger.expected:
            ledger.records[value.id] = value
            sink.write(value)
    elif isinstance(value, Withdrawn):  # a late label took a record back: the sinks drop it
        sink.write(value)
    elif isinstance(value, Outcome):
        ledger.add_outcome(value)
    elif isinstance(value, DeadLetter):
        ledger.add_dead(value)
    elif isinstance(value, StageHealth):
        if watch is not None:
            watch.add(value)
    elif isinstance(value, JudgedSet) and value.prompt.id in ledger.expected:
        ledger.judged.setdefault(value.id, value)
        if ledger.named.get(value.prompt.id) in (None, value.objective.name):
            ledger.bias.add(value)


async def _drain_judged(topics: Topics, consumer, ledger: Ledger, sink: JsonlSink, idle_polls: int = 4) -> None:
    """Read on until every prompt that reached instantiation has its judged set counted (the
    judgments topic is read alongside the outcomes, not in step with them), or the topics
    stay idle for ``idle_polls`` half-second polls."""
    idle = 0
    while idle < idle_polls and any(o.status != "dropped" and pid not in ledger.bias.prompt_ids
                                    for pid, o in ledger.outcomes.items() if pid not in ledger.dead):
        batch = await consumer.getmany(timeout_ms=500)
        idle = 0 if batch else idle + 1
        for msgs in batch.values():
            for msg in msgs:
                _consume(topics, msg, ledger, sink)


def summary(ledger: Ledger, prompts: list[Prompt], spec: ObjectiveSpec, seconds: float) -> dict:
    outcomes = ledger.outcomes.values()
    return {
        "prompts": len(ledger.expected),
        "candidates": sum(o.candidates for o in outcomes),
        "pairs": sum(1 for r in ledger.records.values() if r.kind == "pair"),
        "records": _count([r.kind] for r in ledger.records.values()),
        "kto": _count(["desirable" if r.label else "undesirable"]
                      for r in ledger.records.values() if r.kind == "unpaired"),
        "no_pair": sum(1 for pid, o in ledger.outcomes.items() if o.status == "no_pair" and pid not in ledger.dead),
        "dropped": sum(1 for pid, o in ledger.outcomes.items() if o.status == "dropped" and pid not in ledger.dead),
        "dead_letters": len(ledger.dead),
        "seconds": round(seconds, 3),
        "prompts_per_s": round(len(ledger.expected) / seconds, 4) if seconds > 0 else None,
        "objective": spec.ref,
        "no_pair_reasons": _count(o.reason.split(" ")[0:3] for o in outcomes if o.status == "no_pair"),
        "dead_letter_reasons": _count([d.stage, d.error_type] for d in ledger.dead.values()),
        "bias": ledger.bias.figures(ledger.records.values()),
    }


def _count(keys) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in keys:
        k = " ".join(k)
        out[k] = out.get(k, 0) + 1
    return out


def run(settings: Settings, prompts: list[Prompt], spec: ObjectiveSpec, out_dir: Path,
        env: dict[str, str] | None = None, progress: bool = True, formats: list[str] | None = None,
        style: str = "conversational") -> dict:
    """Run the whole pipeline once over ``prompts``; returns the summary (also written).
    Pairs go to ``out_dir/preferences.jsonl``; each of ``formats`` to ``out_dir/<format>/``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if not prompts:
        raise RunError("no prompts to run; check --input and --limit")
    validate(spec, settings)
    prompts = [msgspec.structs.replace(p, objective=p.objective or spec.name) for p in prompts]
    prompts = list({p.id: p for p in prompts}.values())  # the same prompt twice is one prompt
    started = time.monotonic()
    broker = None
    workers: list[subprocess.Popen] = []
    sink = open_sinks(out_dir, formats or [], style)
    try:
        if not settings.broker:
            broker = EmbeddedBroker(log_path=out_dir / "broker.log").start()
            settings = settings.replace(broker=broker.address)
        topics = from_settings(settings)
        asyncio.run(create_topics(settings, topics))
        asyncio.run(publish_objective(settings, topics, spec))
        prepare_models(settings, spec)
        workers = start_workers(settings, out_dir, env)
        ledger = asyncio.run(drive(settings, topics, prompts, sink, workers, progress, embedded=broker is not None))
    finally:
        sink.close()
        stop_processes(workers)
        if broker:
            broker.stop()
    result = summary(ledger, prompts, spec, time.monotonic() - started)
    (out_dir / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    save_run(out_dir, ledger.judged.values(), ledger.records.values(),  # what `prefstream report DIR` reads
             [*ledger.outcomes.values(), *ledger.other_outcomes.values()], ledger.letters)
    return result
