"""The JSON-schema and regex verifiers."""
from __future__ import annotations

import asyncio
import time

import pytest

from agents.evaluators.json_schema import JsonSchemaVerifier, extract_json
from agents.evaluators.regex import RegexVerifier
from schemas import Candidate, Message, ObjectiveSpec, Prompt, Sampling, Verification

OBJ = ObjectiveSpec(name="o")
PERSON = {"type": "object", "required": ["name", "age"],
          "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}}}


def _prompt(**v) -> Prompt:
    return Prompt(id="p", messages=[Message(role="user", content="Answer.")], verification=Verification(**v))


def _run(ev, prompt, texts):
    cands = [Candidate(id=f"c{i}", text=t, backend="x", model="x",
                       sampling=Sampling(temperature=0, top_p=1, max_tokens=1)) for i, t in enumerate(texts)]
    return asyncio.run(ev.score(prompt, cands, OBJ))


def test_json_valid_invalid_and_missing():
    texts = ['{"name": "Ada", "age": 36}',
             'Sure! Here it is:\n```json\n{"name": "Ada", "age": 36}\n```',
             'The record is {"name": "Ada", "age": 36} as asked.',
             '{"name": "Ada", "age": -1}',
             '{"name": "Ada"}',
             "I cannot produce JSON."]
    scores = _run(JsonSchemaVerifier(), _prompt(kind="json_schema", json_schema=PERSON), texts)
    assert [s.value for s in scores] == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert "age" in scores[3].rationale and "minimum" in scores[3].rationale
    assert "'age' is a required property" in scores[4].rationale
    assert scores[5].rationale == "no JSON value found in the response"
    assert all(s.evaluator == "json_schema" and s.kind == "verifier" for s in scores)


def test_an_invalid_schema_leaves_candidates_unscored():
    [s] = _run(JsonSchemaVerifier(), _prompt(kind="json_schema", json_schema={"type": "no-such-type"}), ["{}"])
    assert s.value is None and s.error.startswith("invalid schema")


def test_extract_json_takes_arrays_and_skips_broken_braces():
    assert extract_json("list: [1, 2, 3]") == [1, 2, 3]
    assert extract_json("a {broken then {\"ok\": true}") == {"ok": True}


def test_regex_search_and_fullmatch():
    search = _prompt(kind="regex", pattern=r"\b\d{3}-\d{4}\b")
    scores = _run(RegexVerifier(), search, ["Call 555-1234 today", "no number here"])
    assert [s.value for s in scores] == [1.0, 0.0] and scores[0].raw == "555-1234"
    full = _prompt(kind="regex", pattern=r"(yes|no)", fullmatch=True)
    scores = _run(RegexVerifier(), full, ["  yes\n", "yes, definitely"])
    assert [s.value for s in scores] == [1.0, 0.0]


def test_regex_that_does_not_compile_or_backtracks_forever_is_unscored():
    [s] = _run(RegexVerifier(), _prompt(kind="regex", pattern="(unclosed"), ["x"])
    assert s.value is None and "does not compile" in s.error
    started = time.monotonic()
    [s] = _run(RegexVerifier(), _prompt(kind="regex", pattern=r"(?:(?:a|aa)+)+$"), ["a" * 60 + "b"])
    assert s.value is None and "took over" in s.error
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("ev", [JsonSchemaVerifier(), RegexVerifier()])
def test_applies_only_to_its_kind(ev):
    assert not ev.applies(_prompt(kind="math", answer="4"))
    assert not ev.applies(Prompt(id="p", messages=[Message(role="user", content="hi")]))
