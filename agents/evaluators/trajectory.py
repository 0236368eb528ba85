"""Judging agent steps: ``outcome`` (outcome-level) and ``process`` (process-level).

Both need a prompt whose ``verification`` is ``math`` with a reference answer, and apply to
candidates made by branching a trajectory (``intent="step:k"``, see ``agents.synthesis.trajectory``).

**outcome**: does the trajectory, continued from this candidate's action, end in a verified
final answer? The continuation is deterministic, with no model: a tool call is executed by
the built-in tool (``calc``); while every result equals the result the reference trajectory
got at the same point, the agent is in the reference's state, so the reference's next
action is taken (it is valid there: it depends only on what was observed); once a result
differs (off the reference path) or the reference has no next step, the agent answers with
its last result ("the answer is R"). A final answer is checked by the math verifier. So a
step that computes the right intermediate value, or the final value in one go, scores 1; a
wrong, failing or malformed step scores 0. It underestimates a valid step off the reference's
route (another order of the same computation), never overestimates a wrong one. On a whole
response (no step) it is the math verifier. With ``params: {policy: model}`` the continuation
is the policy's own instead: the objective's first generator writes each next action greedily
(temperature 0) from the transcript so far, tool calls run on the built-in tools, up to
``max_steps`` actions (a Monte Carlo estimate of the step's value with one greedy rollout).

**process**: the step on its own, against the reference trajectory: a final answer scores as
the math verifier says; a tool call that fails (unknown tool, bad arguments, a bad
expression) 0; one whose result the reference also computes at or after this step (or that
equals the reference answer) 1; one that runs but computes nothing the reference uses
``OFF_PATH`` (a legal but unhelpful step).
"""
from __future__ import annotations

import msgspec

from agents.backends.base import GenRequest
from agents.evaluators.base import params_of
from agents.evaluators.math import MathVerifier, answers_match
from agents.synthesis.prompting import chat_messages, render_completion
from agents.synthesis.trajectory import Action, action_of, parse_action, run_tool, step_of, tool_message
from schemas import Candidate, Message, ObjectiveSpec, Prompt, Score

MAX_STEPS = 8
OFF_PATH = 0.3


def same_value(a: str, b: str) -> bool:
    a, b = (a or "").strip(), (b or "").strip()
    if a == b:
        return True
    try:
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    except ValueError:
        return False


def _next_assistant(messages: list[Message], after: int) -> int | None:
    return next((i for i in range(after, len(messages)) if messages[i].role == "assistant"), None)


def roll_forward(messages: list[Message], step: int, action: Action) -> tuple[str | None, list[str]]:
    """``(final answer text or None, the path taken)`` from ``action`` taken at ``step``."""
    pos: int | None = step  # the reference turn this action stands in for; None: off the path
    path: list[str] = []
    for _ in range(MAX_STEPS):
        if not action.is_call:
            path.append(f"answer {action.text!r}")
            return action.text, path
        result = run_tool(action)
        path.append(f"{action.tool}({action.raw_args or action.args}) -> {result}")
        ref = messages[pos + 1] if pos is not None and pos + 1 < len(messages) else None
        if ref is not None and ref.role == "tool" and same_value(result, ref.content or ""):
            pos = _next_assistant(messages, pos + 2)
            if pos is not None:
                action = action_of(messages[pos])
                path.append("(reference)")
                continue
        pos = None
        action = Action(text=f"The answer is {result}.")
    return None, path + [f"no final answer within {MAX_STEPS} steps"]


