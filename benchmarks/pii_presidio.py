"""curate's scrubbing against Presidio's own pattern recognizers (credit card, e-mail, IBAN, IP,
phone; no NLP model), on the same texts: Presidio's test cases, this project's production
classes and corpus (tests/unit/test_pii.py), and the CPU per text on GSM8K and IFEval.

Presidio is no dependency of prefstream: run this with a venv that has it, e.g.

    python -m venv /tmp/presidio-venv
    /tmp/presidio-venv/bin/pip install presidio-analyzer==2.2.366 phonenumbers==9.0.43 msgspec==0.22.0 pyyaml
    TLDEXTRACT_CACHE=/tmp/tld /tmp/presidio-venv/bin/python benchmarks/pii_presidio.py

(its e-mail recognizer asks tldextract for the public suffix list, falling back to its snapshot
offline). Phone numbers: both with Presidio's default regions (US, GB, DE, FR, IL, IN, CA, BR).
Last line: {"bench": "pii_presidio", …}
"""
from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

try:
    from presidio_analyzer.predefined_recognizers import (CreditCardRecognizer, EmailRecognizer, IbanRecognizer,
                                                          IpRecognizer, PhoneRecognizer)
except ImportError:
    sys.exit("presidio-analyzer is not installed here: run this with a venv that has it (see the docstring)")

from agents.pii import scrub  # noqa: E402
from benchmarks.pii_suite import load, measure  # noqa: E402
from streams.commands.serving.inputs import read_prompts  # noqa: E402
from tests.unit import test_pii as corpus  # noqa: E402

KINDS = ["email", "iban", "card", "ip", "phone"]
REGIONS = ("US", "GB", "DE", "FR", "IL", "IN", "CA", "BR")
DATA = {"gsm8k": ROOT.parent / "shared" / "data" / "gsm8k" / "train_first1000.jsonl",
        "ifeval": ROOT.parent / "shared" / "data" / "ifeval" / "input_data.jsonl"}
RECOGNIZERS = {"card": (CreditCardRecognizer(), "CREDIT_CARD"), "email": (EmailRecognizer(), "EMAIL_ADDRESS"),
               "iban": (IbanRecognizer(), "IBAN_CODE"), "ip": (IpRecognizer(), "IP_ADDRESS")}
_phones: dict[tuple[str, ...], PhoneRecognizer] = {}
POSITIVES = [p for p in corpus.positives() if p[0] != "secret"]  # drawn once: both scrubbers see the same


def presidio_scrub(text: str, kinds=KINDS, phone_regions: tuple[str, ...] = ()) -> tuple[str, Counter]:
    """Presidio's recognizers as a ``scrub``: every result (any score) replaced, overlaps merged."""
    spans = []
    for kind in kinds:
        if kind == "phone":
            regions = tuple(phone_regions) or REGIONS
            rec, entity = _phones.setdefault(regions, PhoneRecognizer(supported_regions=regions)), "PHONE_NUMBER"
        elif kind in RECOGNIZERS:
            rec, entity = RECOGNIZERS[kind]
        else:
            continue
        spans += [(r.start, r.end, kind) for r in rec.analyze(text, [entity], None) if r.score > 0]
    merged: list[tuple[int, int, str]] = []
    for s, e, k in sorted(spans):
        if merged and s < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(e, merged[-1][1]), merged[-1][2])
        else:
            merged.append((s, e, k))
    out, pos, counts = [], 0, Counter()
    for s, e, k in merged:
        out += [text[pos:s], f"[{k.upper()}]"]
        pos, counts[k] = e, counts[k] + 1
    return "".join(out + [text[pos:]]), counts


def own_corpus(f) -> dict:
    """The production classes exactly, the look-alikes left whole, the corpus's recall and
    its negatives flagged (secrets left out: Presidio has no recognizer for them)."""
    pos = POSITIVES
    return {"production_exact": sum(f(t, KINDS)[0] == w for t, w in corpus.PRODUCTION),
            "production": len(corpus.PRODUCTION),
            "left_whole": sum(f(t, KINDS)[0] == t for t in corpus.LEFT_WHOLE), "look_alikes": len(corpus.LEFT_WHOLE),
            "corpus_caught": sum(v not in f(s, KINDS)[0] for _, v, s in pos), "corpus": len(pos),
            "negatives_flagged": sum(f(s, KINDS)[0] != s for s in corpus.NEGATIVES), "negatives": len(corpus.NEGATIVES),
            "wrong": [(t, f(t, KINDS)[0]) for t, w in corpus.PRODUCTION if f(t, KINDS)[0] != w]
            + [(t, f(t, KINDS)[0]) for t in corpus.LEFT_WHOLE if f(t, KINDS)[0] != t]}


def us_per_text(f, texts: list[str], passes: int = 2) -> float:
    best = float("inf")
    for _ in range(passes):
        started = time.process_time()
        for t in texts:
            f(t, KINDS, REGIONS)
        best = min(best, time.process_time() - started)
    return round(best / len(texts) * 1e6, 1)


def main() -> None:
    logging.disable(logging.WARNING)
    _, cases = load()
    result = {"bench": "pii_presidio", "phone_regions": list(REGIONS)}
    for name, f in (("prefstream", scrub), ("presidio", presidio_scrub)):
        suite = {k: {m: [v[m]["recall"], v[m]["precision"]] for m in ("inside", "gone")}
                 for k, v in measure(f, cases).items()}
        own = own_corpus(f)
        cpu = {d: us_per_text(f, [m.content or "" for p in read_prompts(path) for m in p.messages])
               for d, path in DATA.items()}
        print(f"{name}: Presidio suite recall/precision (inside) "
              + ", ".join(f"{k} {v['inside'][0]:.3f}/{v['inside'][1]:.3f}" for k, v in suite.items()))
        print(f"  production lines exact {own['production_exact']}/{own['production']}, look-alikes left whole "
              f"{own['left_whole']}/{own['look_alikes']}, corpus caught {own['corpus_caught']}/{own['corpus']}, "
              f"negatives flagged {own['negatives_flagged']}/{own['negatives']}; µs per text "
              + ", ".join(f"{d} {v}" for d, v in cpu.items()))
        for text, out in own["wrong"]:
            print(f"    {text!r} -> {out!r}")
        result[name] = {"suite": suite, "own": {k: v for k, v in own.items() if k != "wrong"}, "us_per_text": cpu}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
