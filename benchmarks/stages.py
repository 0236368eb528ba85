"""The four stages' own cost, without Kafka: every prompt through each stage's ``outputs()``
(decode → process → encode, with the worker's metrics) in one process, stage after stage,
with the bench objective of `bus.py` (echo generators, the length evaluator).

    python benchmarks/stages.py [--quick] [--default-features] [--data gsm8k|ifeval] [--metrics-compare]

What `bus.py`'s worker CPU per prompt costs beyond this figure is the runtime and the
transport (fetch, batching, acknowledgements, commits). ``--default-features`` scores the
objective's default features and guard too (repetition, refusal, injection). ``--data`` runs
the real prompts of ``../shared/data`` (GSM8K's 1,000 or IFEval's 541, each once) instead of
the bus benchmark's synthetic ones. ``--metrics-compare`` times the stages with the worker's
series as ``streams.series`` keeps them (plain numbers) and as prometheus-client's own classes,
passes taken in turn in one process.
Last line: {"bench": "stages", "us_per_prompt", "per_stage_us": {...}, ...}
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import faust
import msgspec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bus import make_prompts  # noqa: E402
from benchmarks.common import echo_objective, echo_settings  # noqa: E402
from schemas import EvaluationSpec, Prompt  # noqa: E402
from agents.pipeline import PIPELINE  # noqa: E402
from streams.app import Context  # noqa: E402
from streams.commands.serving.inputs import read_prompts  # noqa: E402
import streams.metrics  # noqa: E402
from streams.metrics import Metrics  # noqa: E402
from streams.runtime import Raw, Stage  # noqa: E402
from streams.topics import from_settings  # noqa: E402

FORWARD = ("curated", "candidates", "judgments")  # what the next stage consumes
MAIN_LINE = ("curate", "synthesize", "evaluate", "instantiate")  # the stages a prompt goes through
DATA = {"gsm8k": ROOT.parent / "shared" / "data" / "gsm8k" / "train_first1000.jsonl",
        "ifeval": ROOT.parent / "shared" / "data" / "ifeval" / "input_data.jsonl"}


def data_prompts(name: str) -> list[Prompt]:
    """Every prompt of a shared data set, once (curate drops repeats), bound to the bench objective."""
    return [msgspec.structs.replace(p, objective="bench") for p in read_prompts(DATA[name])]


class _Stages(Context):
    """A worker's context whose bindings hand over their stage instead of running it."""

    def agent(self, app, name, source, handler, concurrency: int = 1, outputs=None) -> None:
        self.stages[name] = Stage(name, source, self.topics, self.metrics,
                                  self.metrics.instrument(handler), outputs=outputs)


def build(settings) -> _Stages:
    ctx = _Stages(settings, from_settings(settings), Metrics())
    ctx.stages = {}
    app = faust.App("bench-stages", broker=settings.faust_broker, web_enabled=False)
    PIPELINE.setup(app, ctx, PIPELINE.workers)
    for decl in PIPELINE.stages:
        ctx.bind(app, decl)
    return ctx


async def through(ctx: _Stages, raws: list[Raw]) -> tuple[dict[str, float], dict[str, int]]:
    """CPU seconds per stage for ``raws`` and the outputs counted per topic."""
    seconds, counts = {}, {}
    for name in MAIN_LINE:
        stage, forward = ctx.stages[name], []
        started = time.process_time()
        for raw in raws:
            for out in await stage.outputs(raw):
                short = out.topic.spec.short
                counts[short] = counts.get(short, 0) + 1
                if short in FORWARD:
                    forward.append(Raw(out.topic.name, 0, len(forward), out.key, out.value))
        seconds[name] = time.process_time() - started
        raws = forward
    return seconds, counts


