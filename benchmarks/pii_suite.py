"""Recall and precision of curate's PII scrubbing per kind on a suite no one here wrote:
Microsoft Presidio's recognizer test cases (tests/data/presidio_cases.jsonl, MIT; see
tests/data/presidio_cases.md), each case scrubbed for its own kind only, phone cases with
the regions the Presidio test configured.

    python benchmarks/pii_suite.py [--against REV]

Two ways of counting (the findings are read back from the scrubbed text, so any version of
``scrub`` can be measured):
- ``inside``: an expected span is caught when it lies inside one placeholder of its kind; a
  placeholder is right when it holds a whole expected span (half an entity is a miss and a
  false finding);
- ``gone``: an expected span is caught when its text no longer appears; a placeholder is
  right when it overlaps an expected span.
``--against REV``: the same as of git revision REV too (its agents/pii.py; a scrub without
regions gets none). Last line: {"bench": "pii_suite", "kinds": {kind: {mode: {recall, precision, …}}}, …}
"""
from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = ROOT / "tests" / "data" / "presidio_cases.jsonl"
PLACEHOLDER = re.compile(r"\[(EMAIL|PHONE|CARD|IBAN|IP|SECRET)\]")


def load(path: Path = CASES) -> tuple[dict, list[dict]]:
    """The header (source, commit, licence) and the cases."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return lines[0], lines[1:]


def placeholders(text: str, out: str) -> list[tuple[int, int, str]]:
    """``(start, end, kind)`` in ``text`` of each placeholder in ``out``: the kept text
    between placeholders is matched in order, each placeholder standing for the shortest run."""
    parts = PLACEHOLDER.split(out)  # literal, kind, literal, kind, …
    pattern = "".join(re.escape(p) if i % 2 == 0 else "(.+?)" for i, p in enumerate(parts))
    m = re.fullmatch(pattern, text, re.S)
    if m is None:
        raise AssertionError(f"scrubbed text is not the input with runs replaced: {text!r} -> {out!r}")
    return [(m.start(g), m.end(g), parts[2 * g - 1].lower()) for g in range(1, len(parts) // 2 + 1)]


def _scrub_case(scrub: Callable, case: dict) -> str:
    """The case's text scrubbed for its own kind (with its regions where ``scrub`` takes them)."""
    extra = {}
    if "phone_regions" in inspect.signature(scrub).parameters:
        extra["phone_regions"] = tuple(case.get("regions", ()))
    return scrub(case["text"], [case["kind"]], **extra)[0]


def measure(scrub: Callable, cases: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Per kind and counting mode: recall, precision and the counts behind them."""
    n = defaultdict(lambda: defaultdict(int))
    for case in cases:
        kind, text, spans = case["kind"], case["text"], [tuple(s) for s in case["spans"]]
        out = _scrub_case(scrub, case)
        found = [(s, e) for s, e, k in placeholders(text, out) if k == kind]
        c = n[kind]
        c["spans"] += len(spans)
        c["findings"] += len(found)
        c["inside_caught"] += sum(any(s <= a and b <= e for s, e in found) for a, b in spans)
        c["gone_caught"] += sum(text[a:b] not in out for a, b in spans)
        c["inside_right"] += sum(any(s <= a and b <= e for a, b in spans) for s, e in found)
        c["gone_right"] += sum(any(s < b and a < e for a, b in spans) for s, e in found)
    result = {}
    for kind, c in sorted(n.items()):
        result[kind] = {mode: {"recall": round(c[f"{mode}_caught"] / c["spans"], 3) if c["spans"] else 1.0,
                               "precision": round(c[f"{mode}_right"] / c["findings"], 3) if c["findings"] else 1.0,
                               "spans": c["spans"], "findings": c["findings"],
                               "caught": c[f"{mode}_caught"], "right": c[f"{mode}_right"]}
                        for mode in ("inside", "gone")}
    return result


def misses(scrub: Callable, cases: list[dict], kind: str) -> list[tuple[str, str]]:
    """(input, output) of each case of ``kind`` not scrubbed exactly as expected (for an assert)."""
    out = []
    for case in (c for c in cases if c["kind"] == kind):
        got = _scrub_case(scrub, case)
        found = sorted((s, e) for s, e, k in placeholders(case["text"], got) if k == kind)
        if found != sorted(tuple(s) for s in case["spans"]):
            out.append((case["text"], got))
    return out


def scrub_at(rev: str) -> Callable:
    """``scrub`` as of git revision ``rev`` (loaded as benchmarks/text.py loads it)."""
    import tempfile

    from benchmarks.text import checks_at
    return checks_at(rev, Path(tempfile.mkdtemp()))["scrub"]


def main() -> None:
    from agents.pii import scrub
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", metavar="REV", help="also measure agents/pii.py as of this git revision")
    args = ap.parse_args()
    header, cases = load()
    now = measure(scrub, cases)
    before = measure(scrub_at(args.against), cases) if args.against else None
    print(f"Presidio {header['commit'][:12]}, {len(cases)} cases; recall/precision")
    print(f"{'kind':<7}{'spans':>6}{'found':>6}  {'inside':>13}  {'gone':>13}")
    for label, res in (("now", now), (f"at {args.against}", before)):
        if res is None:
            continue
        print(label)
        for kind, m in res.items():
            i, g = m["inside"], m["gone"]
            print(f"{kind:<7}{i['spans']:>6}{i['findings']:>6}  {i['recall']:>6.3f}/{i['precision']:.3f}"
                  f"  {g['recall']:>6.3f}/{g['precision']:.3f}")
    result = {"bench": "pii_suite", "suite": header["source"], "commit": header["commit"], "cases": len(cases),
              "kinds": now}
    if before is not None:
        result["against"] = {"rev": args.against, "kinds": before}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
