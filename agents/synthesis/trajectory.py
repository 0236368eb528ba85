"""Agent trajectories: branch points, the next action a model wrote, a built-in calculator
tool, and the deterministic roll-forward the outcome verifier uses.

A trajectory is ``Prompt.messages``: user turns, assistant turns (with OpenAI-shaped
``tool_calls``) and tool results. Branching at step ``k`` (the index of an assistant turn, or
``len(messages)`` past a history that ends without one) means: the prefix is
``messages[:k]``, and each candidate is the next assistant action from there. A candidate
made at step ``k`` carries ``intent="step:k"``.

Models write an action the way ``agents.synthesis.prompting`` renders one:
``[calls calc({"expr": "3 * 12"})]`` for a tool call, plain text for a final answer.
"""
from __future__ import annotations

import ast
import json
import operator
import re
from dataclasses import dataclass

from schemas import Candidate, Message, stable_id

STEP = "step:"
_CALL = re.compile(r"\[?\s*calls?\s*:?\s*([A-Za-z_]\w*)\s*\((.*)\)\s*\]?", re.S)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
        ast.USub: operator.neg, ast.UAdd: operator.pos}
MAX_EXPR = 200


def branch_steps(messages: list[Message], branch: str) -> list[int]:
    """The steps to branch at: assistant turn indices (after at least one user turn), plus the
    end of a history that does not end in an assistant turn."""
    first_user = next((i for i, m in enumerate(messages) if m.role == "user"), len(messages))
    points = [i for i, m in enumerate(messages) if m.role == "assistant" and i > first_user]
    if messages and messages[-1].role != "assistant":
        points.append(len(messages))
    if branch == "all":
        return points
    if not points:
        return []
    return [points[0]] if branch == "first" else [points[-1]]


def step_of(c: Candidate) -> int | None:
    """The step a candidate branches at, or None for a candidate of a whole response."""
    return int(c.intent[len(STEP):]) if c.intent and c.intent.startswith(STEP) else None


@dataclass(frozen=True)
class Action:
    """One assistant action: a tool call (``tool`` and ``args``) or a final answer (``text``)."""

    text: str
    tool: str | None = None
    args: dict | None = None
    raw_args: str = ""

    @property
    def is_call(self) -> bool:
        return self.tool is not None

    def message(self, call_id: str | None = None) -> Message:
        """The assistant turn in OpenAI shape (arguments as a JSON string)."""
        if not self.is_call:
            return Message(role="assistant", content=self.text)
        args = json.dumps(self.args) if self.args is not None else self.raw_args
        cid = call_id or "call_" + stable_id(self.tool, args, size=12)
        return Message(role="assistant", content=self.text, tool_calls=[
            {"id": cid, "type": "function", "function": {"name": self.tool, "arguments": args}}])


def parse_action(text: str) -> Action:
    """The action a model's text states: the first ``[calls name(args)]`` (args JSON, or a bare
    expression for ``calc``), else the text as a final answer."""
    m = _CALL.search(text)
    if m is None:
        return Action(text=text.strip())
    name, raw = m.group(1), m.group(2).strip()
    before = text[:m.start()].strip()
    return Action(text=before, tool=name, args=_arguments(name, raw), raw_args=raw)


def _arguments(name: str, raw: str) -> dict | None:
    """JSON arguments, else a Python-literal dict (``{'expr': '2*3'}``), else for ``calc`` the
    bare expression; None where none of these reads as an object."""
    if not raw:
        return {}
    for read in (json.loads, ast.literal_eval):
        try:
            args = read(raw)
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            continue
        if isinstance(args, dict):
            return args
        break
    return {"expr": raw.strip("'\"")} if name == "calc" else None


def action_of(m: Message) -> Action:
    """The action an assistant turn of a trajectory states."""
    if not m.tool_calls:
        return Action(text=(m.content or "").strip())
    fn = m.tool_calls[0].get("function", {})
    raw = fn.get("arguments", "")
    try:
        args = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (ValueError, TypeError):
        args = None
    return Action(text=(m.content or "").strip(), tool=fn.get("name"), args=args if isinstance(args, dict) else None,
                  raw_args=raw if isinstance(raw, str) else json.dumps(raw))


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent too large")
        return _OPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))
    raise ValueError(f"unsupported expression element {type(node).__name__}")


def calc(expr: str) -> str:
    """The built-in calculator: + - * / // % ** and parentheses over numbers; the result as
    text (an integer where it is one), or ``error: …``."""
    expr = str(expr).replace("×", "*").replace("÷", "/").replace(",", "")
    if len(expr) > MAX_EXPR:
        return f"error: expression longer than {MAX_EXPR} characters"
    try:
        value = _eval(ast.parse(expr.strip(), mode="eval"))
    except ZeroDivisionError:
        return "error: division by zero"
    except (SyntaxError, ValueError, TypeError, OverflowError) as e:
        return f"error: {e}"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(round(value, 6) if isinstance(value, float) else value)


TOOLS = {"calc": lambda args: calc(args.get("expr", ""))}


def run_tool(a: Action) -> str:
    """A tool call's result, as the tool message's content (errors are results too)."""
    if a.tool not in TOOLS:
        return f"error: unknown tool {a.tool!r}"
    if a.args is None:
        return f"error: arguments are not a JSON object: {a.raw_args[:80]!r}"
    return TOOLS[a.tool](a.args)


def tool_message(a: Action, call_id: str, result: str) -> Message:
    return Message(role="tool", name=a.tool, tool_call_id=call_id, content=result)
