"""Agentic settings end to end: the example calculator-agent objective and trajectories through
`prefstream run` on the real CPU model. Step-level pairs share the identical prefix, carry
their step, and the chosen next action leads to a verified final answer more often than the
rejected one: rolled forward again here both by the outcome verifier's deterministic
roll-forward and, independently of how the pairs were chosen, by the model itself (greedy,
tool calls run on the built-in calculator), each final answer checked by the math verifier."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from agents.backends.llamacpp import LlamaCppGenerator
from agents.evaluators.math import MathVerifier
from agents.evaluators.trajectory import model_roll_forward, roll_forward
from agents.synthesis.trajectory import action_of, branch_steps
from schemas import Message
from schemas.preferences import message_dict
from streams.commands.serving.inputs import read_prompts
from agents.objectives import load_objective
from streams.settings import load
from tests.conftest import ROOT, settings_env

pytestmark = pytest.mark.model
EXAMPLE = ROOT / "examples" / "agent"


def verified(prompt, final: str | None) -> bool:
    return final is not None and MathVerifier().check(prompt.verification.answer, final).value == 1.0


def leads_to_verified(prompt, step: int, turn: dict) -> bool:
    """Roll the trajectory forward from this next action and verify the final answer."""
    final, _ = roll_forward(prompt.messages, step, action_of(msgspec.convert(turn, Message)))
    return verified(prompt, final)


async def model_verified(prompts, records) -> dict[str, int]:
    """How many chosen / rejected sides end verified when the model itself continues."""
    gen, objective = LlamaCppGenerator(load({})), load_objective(EXAMPLE / "objective.yaml")
    counts = {"chosen": 0, "rejected": 0}
    try:
        for r in records:
            p = prompts[r["prompt_id"]]
            for side in counts:
                action = action_of(msgspec.convert(r[side][0], Message))
                final, _ = await model_roll_forward(gen, p, r["step"], action, objective, max_steps=4)
                counts[side] += verified(p, final)
    finally:
        await gen.close()
    return counts


def test_example_agent_objective_runs_end_to_end(settings, tmp_path: Path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "streams.commands.cli", "run", "--input", str(EXAMPLE / "trajectories.jsonl"),
           "--objective", str(EXAMPLE / "objective.yaml"), "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd, cwd=ROOT, env=settings_env(settings), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    prompts = {p.id: p for p in read_prompts(EXAMPLE / "trajectories.jsonl")}
    steps = {pid: branch_steps(p.messages, "all") for pid, p in prompts.items()}
    assert summary["prompts"] == len(prompts) and summary["dead_letters"] == 0
    assert summary["candidates"] == 3 * sum(len(s) for s in steps.values())  # 3 next actions per branch step
    assert summary["objective"] == "agent-calc@1"

    records = [json.loads(line) for line in (out / "preferences.jsonl").open()]
    assert len(records) >= 4, summary
    assert len({(r["prompt_id"], r["step"]) for r in records}) == len(records)  # best-vs-worst: one per step
    chosen_ok = rejected_ok = 0
    for r in records:
        p, step = prompts[r["prompt_id"]], r["step"]
        assert step in steps[p.id] and p.messages[step].role == "assistant"
        # the identical prefix: the trajectory up to the turn the pair branches at, tool turns included
        assert r["prompt"] == [message_dict(m) for m in p.messages[:step]]
        assert [m["role"] for m in r["chosen"]] == [m["role"] for m in r["rejected"]] == ["assistant"]
        assert r["chosen"] != r["rejected"] and r["score_chosen"] - r["score_rejected"] >= 0.2 - 1e-9
        good, bad = leads_to_verified(p, step, r["chosen"][0]), leads_to_verified(p, step, r["rejected"][0])
        assert good >= bad, r
        chosen_ok, rejected_ok = chosen_ok + good, rejected_ok + bad
    by_model = asyncio.run(model_verified(prompts, records))
    print(f"{len(records)} step-level pairs; chosen / rejected leads to a verified answer: rolled forward "
          f"deterministically {chosen_ok} / {rejected_ok}, by the model {by_model['chosen']} / {by_model['rejected']}")
    assert chosen_ok > rejected_ok
    assert by_model["chosen"] > by_model["rejected"]
    assert any(m.get("tool_calls") for r in records for m in r["chosen"] + r["rejected"])  # not only final answers