async def run(n: int, default_features: bool, data: str | None = None) -> dict:
    settings = echo_settings("127.0.0.1:9", "benchstages")  # never connected
    ctx = build(settings)
    objective = echo_objective()
    if default_features:
        defaults = EvaluationSpec()
        objective = msgspec.structs.replace(objective, evaluation=msgspec.structs.replace(
            objective.evaluation, features=defaults.features, guards=defaults.guards))
    await ctx.objectives.update(objective)
    ctx.objectives.ready.set()
    codec = ctx.topics.prompts.codec

    def raws(prompts: list[Prompt]) -> list[Raw]:
        return [Raw(ctx.topics.prompts.name, 0, i, p.id.encode(), codec.encode(p)) for i, p in enumerate(prompts)]

    await through(ctx, raws(make_prompts(200, "warm")))
    gc.collect()
    gc.freeze()  # as the worker does after start-up
    prompts = data_prompts(data) if data else make_prompts(n, "run")
    n = len(prompts)
    seconds, counts = await through(ctx, raws(prompts))
    return {"prompts": n, "per_stage_us": {k: round(v / n * 1e6, 1) for k, v in seconds.items()},
            "us_per_prompt": round(sum(seconds.values()) / n * 1e6, 1), "outputs": counts,
            "default_features": default_features, "data": data or "synthetic"}


def prometheus_client_kinds() -> dict:
    """The Counter, Gauge and Histogram ``streams.metrics`` builds its series with, as
    prometheus-client's own classes."""
    import prometheus_client as pc

    return {"Counter": lambda name, doc, labels, r: pc.Counter(name, doc, labels, registry=r),
            "Gauge": lambda name, doc, labels, r: pc.Gauge(name, doc, labels, registry=r),
            "Histogram": lambda name, doc, labels, r, buckets: pc.Histogram(name, doc, labels, registry=r,
                                                                            buckets=buckets)}


async def compare_metrics(n: int, passes: int) -> dict:
    """µs of CPU per prompt (median of ``passes`` passes of ``n`` prompts each, in turn) with
    each implementation of the worker's series."""
    ours = {k: getattr(streams.metrics, k) for k in ("Counter", "Gauge", "Histogram")}
    ctxs = {}
    for label, kinds in (("plain", ours), ("prometheus_client", prometheus_client_kinds())):
        for k, v in kinds.items():
            setattr(streams.metrics, k, v)
        ctxs[label] = build(echo_settings("127.0.0.1:9", f"benchstages{label}"))
        await ctxs[label].objectives.update(echo_objective())
        ctxs[label].objectives.ready.set()
    for k, v in ours.items():
        setattr(streams.metrics, k, v)
    codec = ctxs["plain"].topics.prompts.codec
    figures: dict[str, list[float]] = {k: [] for k in ctxs}
    for r in range(passes + 1):  # the first pass warms up
        for label, ctx in ctxs.items():
            raws = [Raw("prompts", 0, i, p.id.encode(), codec.encode(p))
                    for i, p in enumerate(make_prompts(n, f"{label}{r}"))]
            seconds, _ = await through(ctx, raws)
            if r:
                figures[label].append(sum(seconds.values()) / n * 1e6)
        if not r:
            gc.collect()
            gc.freeze()
    return {label: round(statistics.median(v), 1) for label, v in figures.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2,000 prompts instead of 10,000")
    ap.add_argument("--default-features", action="store_true",
                    help="also score the default features and guard (repetition, refusal, injection)")
    ap.add_argument("--data", choices=sorted(DATA), help="the real prompts of ../shared/data instead of synthetic ones")
    ap.add_argument("--metrics-compare", action="store_true",
                    help="the worker's series as plain numbers vs prometheus-client's classes, in turn")
    args = ap.parse_args()
    if args.metrics_compare:
        us = asyncio.run(compare_metrics(500, 6 if args.quick else 30))
        for label, figure in us.items():
            print(f"{label:<20}{figure:>10.1f} µs CPU per prompt (median)")
        print(json.dumps({"bench": "stages", "metrics_compare_us_per_prompt": us}))
        return
    result = asyncio.run(run(2000 if args.quick else 10000, args.default_features, args.data))
    print(f"{'stage':<14}{'µs CPU per prompt':>20}")
    for name, us in result["per_stage_us"].items():
        print(f"{name:<14}{us:>20.1f}")
    print(f"{'all four':<14}{result['us_per_prompt']:>20.1f}")
    print(json.dumps({"bench": "stages", **result}))


if __name__ == "__main__":
    main()
