"""The JSON-schema verifier: is the response JSON, valid against the prompt's schema?

The JSON is the whole response, else the longest fenced ``json`` (or unlabelled) block,
else the first ``{...}`` or ``[...]`` value in the text. Score 1.0 where it parses and
validates, 0.0 where it does not (the rationale says why: no JSON, or the first validation
error and where); a schema that is itself invalid leaves the candidate unscored.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Any

from jsonschema import exceptions as js_exceptions
from jsonschema import validators

from schemas import Candidate, ObjectiveSpec, Prompt, Score

log = logging.getLogger(__name__)

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
        cls = validators.validator_for(schema)
        try:
            cls.check_schema(schema)
        except js_exceptions.SchemaError as e:
            return self._none(f"invalid schema: {e.message}")
        value = extract_json(text)
        if value is _NOTHING:
            return self._score(0.0, "no JSON value found in the response")
        error = js_exceptions.best_match(cls(schema).iter_errors(value))
        if error is None:
            return self._score(1.0, "valid")
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return self._score(0.0, f"invalid at {where}: {error.message[:200]}")

    async def score(self, prompt: Prompt, candidates: list[Candidate],
                    objective: ObjectiveSpec) -> list[Score]:
        if not self.applies(prompt):
            return [self._none("no json schema") for _ in candidates]
        schema = prompt.verification.json_schema  # type: ignore[union-attr]
        return [self.check(schema, c.text) for c in candidates]

    def _score(self, value: float, rationale: str) -> Score:
        return Score(evaluator=self.name, kind=self.kind, value=value, raw=value, rationale=rationale)

    def _none(self, error: str) -> Score:
        return Score(evaluator=self.name, kind=self.kind, value=None, error=error)
