"""Curate's PII and secret scrubbing on real prompts: µs of CPU per prompt over GSM8K's 1,000
and IFEval's 541 prompts from ../shared/data (every message, all kinds), best of 5 passes.

    python benchmarks/pii.py [--quick]

``--quick``: 3 passes. Last line: {"bench": "pii", "us_per_prompt": {"gsm8k": …, "ifeval": …}, …}
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.pii import scrub  # noqa: E402
from benchmarks.stages import DATA  # noqa: E402
from streams.inputs import read_prompts  # noqa: E402


def best_us(texts: list[list[str]], passes: int) -> float:
    """The fastest of ``passes`` passes over every prompt's messages, in µs per prompt."""
    best = float("inf")
    for _ in range(passes):
        started = time.process_time()
        for messages in texts:
            for text in messages:
                scrub(text)
        best = min(best, time.process_time() - started)
    return best / len(texts) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="3 passes instead of 5")
    args = ap.parse_args()
    passes = 3 if args.quick else 5
    result, found = {}, {}
    for name, path in sorted(DATA.items()):
        texts = [[m.content or "" for m in p.messages] for p in read_prompts(path)]
        result[name] = round(best_us(texts, passes), 1)
        found[name] = sum(sum(scrub(t)[1].values()) for messages in texts for t in messages)
    print(f"{'data':<10}{'prompts':>9}{'µs per prompt':>16}{'findings':>10}")
    for name in result:
        count = sum(1 for _ in read_prompts(DATA[name]))
        print(f"{name:<10}{count:>9}{result[name]:>16.1f}{found[name]:>10}")
    print(json.dumps({"bench": "pii", "us_per_prompt": result, "findings": found, "passes": passes}))


if __name__ == "__main__":
    main()
