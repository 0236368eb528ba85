"""Code tests split into what the sandbox computes and what the worker judges.

A test (``Verification.tests``) is one ``assert``. The worker parses it; each operand of a
comparison that is a literal (``ast.literal_eval``: numbers, strings, tuples, lists, dicts,
sets, True/False/None) is an *expected value* and never leaves the worker; every other
operand is a *call*, an expression the sandbox evaluates after the solution's code and
returns as plain data. The comparison itself (``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=``,
``is``, ``is not``, ``in``, ``not in``, chained) runs here, on values rebuilt from that data.

Supported forms: ``assert CMP`` (any operands as above), ``assert f(...)`` and
``assert not f(...)`` (truthiness), and ``and`` of those. Because True/False/None and
truthiness are guessable, a result judged by them must come straight from a call of a name
that is not a builtin (the solution's own function), and no call may contain a comparison or
``and``/``or``/``not`` (that would be judged inside the sandbox, where the solution can
replace ``==``, ``isinstance``, ``math.isclose`` …). Anything else is unsupported: the
verifier then does not score the prompt rather than judge it where it can be faked.
"""
from __future__ import annotations

import ast
import builtins
import json
import operator
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 100
OPS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
       ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
       ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}
GUESSABLE = (bool, type(None))


class Unsupported(ValueError):
    """A test that cannot be split into sandboxed calls and worker-side expected values."""


@dataclass(frozen=True)
class Check:
    """``operands``: ("call", index into the calls) or ("value", expected); ``ops`` between
    them; ``truth``: for a single operand, the truthiness required."""

    operands: tuple[tuple[str, Any], ...]
    ops: tuple[Any, ...] = ()
    truth: bool = True


def _literal(node: ast.AST) -> tuple[bool, Any]:
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def _own_call(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and not hasattr(builtins, node.func.id))


def _call(node: ast.AST, calls: list[str], guessable: bool) -> tuple[str, int]:
    if any(isinstance(n, (ast.Compare, ast.BoolOp)) or (isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.Not))
           for n in ast.walk(node)):
        raise Unsupported("a comparison or and/or/not inside a call would be judged in the sandbox")
    if guessable and not _own_call(node):
        raise Unsupported("a result compared with True/False/None or judged by truthiness must be "
                          "a call of the solution's own function")
    calls.append(ast.unparse(node))
    return "call", len(calls) - 1


def _check(node: ast.AST, calls: list[str]) -> list[Check]:
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
        return [c for part in node.values for c in _check(part, calls)]
    if isinstance(node, ast.Compare):
        nodes = [node.left, *node.comparators]
        values = [_literal(n) for n in nodes]
        guessable = any(ok and isinstance(v, GUESSABLE) for ok, v in values)
        operands = tuple(("value", v) if ok else _call(n, calls, guessable)
                         for n, (ok, v) in zip(nodes, values))
        return [Check(operands, tuple(OPS[type(op)] for op in node.ops))]
    truth = True
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        node, truth = node.operand, False
    return [Check((_call(node, calls, guessable=True),), truth=truth)]


def split(test: str, calls: list[str]) -> list[Check]:
    """The checks of one test; its calls are appended to ``calls``. Raises ``Unsupported``."""
    try:
        tree = ast.parse(test)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        raise Unsupported(f"not Python: {type(e).__name__}") from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        raise Unsupported("a test must be a single assert statement")
    return _check(tree.body[0].test, calls)


def decode(data: Any, depth: int = 0) -> Any:
    """A sandbox result (JSON, tagged) back to builtin values; ValueError for anything else."""
    if depth > MAX_DEPTH:
        raise ValueError("nested too deeply")
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is list:
        return [decode(x, depth + 1) for x in data]
    if type(data) is dict and len(data) == 1:
        (tag, items), = data.items()
        if type(items) is list:
            if tag == "tuple":
                return tuple(decode(x, depth + 1) for x in items)
            if tag == "set":
                return {decode(x, depth + 1) for x in items}
            if tag == "dict" and all(type(p) is list and len(p) == 2 for p in items):
                return {decode(k, depth + 1): decode(v, depth + 1) for k, v in items}
    raise ValueError("not plain data")


def parse_report(stdout: bytes, count: int) -> list[tuple[bool, Any]] | None:
    """One (ok, value-or-error) per call that reported, in call order; None where the report
    is malformed (a line that is not a result, an index out of range or given twice)."""
    results: dict[int, tuple[bool, Any]] = {}
    for line in stdout.splitlines():
        try:
            item = json.loads(line)
            i = item["i"]
            if type(i) is not int or not 0 <= i < count or i in results or len(item) != 2:
                return None
            results[i] = (True, decode(item["value"])) if "value" in item else (False, str(item["error"])[:200])
        except (ValueError, TypeError, KeyError, RecursionError):
            return None
    return [results[i] for i in range(len(results))] if set(results) == set(range(len(results))) else None


def judge(checks: list[Check], results: list[tuple[bool, Any]]) -> tuple[bool, str]:
    """Whether every check of a test holds on the calls' results, and why not."""
    for check in checks:
        values = []
        for kind, x in check.operands:
            if kind == "value":
                values.append(x)
            elif x >= len(results):
                return False, "no result (the run ended before this call)"
            elif not results[x][0]:
                return False, results[x][1]
            else:
                values.append(results[x][1])
        try:
            if not check.ops:
                ok = bool(values[0]) == check.truth
            else:
                ok = all(op(a, b) for op, a, b in zip(check.ops, values, values[1:]))
        except (TypeError, ValueError, RecursionError) as e:
            return False, f"{type(e).__name__} comparing the result"
        if not ok:
            got = [repr(v)[:60] for (kind, _), v in zip(check.operands, values) if kind == "call"]
            return False, "wrong result: got " + ", ".join(got)
    return True, ""
