"""Preference signal per CPU-second from the embedded model, before vs after each of issue #28's
features, in one run: the stages (synthesize → evaluate → instantiate) as a worker runs them, in
this process, with the default objective and the bundled Gemma 3 270M on one thread.

Configurations, each adding one feature to the one before (``--configs`` picks some):

- ``before``:     no reference, no adaptive sampling, free-text judge, each call evaluates its prompt afresh
- ``reference``:  + the ``reference`` generator (an off-policy candidate where a prompt has a reference)
- ``adaptive``:   + adaptive sampling up to ``synthesis.max_candidates``
- ``structured``: + the judge's answer enforced by a GBNF grammar
- ``shared``:     + a prompt evaluated once per request, a judge's rubric and question once per set
- ``batched``:    + a set's candidates in one batched decode sharing the prompt's KV cache (= after)
- ``principles``: ``batched`` with per-principle judge scores and a reason (not in the default)

Prompt sets (``--sets``): ``bundled`` (examples/prompts.jsonl), ``gsm8k`` and ``ifeval`` (the first
``--limit`` of each from ../shared/data, default 50). Figures per set and configuration: pairs per
prompt, pairs per CPU-minute (this process's CPU time: the model's thread included), the judge's
parse-failure rate, and where a verifier scored both sides of a pair, how often the chosen side
verifies and how often it verifies at least as well as the rejected one. Usage:

    python benchmarks/yield.py [--sets bundled,gsm8k,ifeval] [--limit 50] [--configs before,shared]
    python benchmarks/yield.py --decode    # generation alone: N candidates batched vs one by one

``--decode``: tokens/s of generation alone (the prompt's evaluation not counted), one thread,
64 tokens per candidate (end-of-text ignored), N = 1, 4, 8: the N sequences of one batched
decode vs N one-sequence decodes; medians of ``--repeat`` runs, taken in turn.

Prints a table, then one JSON line: {"bench": "yield", "rows": [...], "headline": {...}}.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents import evaluate, instantiate, synthesize  # noqa: E402
from agents.backends import Backends  # noqa: E402
from agents.evaluators import build_evaluators  # noqa: E402
from schemas import Curated, ObjectiveSpec, PreferenceRecord  # noqa: E402
from streams.commands.serving.inputs import read_prompts  # noqa: E402
from agents.objectives import load_objective  # noqa: E402
from streams.settings import Settings  # noqa: E402

CONFIGS = ["before", "reference", "adaptive", "structured", "shared", "batched", "principles"]
DEFAULT_CONFIGS = CONFIGS[:6]


def objective_for(config: str, default: ObjectiveSpec) -> tuple[ObjectiveSpec, bool, bool]:
    """The default objective with the features after ``config`` switched off, whether
    prompts are shared (evaluated once per request) and whether candidates decode batched."""
    level = CONFIGS.index(config)
    syn, ev = default.synthesis, default.evaluation
    gens = [g for g in syn.generators if g.backend != "reference"]
    ref = [g for g in syn.generators if g.backend == "reference"] or [
        msgspec.convert({"backend": "reference", "model": "reference"}, type(gens[0]))]
    syn = msgspec.structs.replace(syn, generators=gens + (ref if level >= 1 else []),
                                  max_candidates=(syn.max_candidates or 2 * syn.candidates) if level >= 2 else None)
    judge = msgspec.structs.replace(ev.judge, structured=level >= 3, per_principle=config == "principles")
    spec = msgspec.structs.replace(default, name=f"yield-{config}", synthesis=syn,
                                   evaluation=msgspec.structs.replace(ev, judge=judge))
    return spec, level >= 4, level >= 5


def prompt_sets(names: list[str], limit: int, data: Path) -> dict[str, list]:
    files = {"bundled": (ROOT / "examples" / "prompts.jsonl", None),
             "gsm8k": (data / "gsm8k" / "train_first1000.jsonl", limit),
             "ifeval": (data / "ifeval" / "input_data.jsonl", limit)}
    out = {}
    for name in names:
        path, n = files[name]
        if not path.is_file():
            sys.exit(f"{path} does not exist: pass --data (the shared data folder, ../shared/data)")
        out[name] = list(read_prompts(path, limit=n if n is not None else None))
        if name == "bundled" and limit < len(out[name]):
            out[name] = out[name][:limit]
    return out


def verified(side) -> float | None:
    values = [s.value for s in side.scores if s.kind == "verifier" and s.value is not None]
    return sum(values) / len(values) if values else None


async def one(prompt, spec: ObjectiveSpec, backends, evaluators) -> tuple[list, object, object]:
    [cands] = await synthesize.process(Curated(prompt=prompt, objective=spec), backends)
    [judged] = await evaluate.process(cands.value, evaluators, backends)
    *records, outcome = instantiate.process(judged.value)
    return [r.value for r in records if isinstance(r.value, PreferenceRecord)], judged.value, outcome.value


async def measure(prompts: list, spec: ObjectiveSpec, backends, evaluators) -> dict:
    pairs, judge_scores, failures, extra = [], 0, 0, 0
    cpu, wall = time.process_time(), time.perf_counter()
    for p in prompts:
        records, judged, outcome = await one(p, spec, backends, evaluators)
        pairs += records
        scores = [s for j in judged.judged for s in j.scores if s.evaluator == "judge"]
        judge_scores += len(scores)
        failures += sum(s.error == "parse_failure" for s in scores)
        extra += outcome.counts.get("extra_candidates", 0)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    both = [(verified(r.chosen_side), verified(r.rejected_side)) for r in pairs]
    both = [(c, r) for c, r in both if c is not None and r is not None]
    return {"prompts": len(prompts), "pairs": len(pairs), "pairs_off_policy": sum(r.off_policy for r in pairs),
            "pairs_per_prompt": round(len(pairs) / max(len(prompts), 1), 3),
            "cpu_s": round(cpu, 1), "wall_s": round(wall, 1),
            "pairs_per_cpu_min": round(60 * len(pairs) / cpu, 3) if cpu else None,
            "judge_calls": judge_scores, "parse_failure_rate": round(failures / judge_scores, 3) if judge_scores else None,
            "extra_candidates": extra, "verifiable_pairs": len(both),
            "chosen_verifies": round(sum(c >= 1 - 1e-9 for c, _ in both) / len(both), 3) if both else None,
            "chosen_not_worse": round(sum(c >= r for c, r in both) / len(both), 3) if both else None}


async def main_async(args) -> list[dict]:
    settings = Settings()
    backends = Backends(settings)
    evaluators = build_evaluators(backends, settings)
    default = load_objective(args.objective)
    sets = prompt_sets(args.sets.split(","), args.limit, Path(args.data))
    rows = []
    try:
        gen = backends.get(default.synthesis.generators[0])
        for name, prompts in sets.items():
            for config in args.configs.split(","):
                spec, gen.share_prompt, gen.batched = objective_for(config, default)
                row = {"set": name, "config": config, **await measure(prompts, spec, backends, evaluators)}
                print(" ".join(f"{k}={v}" for k, v in row.items()), file=sys.stderr, flush=True)
                rows.append(row)
    finally:
        await backends.close()
    return rows


def table(rows: list[dict]) -> None:
    cols = ["set", "config", "prompts", "pairs", "pairs_off_policy", "pairs_per_prompt", "cpu_s", "pairs_per_cpu_min",
            "parse_failure_rate", "extra_candidates", "verifiable_pairs", "chosen_verifies", "chosen_not_worse"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))


def headline(rows: list[dict]) -> dict:
    """Per set: the last configuration against ``before``."""
    out = {}
    for name in dict.fromkeys(r["set"] for r in rows):
        mine = [r for r in rows if r["set"] == name]
        first, last = mine[0], mine[-1]
        ratio = (last["pairs_per_cpu_min"] / first["pairs_per_cpu_min"]
                 if first["pairs_per_cpu_min"] and last["pairs_per_cpu_min"] else None)
        out[name] = {"from": first["config"], "to": last["config"],
                     "pairs_per_prompt": [first["pairs_per_prompt"], last["pairs_per_prompt"]],
                     "pairs_per_cpu_min_ratio": round(ratio, 2) if ratio else None}
    return out


def decode(repeat: int) -> dict:
    from statistics import median

    from agents.backends.llamacpp import LlamaCppGenerator
    from agents.synthesis.prompting import render_completion

    gen = LlamaCppGenerator(Settings())
    default = load_objective(None)
    prompt = next(read_prompts(ROOT / "examples" / "prompts.jsonl"))
    tokens = gen._tokens(render_completion(prompt, default.synthesis))
    d, out = gen._decoder, {}
    for n in (1, 4, 8):
        seq, bat = [], []
        for _ in range(repeat):
            d.decode_s = 0.0
            for s in range(n):
                d.generate(tokens, [s], 0.9, 0.95, 64, [], ignore_eos=True)
            seq.append(64 * n / d.decode_s)
            d.decode_s = 0.0
            d.generate(tokens, list(range(n)), 0.9, 0.95, 64, [], ignore_eos=True)
            bat.append(64 * n / d.decode_s)
        out[n] = {"sequential_tok_s": round(median(seq), 1), "batched_tok_s": round(median(bat), 1),
                  "ratio": round(median(bat) / median(seq), 2)}
        print(f"N={n}: sequential {out[n]['sequential_tok_s']} tok/s, batched {out[n]['batched_tok_s']} tok/s, "
              f"ratio {out[n]['ratio']}")
    d.close()
    return {"bench": "yield-decode", "prompt_tokens": len(tokens), "tokens_per_candidate": 64, "by_n": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default="bundled,gsm8k,ifeval")
    ap.add_argument("--limit", type=int, default=50, help="prompts per set (the bundled set has 14)")
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help=f"some of {','.join(CONFIGS)}, in order")
    ap.add_argument("--objective", default=None, help="an objective YAML (default: the bundled default objective)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--decode", action="store_true", help="generation alone: batched vs one by one")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if args.decode:
        print(json.dumps(decode(args.repeat)))
        return
    for c in args.configs.split(","):
        if c not in CONFIGS:
            sys.exit(f"unknown configuration {c!r}; known: {', '.join(CONFIGS)}")
    rows = asyncio.run(main_async(args))
    table(rows)
    print(json.dumps({"bench": "yield", "rows": rows, "headline": headline(rows)}))


if __name__ == "__main__":
    main()
