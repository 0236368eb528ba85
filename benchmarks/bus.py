"""The bus and the agents with a zero-cost model: the four agents on the embedded broker with
the built-in `echo` generator (N=4 candidates) and the heuristic `length` evaluator, against
the raw aiokafka floor measured in the same run (the same number of messages of the same
sizes through four topic hops, no processing).

    python benchmarks/bus.py [--quick] [--prompts N] [--workers W] [--exactly-once]

``--exactly-once`` runs the workers with
``PREFSTREAM_PROCESSING_GUARANTEE=exactly_once`` on noida-db's broker (Tansu has no
transactions; the floor is measured there too) and reads the outcomes read_committed.

Prints a table, then one JSON line:
{"bench": "bus", "prompts_per_s", "raw_floor_per_s", "ratio_to_floor", "p99_ms", ...}
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiokafka.admin import NewTopic  # noqa: E402

from agents import curate, evaluate, instantiate, synthesize  # noqa: E402
from agents.backends import Backends  # noqa: E402
from agents.evaluators import build_evaluators  # noqa: E402
from benchmarks.common import PARTITIONS, cpu_seconds, echo_objective, echo_settings, echo_workers, percentile  # noqa: E402
from schemas import Message, Prompt  # noqa: E402
from streams.admin import producer, reader  # noqa: E402
from streams.broker import EmbeddedBroker  # noqa: E402
from streams.topics import Topics, from_settings  # noqa: E402



def make_prompts(n: int, tag: str) -> list[Prompt]:
    return [Prompt(id=f"{tag}-{i}", objective="bench", source="bench",
                   messages=[Message(role="user", content=f"Question {i}: what is {i} plus {i % 7}? Answer briefly.")])
            for i in range(n)]


def hop_sizes(settings) -> list[int]:
    """Encoded sizes of one prompt's messages at each hop, from the real stage functions."""
    topics = Topics("sizes")
    spec = echo_objective()
    backends = Backends(settings)
    p = make_prompts(1, "size")[0]
    [c] = curate.process(p, {"bench": spec}, "bench")
    [s] = asyncio.run(synthesize.process(c.value, backends))
    [j] = asyncio.run(evaluate.process(s.value, build_evaluators(backends)))
    out = instantiate.process(j.value)
    sizes = [len(topics.prompts.codec.encode(p)), len(topics.curated.codec.encode(c.value)),
             len(topics.candidates.codec.encode(s.value)), len(topics.judgments.codec.encode(j.value)),
             sum(len(topics.of(e.topic).codec.encode(e.value)) for e in out)]
    return sizes


