"""Pipeline throughput with a fast generator (the echo model server over HTTP, math
verifier), for the fault tests' budget and for the cost of waiting for the broker's ack of
every output before a message counts as done.

    .venv/bin/python -m benchmarks.fault_echo --prompts 1000 [--workers 1] [--storage memory|s3|noida]
        [--guarantee at_least_once|exactly_once]

``memory`` and ``s3`` are Tansu's storage engines; ``noida`` is noida-db's Kafka service
(transactions: the only one here that runs ``exactly_once``).

Prints prompts, seconds, prompts/s and the largest worker RSS at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from schemas import GeneratorSpec
from streams.admin import create_topics
from streams.broker import EmbeddedBroker
from streams.commands.run import publish_objective
from streams.settings import load
from streams.topics import from_settings
from tests.conftest import Workers
from tests.faults.harness import Ledger, math_objective, math_prompts, rss_mb, send_prompts
from tests.faults.services import EchoModel, Noida, S3Server, TansuS3


def run(n: int, workers: int, storage: str, guarantee: str, partitions: int, rate: float | None, tmp: Path) -> None:
    with ExitStack() as stack:
        if storage == "s3":
            broker = stack.enter_context(TansuS3(tmp, stack.enter_context(S3Server(tmp))))
        elif storage == "noida":
            broker = stack.enter_context(Noida(tmp))
        else:
            broker = stack.enter_context(EmbeddedBroker(log_path=tmp / "tansu.log"))
        model = stack.enter_context(EchoModel(tmp))
        settings = load({}, broker=broker.address, namespace="b" + uuid.uuid4().hex[:8], partitions=partitions,
                        data_dir=str(tmp / "data"), metrics_port=0, processing_guarantee=guarantee,
                        allowed_endpoints=model.base_url)
        topics = from_settings(settings)
        spec = math_objective("bench", GeneratorSpec(backend="openai", model="echo", base_url=model.base_url))
        asyncio.run(create_topics(settings, topics))
        asyncio.run(publish_objective(settings, topics, spec))
        pool = Workers(tmp)
        stack.callback(pool.stop_all)
        procs = [pool.start(settings, PREFSTREAM_PROCESSING_GUARANTEE=guarantee) for _ in range(workers)]
        # warm up: one prompt through every stage (workers joined, objective read)
        warm = math_prompts(1, spec.name, prefix="warm")
        asyncio.run(_send_and_wait(settings, topics, warm, Ledger(topics), {warm[0].id}, None))
        prompts = math_prompts(n, spec.name)
        ledger = Ledger(topics)
        started = time.monotonic()
        asyncio.run(_send_and_wait(settings, topics, prompts, ledger, {p.id for p in prompts}, rate))
        seconds = time.monotonic() - started
        rss = max(rss_mb(p.pid) for p in procs)
        print(f"storage={storage} guarantee={guarantee} workers={workers} partitions={partitions} rate={rate} "
              f"prompts={n} seconds={seconds:.1f} prompts_per_s={n / seconds:.1f} worker_rss_mb={rss:.0f} "
              f"dead_letters={len(ledger.letters)}")


async def _send_and_wait(settings, topics, prompts, ledger, ids, rate) -> None:
    follow = asyncio.create_task(ledger.follow(settings, lambda lg: ids <= set(lg.outcomes) | {
        d.prompt_id for d in lg.letters}, timeout=600))
    await send_prompts(settings, topics, prompts, rate=rate)
    if not await follow:
        raise SystemExit("timed out waiting for outcomes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--storage", choices=["memory", "s3", "noida"], default="memory")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--rate", type=float, default=None, help="prompts per second (default: all at once)")
    ap.add_argument("--guarantee", choices=["at_least_once", "exactly_once"], default="at_least_once")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args.prompts, args.workers, args.storage, args.guarantee, args.partitions, args.rate, Path(tmp))


if __name__ == "__main__":
    main()
