"""Shared pieces of the benchmarks: CPU time of processes, percentiles, a fast objective and
the echo pipeline's workers."""
from __future__ import annotations

import asyncio
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from schemas import EvaluationSpec, EvaluatorSpec, GeneratorSpec, InstantiationSpec, ObjectiveSpec, SynthesisSpec

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 4
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (and its waited-for children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


SHORT_TOKENS = 8  # the second echo generator's length: every set has a longer and a shorter pair


def echo_objective(name: str = "bench", candidates: int = 4) -> ObjectiveSpec:
    """The zero-cost pipeline: two echo generators (64 and ``SHORT_TOKENS`` words), so every
    candidate set has a best and a worst and every prompt ends in a pair record; one heuristic
    evaluator, ``length``, and no other features or guards (the issue's "a heuristic evaluator",
    and the same scoring as the distilabel pipeline)."""
    return ObjectiveSpec(
        name=name,
        synthesis=SynthesisSpec(candidates=candidates, generators=[
            GeneratorSpec(backend="echo", model="echo", max_tokens=64),
            GeneratorSpec(backend="echo", model="echo", max_tokens=SHORT_TOKENS)]),
        evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="length", weight=1.0)],
                                  aggregation="weighted_mean", features=[], guards=[]),
        instantiation=InstantiationSpec(min_margin=0.0),
    )


def echo_settings(broker: str, namespace: str, **overrides):
    """Settings of the echo benchmarks: ``PARTITIONS`` partitions, 64 model calls in flight."""
    from streams.settings import load

    return load({}, broker=broker, namespace=namespace, partitions=PARTITIONS, metrics_port=0, max_inflight=64,
                **overrides)


@contextmanager
def echo_workers(settings, log_dir: Path, objective: ObjectiveSpec, n: int = 1) -> Iterator[list]:
    """The namespace's topics created, ``objective`` published and ``n`` worker processes
    started (INFO logs, no /metrics); they are stopped on leaving."""
    from streams.admin import create_topics
    from streams.commands.run import publish_objective, start_worker, stop_process
    from streams.topics import from_settings

    topics = from_settings(settings)
    asyncio.run(create_topics(settings, topics))
    asyncio.run(publish_objective(settings, topics, objective))
    worker = settings.replace(partitions=PARTITIONS, metrics_port=0, log_level="INFO")
    procs = [start_worker(worker, log_dir / f"worker{i}.log") for i in range(n)]
    try:
        yield procs
    finally:
        for proc in procs:
            stop_process(proc)
