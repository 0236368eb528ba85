"""Records/s of the tap writing a training format as Parquet (+ JSONL) shards from a topic.

    .venv/bin/python benchmarks/tap_parquet.py [--records 100000] [--format trl-dpo] [--quick]

Starts the embedded Tansu broker, fills a fresh `preferences` topic (4 partitions) with
``--records`` preference pairs (about 0.6 KB each on the wire), then times `streams.commands.tap.follow.tap`
— the code `prefstream tap --format` runs — from a cold start (consumer assignment, reading
from offset 0) until every record is committed in shards and the dataset card is written.
Shards rotate at ``--rotate-mb``. The last line printed is a JSON object with the figures;
``--quick`` uses 5,000 records.
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

from schemas import Message, PreferenceRecord, Score, Side  # noqa: E402
from streams.admin import create_topics, producer  # noqa: E402
from streams.broker import EmbeddedBroker  # noqa: E402
from streams.commands.tap.formats import get  # noqa: E402
from streams.settings import load  # noqa: E402
from streams.commands.tap.follow import Rotation, tap  # noqa: E402
from streams.topics import from_settings  # noqa: E402


def record(i: int) -> PreferenceRecord:
    def side(tag: str, score: float) -> Side:
        return Side(candidate_id=f"c-{i}-{tag}", model="gemma-3-270m", score=score,
                    scores=[Score(evaluator="math", value=score, raw=str(i), rationale="final answer compared")])

    question = f"Question {i}: a farmer has {i % 97} cows and buys {i % 13} more. How many cows are there now?"
    return PreferenceRecord(
        id=f"r-{i:012d}", prompt_id=f"p-{i:012d}", objective="bench@1",
        prompt=[Message(role="user", content=question)],
        chosen=[Message(role="assistant", content=f"The farmer has {i % 97} + {i % 13} = {i % 97 + i % 13} cows.\n"
                                                  f"#### {i % 97 + i % 13}")],
        rejected=[Message(role="assistant", content=f"The farmer has {i % 97} cows. #### {i % 97}")],
        score_chosen=1.0, score_rejected=0.0, margin=1.0, chosen_side=side("a", 1.0), rejected_side=side("b", 0.0),
        source="gsm8k", created_at=1.7e9 + i)


async def fill(settings, topics, n: int) -> tuple[float, int]:
    p = producer(settings)
    await p.start()
    t, size, started = topics.preferences, 0, time.monotonic()
    try:
        for lo in range(0, n, 2000):
            futures = []
            for i in range(lo, min(n, lo + 2000)):
                r = record(i)
                value = t.codec.encode(r)
                size += len(value)
                futures.append(await p.send(t.name, value, key=r.prompt_id.encode()))
            await asyncio.gather(*futures)
    finally:
        await p.stop()
    return time.monotonic() - started, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--format", default="trl-dpo")
    ap.add_argument("--style", default="conversational")
    ap.add_argument("--rotate-mb", type=float, default=16.0)
    ap.add_argument("--quick", action="store_true", help="5,000 records")
    args = ap.parse_args()
    n = 5_000 if args.quick else args.records
    fmt = get(args.format, args.style)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_path=Path(tmp) / "broker.log") as broker:
        settings = load({}, broker=broker.address, namespace="bench", partitions=4)
        topics = from_settings(settings)
        asyncio.run(create_topics(settings, topics))
        fill_s, wire_bytes = asyncio.run(fill(settings, topics, n))
        out = Path(tmp) / "out"
        started = time.monotonic()
        written = asyncio.run(tap(settings, topics, str(out), fmt=fmt, limit=n,
                                  rotation=Rotation(max_bytes=int(args.rotate_mb * (1 << 20)), max_seconds=3600)))
        seconds = time.monotonic() - started
        parquet = list((out / "data").glob("*.parquet"))
        result = {
            "bench": "tap_parquet", "format": fmt.name, "style": fmt.style, "records": written,
            "seconds": round(seconds, 3), "records_per_s": round(written / seconds, 1),
            "shards": len(parquet), "parquet_mb": round(sum(p.stat().st_size for p in parquet) / 2**20, 2),
            "jsonl_mb": round(sum(p.stat().st_size for p in (out / "jsonl").glob("*.jsonl")) / 2**20, 2),
            "topic_mb": round(wire_bytes / 2**20, 2), "fill_seconds": round(fill_s, 3),
        }
    assert written == n, f"the tap wrote {written} of {n} records"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
