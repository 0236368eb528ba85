"""Does one prompt keep a model server busy? Per-prompt wall time of the model-bound paths
against a server with a fixed latency and spare capacity (the `echo-slow-S` generator: every
call takes S seconds, calls overlap freely, as on a GPU server with room in its batch):

- synthesize, an agent trajectory branched at every step (`synthesis.branch: all`, the first
  example trajectory, N = 4 per step): the steps are asked side by side, so ~S, not steps × S;
- evaluate, a set of N = 4 scored by a pointwise judge and a pairwise judge (no retries): the
  two judges score side by side, so ~S, not 2 × S.

    python benchmarks/overlap.py [--latency S] [--repeat R]

Last line: {"bench": "overlap", "latency_s", "branched_s", "steps", "branched_serial_s",
"judges_s", "judges_serial_s"} (the *_serial_s figures: what one call after another takes).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents import evaluate, synthesize  # noqa: E402
from agents.backends.registry import Backends  # noqa: E402
from agents.evaluators import build_evaluators  # noqa: E402
from agents.synthesis.trajectory import branch_steps  # noqa: E402
from schemas import (Curated, EvaluationSpec, EvaluatorSpec, GeneratorSpec, JudgeSpec, ObjectiveSpec,  # noqa: E402
                     Prompt, SynthesisSpec)
from streams.commands.serving.inputs import read_prompts  # noqa: E402
from streams.settings import load  # noqa: E402


def best_of(repeat: int, run) -> float:
    """The fastest of ``repeat`` timed runs of the coroutine factory ``run`` (after one warm-up)."""
    asyncio.run(run())
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        asyncio.run(run())
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.2, help="seconds per model call (default 0.2)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    model = f"echo-slow-{args.latency:g}"
    backends = Backends(load({}))  # echo generators only: no model is loaded
    trajectory = next(iter(read_prompts(ROOT / "examples/agent/trajectories.jsonl")))
    branched = ObjectiveSpec(name="agent", synthesis=SynthesisSpec(
        branch="all", candidates=4, prompting="chat", generators=[GeneratorSpec(backend="echo", model=model)]))
    curated = Curated(prompt=trajectory, objective=branched)
    steps = len(branch_steps(trajectory.messages, "all"))
    branched_s = best_of(args.repeat, lambda: synthesize.process(curated, backends))

    judged = ObjectiveSpec(name="judges", synthesis=SynthesisSpec(
        candidates=4, generators=[GeneratorSpec(backend="echo", model="echo")]),
        evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="judge"), EvaluatorSpec(name="pairwise")],
                                  judge=JudgeSpec(backend="echo", model=model, retries=0)))
    prompt = Prompt(id="overlap", messages=trajectory.messages[:2])
    [cset] = asyncio.run(synthesize.process(Curated(prompt=prompt, objective=judged), backends))
    evaluators = build_evaluators(backends)
    judges_s = best_of(args.repeat, lambda: evaluate.process(cset.value, evaluators))

    result = {"latency_s": args.latency, "branched_s": round(branched_s, 3), "steps": steps,
              "branched_serial_s": round(steps * args.latency, 3), "judges_s": round(judges_s, 3),
              "judges_serial_s": round(2 * args.latency, 3)}
    print(f"{'path':<44}{'s per prompt':>14}{'one after another':>20}")
    print(f"{f'synthesize, branch=all ({steps} steps × 4)':<44}{branched_s:>14.3f}{steps * args.latency:>20.3f}")
    print(f"{'evaluate, judge + pairwise (4 candidates)':<44}{judges_s:>14.3f}{2 * args.latency:>20.3f}")
    print(json.dumps({"bench": "overlap", **result}))


if __name__ == "__main__":
    main()
