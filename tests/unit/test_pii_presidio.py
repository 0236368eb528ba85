"""PII scrubbing measured on a suite no one here wrote: Microsoft Presidio's recognizer test
cases (tests/data/presidio_cases.jsonl, MIT, derived by scripts/presidio_cases.py), each
case scrubbed for its own kind, phone cases with the regions the Presidio test configured.
The per-kind figures are those of docs/pii.md (``python benchmarks/pii_suite.py``)."""
from __future__ import annotations

import pytest

from agents.pii import scrub
from benchmarks.pii_suite import load, measure, misses, placeholders

HEADER, CASES = load()
RESULT = measure(scrub, CASES)
# recall / precision each kind must reach in both counting modes (a half-replaced entity is
# a miss and a false finding in the ``inside`` mode)
FLOOR = {"card": (0.95, 0.95), "email": (0.95, 0.95), "iban": (0.95, 0.95), "ip": (0.95, 0.95),
         "phone": (0.8, 0.9)}


def test_the_suite_is_presidios_and_whole():
    assert HEADER["source"] == "https://github.com/microsoft/presidio" and HEADER["licence"] == "MIT"
    assert len(HEADER["commit"]) == 40
    spans = {k: RESULT[k]["inside"]["spans"] for k in RESULT}
    assert set(spans) == set(FLOOR) and all(n >= 7 for n in spans.values()), spans


@pytest.mark.parametrize("kind", sorted(FLOOR))
def test_recall_and_precision_per_kind(kind):
    want_recall, want_precision = FLOOR[kind]
    for mode in ("inside", "gone"):
        got = RESULT[kind][mode]
        print(f"\n{kind} ({mode}): recall {got['recall']:.3f}, precision {got['precision']:.3f} "
              f"({got['spans']} spans, {got['findings']} findings)")
        assert got["recall"] >= want_recall and got["precision"] >= want_precision, misses(scrub, CASES, kind)


def test_phone_needs_the_regions_configured():
    """A bare national number is found only for a region the operator lists; + prefixed
    numbers always."""
    text = "My CN number is 13812345678"
    assert scrub(text, ["phone"])[0] == text
    assert scrub(text, ["phone"], phone_regions=("CN",))[0] == "My CN number is [PHONE]"
    assert scrub("Brazil: +55 11 98456 5666", ["phone"])[0] == "Brazil: [PHONE]"


def test_placeholders_are_read_back_exactly():
    text = "a 10.0.0.1. b"
    assert placeholders(text, "a [IP]. b") == [(2, 10, "ip")]
    with pytest.raises(AssertionError):
        placeholders(text, "a [IP] c")