async def raw_floor(settings, n: int, sizes: list[int]) -> float:
    """Produce n messages and pass them through four hops with plain aiokafka: prompts/s."""
    names = [f"raw{time.time_ns()}.{i}" for i in range(5)]
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.brokers)
    await admin.start()
    await admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in names])
    await admin.close()
    payloads = [os.urandom(s // 2).hex().encode()[:s] for s in sizes]
    prod = producer(settings, linger_ms=20, max_batch_size=256 * 1024)
    await prod.start()
    done = asyncio.Event()

    async def hop(i: int) -> None:
        """Stage i (1..4) reads topic i-1 and writes topic i; i == 5 is the final sink."""
        consumer = await reader(settings, [names[i - 1]])
        seen = 0
        try:
            while seen < n:
                for msgs in (await consumer.getmany(timeout_ms=200, max_records=5000)).values():
                    if i < 5:
                        for m in msgs:
                            await prod.send(names[i], payloads[i], key=m.key)
                    seen += len(msgs)
        finally:
            await consumer.stop()
        if i == 5:
            done.set()

    hops = [asyncio.create_task(hop(i)) for i in range(1, 6)]
    await asyncio.sleep(1.0)  # consumers assigned
    t0 = time.perf_counter()
    for k in range(n):
        await prod.send(names[0], payloads[0], key=str(k).encode())
    await done.wait()
    wall = time.perf_counter() - t0
    await asyncio.gather(*hops)
    await prod.stop()
    return n / wall


async def pipeline(settings, prompts: list[Prompt], workers: list) -> dict:
    topics = from_settings(settings)
    consumer = await reader(settings, [topics.outcomes.name])
    prod = producer(settings, linger_ms=20, max_batch_size=256 * 1024)
    await prod.start()
    codec = topics.prompts.codec
    sent_at: dict[str, float] = {}
    cpu0 = sum(cpu_seconds(w.pid) for w in workers)
    t0 = time.perf_counter()
    for p in prompts:
        sent_at[p.id] = time.time()
        await prod.send(topics.prompts.name, codec.encode(p), key=p.id.encode())
    await prod.flush()
    lat, ended = [], set()
    deadline = time.monotonic() + 600
    while len(ended) < len(prompts) and time.monotonic() < deadline:
        for msgs in (await consumer.getmany(timeout_ms=200, max_records=5000)).values():
            for m in msgs:
                o = topics.outcomes.codec.decode(m.value)
                if o.prompt_id in sent_at and o.prompt_id not in ended:
                    ended.add(o.prompt_id)
                    lat.append(m.timestamp / 1000 - sent_at[o.prompt_id])
    wall = time.perf_counter() - t0
    cpu = sum(cpu_seconds(w.pid) for w in workers) - cpu0
    await prod.stop()
    await consumer.stop()
    return {"prompts": len(ended), "wall_s": wall, "prompts_per_s": len(ended) / wall,
            "p50_ms": percentile(lat, 0.5) * 1000, "p99_ms": percentile(lat, 0.99) * 1000,
            "worker_cpu_s_per_prompt": cpu / max(1, len(ended))}


async def stage_rates(settings, ids: set[str]) -> dict[str, float]:
    """Per stage: messages of this run per second between the first and last broker timestamp."""
    topics = from_settings(settings)
    out = {}
    for short in ("curated", "candidates", "judgments", "outcomes"):
        t = getattr(topics, short)
        consumer = await reader(settings, [t.name])
        stamps = []
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=1000, max_records=10000)
                if not batch:
                    break
                for msgs in batch.values():
                    stamps += [m.timestamp for m in msgs if m.key and m.key.decode() in ids]
        finally:
            await consumer.stop()
        out[short] = len(stamps) / max(1e-3, (max(stamps) - min(stamps)) / 1000) if stamps else float("nan")
    return out


def start_broker(tmp: Path, transactions: bool):
    """The embedded Tansu broker, or noida-db's where transactions are needed."""
    if transactions:
        from tests.faults.services import Noida

        return Noida(tmp)
    return EmbeddedBroker(log_path=tmp / "broker.log")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2,000 prompts")
    ap.add_argument("--prompts", type=int)
    ap.add_argument("--workers", type=int, default=1, help="worker processes in the group")
    ap.add_argument("--exactly-once", action="store_true",
                    help="exactly-once workers, on noida-db's broker (transactions; the test extra installs it)")
    args = ap.parse_args()
    n = args.prompts or (2000 if args.quick else 20000)
    guarantee = "exactly_once" if args.exactly_once else "at_least_once"
    with tempfile.TemporaryDirectory() as tmp, start_broker(Path(tmp), args.exactly_once) as broker:
        settings = echo_settings(broker.address, "benchbus", processing_guarantee=guarantee)
        sizes = hop_sizes(settings)
        floor = asyncio.run(raw_floor(settings, n, sizes))
        with echo_workers(settings, Path(tmp), echo_objective(), args.workers) as workers:
            asyncio.run(pipeline(settings, make_prompts(20, "warm"), workers))
            prompts = make_prompts(n, "run")
            broker_cpu0 = cpu_seconds(broker.proc.pid)
            result = asyncio.run(pipeline(settings, prompts, workers))
            result["broker_cpu_s_per_prompt"] = (cpu_seconds(broker.proc.pid) - broker_cpu0) / max(1, result["prompts"])
            rates = asyncio.run(stage_rates(settings, {p.id for p in prompts}))
    label = f"prefstream ({args.workers} worker{', exactly-once' if args.exactly_once else ''})"
    w = max(28, len(label) + 2)
    print(f"hop sizes (bytes): {sizes}")
    print(f"{'':<{w}}{'prompts/s':>12}")
    print(f"{'raw aiokafka floor':<{w}}{floor:>12.0f}")
    print(f"{label:<{w}}{result['prompts_per_s']:>12.0f}")
    for k, v in rates.items():
        print(f"{'  stage → ' + k:<{w}}{v:>12.0f}")
    print(f"latency submit→outcome p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms; "
          f"CPU per prompt: workers {result['worker_cpu_s_per_prompt'] * 1e3:.2f} ms, "
          f"broker {result['broker_cpu_s_per_prompt'] * 1e3:.2f} ms")
    print(json.dumps({"bench": "bus", "prompts_per_s": round(result["prompts_per_s"], 1),
                      "raw_floor_per_s": round(floor, 1), "ratio_to_floor": round(result["prompts_per_s"] / floor, 3),
                      "p99_ms": round(result["p99_ms"], 1), "p50_ms": round(result["p50_ms"], 1),
                      "prompts": n, "workers": args.workers, "guarantee": guarantee, "ended": result["prompts"],
                      "stage_per_s": {k: round(v, 1) for k, v in rates.items()},
                      "worker_cpu_ms_per_prompt": round(result["worker_cpu_s_per_prompt"] * 1e3, 3),
                      "broker_cpu_ms_per_prompt": round(result["broker_cpu_s_per_prompt"] * 1e3, 3),
                      "hop_bytes": sizes}))


if __name__ == "__main__":
    main()
