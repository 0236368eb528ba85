"""Shared pieces of the benchmarks: CPU time of processes, percentiles, a fast objective."""
from __future__ import annotations

import os
from pathlib import Path

from schemas import EvaluationSpec, EvaluatorSpec, GeneratorSpec, InstantiationSpec, ObjectiveSpec, SynthesisSpec

ROOT = Path(__file__).resolve().parents[1]
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


def echo_objective(name: str = "bench", candidates: int = 4) -> ObjectiveSpec:
    """The zero-cost pipeline: the echo generator and the heuristic length evaluator."""
    return ObjectiveSpec(
        name=name,
        synthesis=SynthesisSpec(candidates=candidates, generators=[GeneratorSpec(backend="echo", model="echo",
                                                                                 max_tokens=64)]),
        evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="length", weight=1.0)],
                                  aggregation="weighted_mean"),
        instantiation=InstantiationSpec(min_margin=0.0),
    )
