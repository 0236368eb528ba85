"""Agent trajectories: branch points, action parsing, the calculator, the outcome-level and
process-level verifiers, step-level instantiation and the TRL rows it yields."""
from __future__ import annotations

import asyncio
import json

import pytest

from agents import evaluate, instantiate, synthesize
from agents.backends.echo import EchoGenerator
from agents.evaluators import build_evaluators
from agents.evaluators.trajectory import OutcomeVerifier, ProcessVerifier, roll_forward
from agents.synthesis.trajectory import branch_steps, calc, parse_action
from schemas import (Candidate, CandidateSet, Curated, EvaluationSpec, EvaluatorSpec, GeneratorSpec, Message,
                     ObjectiveSpec, Prompt, Sampling, SynthesisSpec, Verification)
from streams.commands.tap.formats import get
from streams.commands.serving.inputs import read_prompts


def call(expr: str, cid: str) -> Message:
    return Message(role="assistant", content="", tool_calls=[
        {"id": cid, "type": "function", "function": {"name": "calc", "arguments": json.dumps({"expr": expr})}}])


EGGS = [Message(role="system", content="Use calc."),
        Message(role="user", content="A box holds 12 eggs. Tom buys 3 boxes and breaks 4. How many are whole?"),
        call("3 * 12", "a"), Message(role="tool", name="calc", tool_call_id="a", content="36"),
        call("36 - 4", "b"), Message(role="tool", name="calc", tool_call_id="b", content="32"),
        Message(role="assistant", content="The answer is 32.")]
PROMPT = Prompt(id="p-eggs", messages=EGGS, verification=Verification(kind="math", answer="32"))
OBJ = ObjectiveSpec(name="agent", synthesis=SynthesisSpec(branch="all"),
                    evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="outcome", weight=3.0),
                                                          EvaluatorSpec(name="process"), EvaluatorSpec(name="math")],
                                              features=[], guards=[]))


def cand(i: int, text: str, step: int | None) -> Candidate:
    return Candidate(id=f"c{i}", text=text, backend="echo", model="echo",
                     intent=None if step is None else f"step:{step}",
                     sampling=Sampling(temperature=1, top_p=1, max_tokens=8))


def test_branch_steps_are_assistant_turns_or_the_open_end():
    assert branch_steps(EGGS, "all") == [2, 4, 6]
    assert branch_steps(EGGS, "first") == [2] and branch_steps(EGGS, "last") == [6]
    assert branch_steps(EGGS[:4], "all") == [2, 4]  # ends on a tool result: the next action is a step too
    assert branch_steps([Message(role="system", content="x")], "all") == [1]


@pytest.mark.parametrize("text,tool,args", [
    (' [calls calc({"expr": "3 * 12"})]', "calc", {"expr": "3 * 12"}),
    ("Let me see [calls calc(12*3)]", "calc", {"expr": "12*3"}),
    (" The answer is 32.", None, None),
    (' [calls calc({"expr": "2 + "})', "calc", {"expr": "2 + "}),
])
def test_parse_action(text, tool, args):
    a = parse_action(text)
    assert (a.tool, a.args) == (tool, args)
    m = a.message()
    assert m.role == "assistant" and (m.tool_calls is not None) == (tool is not None)
    if tool:
        assert json.loads(m.tool_calls[0]["function"]["arguments"]) == args


@pytest.mark.parametrize("expr,out", [("3 * 12", "36"), ("7 / 2", "3.5"), ("(2 + 3) ** 2", "25"), ("1,200 - 1", "1199"),
                                      ("1/0", "error: division by zero"), ("__import__('os')", "error:"),
                                      ("2 ** 999", "error: exponent too large")])
def test_calculator_is_safe_arithmetic(expr, out):
    assert calc(expr).startswith(out)


def test_roll_forward_follows_the_reference_while_the_state_matches_then_answers_with_the_last_result():
    on_path, path = roll_forward(EGGS, 2, parse_action('[calls calc({"expr": "12 * 3"})]'))
    assert on_path == "The answer is 32." and "(reference)" in path
    off_path, _ = roll_forward(EGGS, 2, parse_action('[calls calc({"expr": "12 + 3"})]'))
    assert off_path == "The answer is 15."
    in_one_go, _ = roll_forward(EGGS, 2, parse_action('[calls calc({"expr": "3 * 12 - 4"})]'))
    assert in_one_go == "The answer is 32."
    broken, _ = roll_forward(EGGS, 4, parse_action('[calls calc({"expr": "36 -"})]'))
    assert broken.startswith("The answer is error")


