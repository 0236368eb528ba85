"""The per-text checks on real text: curate's PII and secret scrubbing, and evaluate's default
features and guard (repetition, refusal, injection), in µs of CPU per text over the messages
of GSM8K's 1,000 and IFEval's 541 prompts from ../shared/data, best of 5 passes. (The
features score responses; prompts stand in for them as real text no one here wrote.)

    python benchmarks/text.py [--quick] [--against REV] [--phone-regions US,GB,…]

``--quick``: 3 passes. ``--phone-regions``: the current scrub also finds the national phone
numbers of these regions (``PREFSTREAM_PII_PHONE_REGIONS``; a revision before it has none). ``--against REV``: the same checks as of git revision REV too, passes
taken in turn with the current ones (the machine's drift hits both alike). Last line: {"bench": "text", "us_per_text": {"gsm8k": {"scrub": …, …}, …}, …}
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.evaluators.heuristics import injection, refusal, repetition  # noqa: E402
from agents.pii import phone_regions, scrub  # noqa: E402
from benchmarks.stages import DATA  # noqa: E402
from streams.commands.serving.inputs import read_prompts  # noqa: E402

CHECKS: dict[str, Callable[[str], object]] = {"scrub": scrub, "repetition": repetition, "refusal": refusal,
                                              "injection": injection}


def checks_at(rev: str, tmp: Path) -> dict[str, Callable[[str], object]]:
    """The checks as of git revision ``rev`` (their modules loaded from it: agents/pii_net.py
    too where ``rev`` has it, standing in for ``agents.pii_net`` while that pii.py loads)."""
    modules = {}
    own = ("pii_net", "agents/pii_net.py", False), ("pii", "agents/pii.py", True), \
        ("heuristics", "agents/evaluators/heuristics.py", True)
    saved = sys.modules.get("agents.pii_net")
    try:
        for name, path, required in own:
            source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"], capture_output=True, text=True)
            if source.returncode and not required:
                continue
            if source.returncode:
                sys.exit(f"--against {rev}: cannot read {path} there ({source.stderr.strip()}); name a commit of this repository")
            file = tmp / f"{name}_{rev.replace('/', '_')}.py"
            file.write_text(source.stdout)
            spec = importlib.util.spec_from_file_location(f"{name}_at_rev", file)
            modules[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(modules[name])
            if name == "pii_net":
                sys.modules["agents.pii_net"] = modules[name]
    finally:
        if saved is not None:
            sys.modules["agents.pii_net"] = saved
        else:
            sys.modules.pop("agents.pii_net", None)
    h = modules["heuristics"]
    return {"scrub": modules["pii"].scrub, "repetition": h.repetition, "refusal": h.refusal, "injection": h.injection}


def best_us(variants: list[Callable[[str], object]], texts: list[str], passes: int) -> list[float]:
    """Per variant, the fastest of ``passes`` passes over ``texts`` in µs per text; each
    pass runs every variant in turn."""
    best = [float("inf")] * len(variants)
    for _ in range(passes):
        for i, check in enumerate(variants):
            started = time.process_time()
            for text in texts:
                check(text)
            best[i] = min(best[i], time.process_time() - started)
    return [b / len(texts) * 1e6 for b in best]


def found(name: str, texts: list[str]) -> int:
    """How many texts the check flags (scrub: findings), so a faster check is seen to find the same."""
    if name == "scrub":
        return sum(sum(CHECKS["scrub"](t)[1].values()) for t in texts)
    if name == "repetition":
        return sum(1 for t in texts if repetition(t) > 0)
    return sum(1 for t in texts if CHECKS[name](t))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="3 passes instead of 5")
    ap.add_argument("--against", metavar="REV", help="also time the checks as of this git revision")
    ap.add_argument("--phone-regions", default="", metavar="LIST", help="ISO regions for the current scrub")
    args = ap.parse_args()
    if args.phone_regions:
        regions = phone_regions(args.phone_regions)
        CHECKS["scrub"] = lambda text: scrub(text, phone_regions=regions)
    passes = 3 if args.quick else 5
    us, hits, before = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        old = checks_at(args.against, Path(tmp)) if args.against else None
        print(f"{'data':<8}{'texts':>7}" + "".join(f"{name + ' µs':>16}" for name in CHECKS))
        for data, path in sorted(DATA.items()):
            texts = [m.content or "" for p in read_prompts(path) for m in p.messages]
            us[data], before[data] = {}, {}
            for name, check in CHECKS.items():
                figures = best_us([check] + ([old[name]] if old else []), texts, passes)
                us[data][name] = round(figures[0], 1)
                if old:
                    before[data][name] = round(figures[1], 1)
            hits[data] = {name: found(name, texts) for name in CHECKS}
            print(f"{data:<8}{len(texts):>7}" + "".join(f"{us[data][name]:>16.1f}" for name in CHECKS))
            if old:
                print(f"{'  at ' + args.against[:10]:<15}" + "".join(f"{before[data][name]:>16.1f}" for name in CHECKS))
    result = {"bench": "text", "us_per_text": us, "flagged": hits, "passes": passes,
              "phone_regions": args.phone_regions}
    if old:
        result["against"] = {"rev": args.against, "us_per_text": before}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
