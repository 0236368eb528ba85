"""Soak: prompts through the echo pipeline (four agents, one worker) with the worker's RSS
sampled at 10% and at 100% of the run.

    python benchmarks/soak.py [--quick]        # 100,000 prompts (quick: 20,000)

Last line: {"bench": "soak", "rss_10k_mb", "rss_100k_mb", "growth", ...} (with --quick the
two points are at 2k and 20k; the keys keep their names).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bus import make_prompts  # noqa: E402
from benchmarks.common import echo_objective, echo_settings, echo_workers, rss_mb  # noqa: E402
from streams.admin import producer, reader  # noqa: E402
from streams.broker import EmbeddedBroker  # noqa: E402
from streams.topics import from_settings  # noqa: E402


async def soak(settings, n: int, worker, checkpoints: list[int]) -> dict[int, float]:
    """Submit in chunks, keeping at most `window` prompts un-ended; sample RSS at checkpoints."""
    topics = from_settings(settings)
    consumer = await reader(settings, [topics.outcomes.name])
    prod = producer(settings, linger_ms=20)
    await prod.start()
    codec, window, sent, ended, rss = topics.prompts.codec, 5000, 0, 0, {}
    prompts = iter(make_prompts(n, "soak"))
    deadline = time.monotonic() + 3600
    try:
        while ended < n and time.monotonic() < deadline:
            while sent < n and sent - ended < window:
                p = next(prompts)
                await prod.send(topics.prompts.name, codec.encode(p), key=p.id.encode())
                sent += 1
            for msgs in (await consumer.getmany(timeout_ms=200, max_records=5000)).values():
                ended += len(msgs)
            for c in checkpoints:
                if ended >= c and c not in rss:
                    rss[c] = rss_mb(worker.pid)
    finally:
        await prod.stop()
        await consumer.stop()
    return rss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="20,000 prompts")
    args = ap.parse_args()
    n = 20000 if args.quick else 100000
    first = n // 10
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_path=Path(tmp) / "broker.log") as broker:
        settings = echo_settings(broker.address, "soak")
        with echo_workers(settings, Path(tmp), echo_objective()) as [worker]:
            t0 = time.perf_counter()
            rss = asyncio.run(soak(settings, n, worker, [n * k // 10 for k in range(1, 11)]))
        wall = time.perf_counter() - t0
    a, b = rss.get(first, float("nan")), rss.get(n, float("nan"))
    print(f"prompts {n} in {wall:.0f} s ({n / wall:.0f}/s); worker RSS at {first}: {a:.1f} MB, at {n}: {b:.1f} MB")
    print("RSS MB every tenth: " + " ".join(f"{rss.get(c, float('nan')):.0f}" for c in sorted(rss)))
    print(json.dumps({"bench": "soak", "rss_10k_mb": round(a, 1), "rss_100k_mb": round(b, 1),
                      "growth": round((b - a) / a, 3), "prompts": n, "prompts_per_s": round(n / wall, 1)}))


if __name__ == "__main__":
    main()