def test_outcome_and_process_verifiers_judge_steps():
    cands = [cand(0, '[calls calc({"expr": "3 * 12"})]', 2), cand(1, '[calls calc({"expr": "12 + 3"})]', 2),
             cand(2, '[calls calc({"expr": "4 * 3 * 3 - 4"})]', 2), cand(3, "The answer is 36.", 2),
             cand(4, '[calls calc({"expr": "36 - 4"})]', 4), cand(5, "[calls sqrt(4)]", 4),
             cand(6, "The answer is 32.", 6), cand(7, "It is 32", None)]
    outcome = asyncio.run(OutcomeVerifier().score(PROMPT, cands, OBJ))
    process = asyncio.run(ProcessVerifier().score(PROMPT, cands, OBJ))
    assert [s.value for s in outcome] == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0]
    assert [s.value for s in process] == [1.0, 0.3, 1.0, 0.0, 1.0, 0.0, 1.0, None]
    assert "rolled forward" in outcome[0].rationale and "unknown tool" in process[5].rationale


def test_evaluate_leaves_tool_calls_to_the_trajectory_verifiers():
    cands = [cand(0, '[calls calc({"expr": "3 * 12"})]', 2), cand(1, "The answer is 36.", 2)]
    cset = CandidateSet(id="s-1", prompt=PROMPT, objective=OBJ, candidates=cands)
    [emit] = asyncio.run(evaluate.process(cset, build_evaluators(None)))
    call_scores = {s.evaluator: s for s in emit.value.judged[0].scores}
    assert call_scores["math"].value is None and "tool call" in call_scores["math"].error
    assert call_scores["outcome"].value == 1.0
    assert {s.evaluator: s.value for s in emit.value.judged[1].scores}["math"] == 0.0
    assert emit.value.judged[0].score > emit.value.judged[1].score


def test_step_level_pairs_share_the_prefix_and_carry_their_step():
    cands = [cand(0, '[calls calc({"expr": "3 * 12"})]', 2), cand(1, "The answer is 9.", 2),
             cand(2, '[calls calc({"expr": "36 - 4"})]', 4), cand(3, '[calls calc({"expr": "36 - 3"})]', 4),
             cand(4, "The answer is 32.", 6), cand(5, "The answer is 32.", 6)]
    cset = CandidateSet(id="s-2", prompt=PROMPT, objective=OBJ, candidates=cands)
    [emit] = asyncio.run(evaluate.process(cset, build_evaluators(None)))
    *records, outcome = instantiate.process(emit.value)
    pairs = [e.value for e in records]
    assert sorted(p.step for p in pairs) == [2, 4]
    for p in pairs:
        assert p.prompt == EGGS[:p.step]  # the identical prefix, up to the turn it branches at
        assert p.chosen[0].tool_calls and p.chosen[0].role == "assistant"
    assert outcome.value.record_ids == [p.id for p in pairs]
    assert "step 6: all scored candidates tie" in outcome.value.reason
    row = get("trl-dpo").row(pairs[0])
    assert row["step"] == 2 and row["prompt"][-1]["role"] == "user"
    assert row["chosen"][0]["tool_calls"][0]["function"]["arguments"] == {"expr": "3 * 12"}
    later = get("trl-dpo").row(pairs[1])
    assert later["prompt"][3] == {"role": "tool", "content": "36", "tool_call_id": "a", "name": "calc"}
    assert "[calls calc(" in get("trl-dpo", "standard").row(pairs[1])["prompt"]


