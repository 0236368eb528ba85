"""CI: did `make run` account for every prompt, with no dead letter? Exit 1 saying what is off.

    python scripts/check_first_run.py OUT_DIR INPUT.jsonl
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main(out: Path, inputs: Path) -> int:
    summary = json.loads((out / "summary.json").read_text())
    expected = sum(1 for line in inputs.read_text().splitlines() if line.strip())
    records = [json.loads(x) for x in (out / "preferences.jsonl").read_text().splitlines() if x.strip()]
    with_records = len({r["prompt_id"] for r in records})
    ended = with_records + summary["no_pair"] + summary["dropped"] + summary["dead_letters"]
    problems = []
    if summary["dead_letters"]:
        problems.append(f"{summary['dead_letters']} dead letters: {summary['dead_letter_reasons']}")
    if summary["prompts"] != expected:
        problems.append(f"{summary['prompts']} prompts in the summary, {expected} in {inputs}")
    if ended != expected:
        problems.append(f"{ended} prompts ended ({with_records} with records, {summary['no_pair']} no pair, "
                        f"{summary['dropped']} dropped), {expected} submitted")
    for p in problems:
        print(f"first run: {p}", file=sys.stderr)
    if not problems:
        print(f"first run: {expected} prompts, {with_records} with records, {summary['no_pair']} no pair, "
              f"0 dead letters in {summary['seconds']:.0f}s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