async def model_roll_forward(generator, prompt: Prompt, step: int, action: Action, objective: ObjectiveSpec,
                             max_steps: int = MAX_STEPS, max_tokens: int | None = None) -> tuple[str | None, list[str]]:
    """The policy's own continuation from ``action`` at ``step``: greedy next actions from the
    transcript so far, tool calls run on the built-in tools."""
    spec, history, path = objective.synthesis, list(prompt.messages[:step]), []
    gen = spec.generators[0]
    for i in range(max_steps):
        if not action.is_call:
            path.append(f"answer {action.text!r}")
            return action.text, path
        cid = f"call_rollout_{i}"
        result = run_tool(action)
        path.append(f"{action.tool}({action.raw_args or action.args}) -> {result}")
        history += [action.message(cid), tool_message(action, cid, result)]
        now = msgspec.structs.replace(prompt, messages=history)
        common = dict(n=1, temperature=0.0, top_p=1.0, max_tokens=max_tokens or gen.max_tokens, seed=spec.seed,
                      stop=list(spec.stop))
        req = (GenRequest(prompt=render_completion(now, spec), **common) if spec.prompting == "completion"
               else GenRequest(messages=chat_messages(now), **common))
        [g] = await generator.generate(req)
        action = parse_action(g.text)
    return None, path + [f"no final answer within {max_steps} steps"]


class _TrajectoryEvaluator:
    kind = "verifier"
    name = ""

    def __init__(self, backends=None) -> None:
        self.math = MathVerifier()
        self.backends = backends

    def applies(self, prompt: Prompt) -> bool:
        return self.math.applies(prompt)

    async def score(self, prompt: Prompt, candidates: list[Candidate], objective: ObjectiveSpec) -> list[Score]:
        if not self.applies(prompt):
            return [Score(evaluator=self.name, kind=self.kind, value=None, error="no math reference answer")
                    for _ in candidates]
        out = []
        for c in candidates:
            try:
                out.append(await self.one(prompt, c, objective))
            except Exception as e:  # a checker bug must not stop the stage
                out.append(Score(evaluator=self.name, kind=self.kind, value=None, error=f"{type(e).__name__}: {e}"))
        return out

    def verdict(self, reference: str, text: str, why: str) -> Score:
        s = self.math.check(reference, text)
        return Score(evaluator=self.name, kind=self.kind, value=s.value, raw=s.raw, rationale=f"{why}; {s.rationale}")


class OutcomeVerifier(_TrajectoryEvaluator):
    name = "outcome"
    waits = True  # policy "model" rolls each step forward with the model

    async def one(self, prompt: Prompt, c: Candidate, objective: ObjectiveSpec) -> Score:
        reference = prompt.verification.answer
        step = step_of(c)
        if step is None:
            return self.verdict(reference, c.text, "a whole response")
        params = params_of(objective, self.name)
        if params.get("policy", "reference") == "model":
            if self.backends is None:
                raise RuntimeError("outcome policy 'model' needs the model backends")
            gen = self.backends.get(objective.synthesis.generators[0])
            final, path = await model_roll_forward(gen, prompt, step, parse_action(c.text), objective,
                                                   int(params.get("max_steps", MAX_STEPS)))
        else:
            final, path = roll_forward(prompt.messages, step, parse_action(c.text))
        if final is None:
            return Score(evaluator=self.name, kind=self.kind, value=0.0, rationale="; ".join(path))
        return self.verdict(reference, final, "rolled forward: " + " → ".join(path))


class ProcessVerifier(_TrajectoryEvaluator):
    name = "process"

    async def one(self, prompt: Prompt, c: Candidate, objective: ObjectiveSpec) -> Score:
        step = step_of(c)
        if step is None:
            return Score(evaluator=self.name, kind=self.kind, value=None, error="not a trajectory step")
        reference, action = prompt.verification.answer, parse_action(c.text)
        if not action.is_call:
            return self.verdict(reference, action.text, f"step {step} is a final answer")
        result = run_tool(action)
        where = f"step {step}: {action.tool}({action.raw_args}) -> {result}"
        if result.startswith("error:"):
            return Score(evaluator=self.name, kind=self.kind, value=0.0, raw=result, rationale=where)
        seen = [m.content or "" for m in prompt.messages[step:] if m.role == "tool"]
        on_path = any(same_value(result, r) for r in seen) or _matches(reference, result)
        value = 1.0 if on_path else OFF_PATH
        why = "a value the reference computes" if on_path else "a value the reference never uses"
        return Score(evaluator=self.name, kind=self.kind, value=value, raw=result, rationale=f"{where}: {why}")


def _matches(reference: str, result: str) -> bool:
    try:
        return answers_match(reference, result)
    except Exception:  # noqa: BLE001 - an unparsable result is simply no match
        return False
