"""Bytes on the bus per prompt: the sizes (key + value) of every message one prompt's journey
writes, summed over every topic (prompts → curated → candidates → judgments → preferences,
prompt-stats, outcomes). The prompts go through the four stages' real bindings in one process
(``benchmarks.stages``: decode → process → encode, as a worker sends them) with the bench
objective of `bus.py`; no broker, so its record and batch framing is not counted.

    python benchmarks/bus_bytes.py [--prompts N]

Prints bytes per prompt per topic, then one JSON line:
{"bench": "bus_bytes", "bytes_per_prompt", "per_topic": {topic: bytes per prompt}, "prompts"}
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bus import make_prompts  # noqa: E402
from benchmarks.common import echo_objective, echo_settings  # noqa: E402
from benchmarks.stages import FORWARD, MAIN_LINE, build  # noqa: E402
from streams.runtime import Raw  # noqa: E402


async def journey(n: int) -> tuple[Counter, Counter]:
    """Bytes and messages per topic for ``n`` prompts' journeys."""
    ctx = build(echo_settings("127.0.0.1:9", "benchbytes"))  # never connected
    await ctx.objectives.update(echo_objective())
    ctx.objectives.ready.set()
    codec = ctx.topics.prompts.codec
    raws = [Raw(ctx.topics.prompts.name, 0, i, p.id.encode(), codec.encode(p))
            for i, p in enumerate(make_prompts(n, "bytes"))]
    size, count = Counter(prompts=sum(len(r.key) + len(r.value) for r in raws)), Counter(prompts=n)
    for name in MAIN_LINE:
        forward = []
        for raw in raws:
            for out in await ctx.stages[name].outputs(raw):
                short = out.topic.spec.short
                size[short] += len(out.key) + len(out.value)
                count[short] += 1
                if short in FORWARD:
                    forward.append(Raw(out.topic.name, 0, len(forward), out.key, out.value))
        raws = forward
    if count["deadletters"]:
        raise SystemExit(f"{count['deadletters']} dead letters: the journey is broken, no figure")
    return size, count


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=1000)
    n = ap.parse_args().prompts
    size, count = asyncio.run(journey(n))
    per_topic = {t: round(b / n, 1) for t, b in size.items()}
    for t, b in per_topic.items():
        print(f"{t:<16}{b:>10.1f} bytes/prompt  ({count[t] / n:.2f} messages/prompt)")
    total = sum(size.values()) / n
    print(f"{'all topics':<16}{total:>10.1f} bytes/prompt")
    print(json.dumps({"bench": "bus_bytes", "bytes_per_prompt": round(total, 1), "per_topic": per_topic,
                      "prompts": n}))


if __name__ == "__main__":
    main()
