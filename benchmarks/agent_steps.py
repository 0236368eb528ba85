"""Do step-level pairs prefer the step that leads somewhere? For every pair in a
`prefstream run` output of the example calculator agent, the chosen and the rejected next
action are each rolled forward to a final answer two ways and checked by the math verifier:

- reference: the deterministic roll-forward the `outcome` verifier uses (the built-in
  calculator runs tool calls; the reference's next step while the results match it, else
  "the answer is <last result>") — the pairs were chosen by it, so this is a consistency check;
- model: the policy itself (the bundled Gemma 3 270M, greedy) writes every later action from
  the transcript, tool calls run on the calculator — independent of how the pair was chosen.

Usage:

    prefstream run --input examples/agent/trajectories.jsonl --objective examples/agent/objective.yaml --out out/agent
    python benchmarks/agent_steps.py --out out/agent

Prints one line per pair, then one JSON line: {"bench": "agent_steps", "pairs", "reference": {"chosen",
"rejected"}, "model": {"chosen", "rejected"}} (counts of pairs whose side ends verified).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.backends.llamacpp import LlamaCppGenerator  # noqa: E402
from agents.evaluators.math import MathVerifier  # noqa: E402
from agents.evaluators.trajectory import model_roll_forward, roll_forward  # noqa: E402
from agents.synthesis.trajectory import action_of  # noqa: E402
from schemas import Message  # noqa: E402
from streams.commands.serving.inputs import read_prompts  # noqa: E402
from agents.objectives import load_objective  # noqa: E402
from streams.settings import load  # noqa: E402

EXAMPLE = ROOT / "examples" / "agent"


def verified(prompt, final: str | None) -> bool:
    return final is not None and MathVerifier().check(prompt.verification.answer, final).value == 1.0


async def main(out: Path, max_steps: int) -> dict:
    prompts = {p.id: p for p in read_prompts(EXAMPLE / "trajectories.jsonl")}
    objective = load_objective(EXAMPLE / "objective.yaml")
    gen = LlamaCppGenerator(load({}))
    records = [json.loads(line) for line in (out / "preferences.jsonl").open()]
    counts = {"reference": {"chosen": 0, "rejected": 0}, "model": {"chosen": 0, "rejected": 0}}
    for r in records:
        p, step = prompts[r["prompt_id"]], r["step"]
        line = [f"{p.id:14s} step {step}"]
        for side in ("chosen", "rejected"):
            action = action_of(msgspec.convert(r[side][0], Message))
            ref, _ = roll_forward(p.messages, step, action)
            model, path = await model_roll_forward(gen, p, step, action, objective, max_steps, max_tokens=24)
            counts["reference"][side] += verified(p, ref)
            counts["model"][side] += verified(p, model)
            line.append(f"{side}: ref {'ok' if verified(p, ref) else '--'} model {'ok' if verified(p, model) else '--'}"
                        f" ({' → '.join(path)[:70]})")
        print(" | ".join(line))
    await gen.close()
    return {"bench": "agent_steps", "pairs": len(records), **counts}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="the output directory of the run")
    ap.add_argument("--max-steps", type=int, default=4, help="actions the model may take per roll-out")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(main(args.out, args.max_steps))))
