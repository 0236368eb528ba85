"""The JSON-schema verifier: is the response JSON, valid against the prompt's schema?

The JSON is the whole response, else the longest fenced ``json`` (or unlabelled) block,
else the first ``{...}`` or ``[...]`` value in the text. Score 1.0 where it parses and
validates, 0.0 where it does not (the rationale says why: no JSON, or the first validation
error and where); a schema that is itself invalid leaves the candidate unscored.

The schema comes from a client, the response from a model, so checking is bounded: a ``$ref``
is resolved only inside the schema (nothing is fetched: a remote or file reference leaves the
set unscored); ``pattern`` and ``patternProperties`` run on the ``regex`` module under one time
budget per candidate (jsonschema's own keywords call ``re``, which cannot be interrupted: its
keyword modules are given a ``search`` that keeps the budget); a response that runs past the
budget or nests past the recursion limit scores 0.0, never unscored, so it cannot dodge the
verdict. Candidates are checked in a worker thread, off the event loop.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
import types
from typing import Any

import regex
import referencing
import referencing.exceptions
from jsonschema import _keywords, _utils  # noqa: PLC2701 - their `re.search` is replaced (see below)
from jsonschema import exceptions as js_exceptions
from jsonschema import validators

from schemas import Candidate, ObjectiveSpec, Prompt, Score

log = logging.getLogger(__name__)

BUDGET_S = 1.0  # pattern matching per candidate, all patterns together


class _Budget(threading.local):
    deadline = float("inf")


_budget = _Budget()


def _search(pattern: str, string: str):
    """``re.search`` as jsonschema calls it, on ``regex`` with what is left of the budget
    (``TimeoutError`` past it). Outside a check (no budget set) it is ``re.search``."""
    if _budget.deadline == float("inf"):
        return re.search(pattern, string)
    left = _budget.deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("pattern budget spent")
    return regex.search(pattern, string, timeout=left, concurrent=True)


# jsonschema 4.26 calls `re.search` for pattern, patternProperties, and additional/unevaluated
# properties next to patternProperties: all four go through the budgeted search
_keywords.re = _utils.re = types.SimpleNamespace(search=_search)


def _refuse(uri: str):
    raise referencing.exceptions.NoSuchResource(ref=uri)


def _registry() -> referencing.Registry:
    return referencing.Registry(retrieve=_refuse)  # type: ignore[call-arg]


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.S)
_NOTHING = object()


def _first_value(text: str) -> Any:
    decoder = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch in "{[":
            try:
                return decoder.raw_decode(text, i)[0]
            except ValueError:
                continue
    return _NOTHING


def extract_json(text: str) -> Any:
    """The JSON value a response gives, or ``_NOTHING``."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    for group in ([b for lang, b in blocks if lang == "json"], [b for lang, b in blocks if not lang]):
        for body in sorted(group, key=len, reverse=True):
            try:
                return json.loads(body)
            except ValueError:
                continue
    return _first_value(text)


class JsonSchemaVerifier:
    """1.0 where the response's JSON validates against ``Verification.json_schema``."""

    name = "json_schema"
    kind = "verifier"

    def applies(self, prompt: Prompt) -> bool:
        v = prompt.verification
        return v is not None and v.kind == "json_schema" and v.json_schema is not None

    def check(self, schema: dict[str, Any], text: str) -> Score:
        try:
            cls = validators.validator_for(schema)
            cls.check_schema(schema)
        except js_exceptions.SchemaError as e:
            return self._none(f"invalid schema: {e.message[:200]}")
        except RecursionError:
            return self._none("invalid schema: nested past the recursion limit")
        try:
            value = extract_json(text)
        except RecursionError:
            return self._score(0.0, "response JSON nested past the recursion limit")
        if value is _NOTHING:
            return self._score(0.0, "no JSON value found in the response")
        _budget.deadline = time.monotonic() + BUDGET_S
        try:
            error = js_exceptions.best_match(cls(schema, registry=_registry()).iter_errors(value))
        except referencing.exceptions.Unresolvable as e:
            return self._none(f"schema reference {str(e)[:160]} is not in the schema; nothing is fetched")
        except (regex.error, re.error) as e:
            return self._none(f"schema pattern does not compile: {e}")
        except TimeoutError:
            return self._score(0.0, f"patterns took over {BUDGET_S:g}s on this response")
        except RecursionError:
            return self._score(0.0, "response nested past the recursion limit")
        finally:
            _budget.deadline = float("inf")
        if error is None:
            return self._score(1.0, "valid")
        where = "/".join(str(p) for p in error.absolute_path)[:100] or "(root)"
        return self._score(0.0, f"invalid at {where}: {error.message[:200]}")

    def check_all(self, schema: dict[str, Any], texts: list[str]) -> list[Score]:
        return [self.check(schema, t) for t in texts]

    async def score(self, prompt: Prompt, candidates: list[Candidate],
                    objective: ObjectiveSpec) -> list[Score]:
        if not self.applies(prompt):
            return [self._none("no json schema") for _ in candidates]
        schema = prompt.verification.json_schema  # type: ignore[union-attr]
        return await asyncio.to_thread(self.check_all, schema, [c.text for c in candidates])

    def _score(self, value: float, rationale: str) -> Score:
        return Score(evaluator=self.name, kind=self.kind, value=value, raw=value, rationale=rationale)

    def _none(self, error: str) -> Score:
        return Score(evaluator=self.name, kind=self.kind, value=None, error=error)