def test_the_steps_of_a_branched_trajectory_are_asked_side_by_side_with_the_sequential_positions():
    asked: list[int] = []  # the prefix length (= the step) of each request, as it arrives
    all_in = asyncio.Event()

    class Held(EchoGenerator):
        """Answers only once every step's requests have arrived: one after another, the first
        step would wait for the others forever (bounded below)."""

        async def generate(self, req):
            asked.append(len(req.messages))
            if len(asked) == 6:  # two generators × three steps
                all_in.set()
            await all_in.wait()
            return await super().generate(req)

    class Backends:
        def get(self, spec):
            return Held(spec.model)

    gens = [GeneratorSpec(model="a", count=1), GeneratorSpec(model="b")]  # 1 + 2: a block of 3 per step
    obj = ObjectiveSpec(name="agent", synthesis=SynthesisSpec(branch="all", candidates=3, generators=gens,
                                                              prompting="chat"))
    run = synthesize.process(Curated(prompt=PROMPT, objective=obj), Backends())
    [emit] = asyncio.run(asyncio.wait_for(run, 5))
    cands = emit.value.candidates
    assert sorted(asked) == [2, 2, 4, 4, 6, 6]  # both generators' requests of all three steps
    seed = synthesize.base_seed(PROMPT.id, obj.ref, 0)
    # step i's block is i * 3 on, generator a first: as when the steps ran one after another
    assert [(c.intent, c.model, c.sampling.seed - seed) for c in cands] == [
        (f"step:{k}", m, 3 * i + j) for i, k in enumerate((2, 4, 6)) for j, m in enumerate("abb")]
    assert len({c.id for c in cands}) == 9


def test_the_example_trajectories_parse_and_their_references_verify():
    prompts = list(read_prompts("examples/agent/trajectories.jsonl"))
    assert len(prompts) >= 6
    for p in prompts:
        assert p.messages[-1].role == "assistant" and p.verification.answer
        first = branch_steps(p.messages, "first")[0]
        final, _ = roll_forward(p.messages, first, parse_action(
            "[calls " + p.messages[first].tool_calls[0]["function"]["name"] + "("
            + p.messages[first].tool_calls[0]["function"]["arguments"] + ")]"))
        scores = asyncio.run(OutcomeVerifier().score(p, [cand(0, final, None)], OBJ))
        assert scores[0].value == 1.0, (p.id, final)


class Scripted:
    """A generator that writes the given next actions in turn, recording the transcripts it saw
    (the loop is what is tested here; benchmarks/agent_steps.py rolls forward with the real model)."""

    backend, model = "scripted", "scripted"

    def __init__(self, *texts: str) -> None:
        self.texts, self.seen = list(texts), []

    async def generate(self, req):
        self.seen.append(req)
        from agents.backends.base import Generation

        return [Generation(text=self.texts.pop(0))]


def test_model_roll_forward_runs_tools_and_asks_the_policy_for_each_next_action():
    from agents.evaluators.trajectory import model_roll_forward

    spec = ObjectiveSpec(name="a", synthesis=SynthesisSpec(prompting="completion", stop=["\n"]))
    gen = Scripted(' [calls calc({"expr": "36 - 4"})]', " The answer is 32.")
    final, path = asyncio.run(model_roll_forward(gen, PROMPT, 2, parse_action('[calls calc({"expr": "3*12"})]'), spec))
    assert final == "The answer is 32." and path[0].endswith("-> 36") and path[1].endswith("-> 32")
    assert gen.seen[0].temperature == 0.0 and gen.seen[0].stop == ["\n"]
    assert gen.seen[0].prompt.endswith("Tool result (calc): 36\nAssistant:")
    assert "Tool result (calc): 32\nAssistant:" in gen.seen[1].prompt
    endless = Scripted(*['[calls calc({"expr": "1+1"})]'] * 3)
    final, path = asyncio.run(model_roll_forward(endless, PROMPT, 2, parse_action("[calls calc(1)]"), spec,
                                                 max_steps=3))
    assert final is None and "no final answer within 3 steps" in path[-1]


def test_arguments_written_as_a_python_dict_or_a_bare_expression_still_parse():
    assert parse_action("[calls calc({'expr': '2*3'})]").args == {"expr": "2*3"}
    assert parse_action("[calls calc(2*3)]").args == {"expr": "2*3"}
    assert parse_action("[calls lookup(42)]").args is None  # not an object, and no calculator to read it
    assert parse_action("[calls calc(36)]").args == {"expr": "36"}
