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


def test_a_regex_that_does_not_compile_is_unscored_one_that_backtracks_forever_fails():
    [s] = _run(RegexVerifier(), _prompt(kind="regex", pattern="(unclosed"), ["x"])
    assert s.value is None and "does not compile" in s.error
    started = time.monotonic()
    [s] = _run(RegexVerifier(), _prompt(kind="regex", pattern=r"(?:(?:a|aa)+)+$"), ["a" * 60 + "b"])
    assert s.value == 0.0 and "took over" in s.rationale  # a response cannot dodge the verdict
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("ev", [JsonSchemaVerifier(), RegexVerifier()])
def test_applies_only_to_its_kind(ev):
    assert not ev.applies(_prompt(kind="math", answer="4"))
    assert not ev.applies(Prompt(id="p", messages=[Message(role="user", content="hi")]))


# ---- client-supplied schemas and patterns are untrusted (issue 26, item 5) ----------------

def test_a_remote_or_file_ref_is_never_fetched():
    """A loopback server counts the requests: the worker must not make one."""
    import http.server
    import threading

    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            body = b'{"type": "object"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        remote = {"$ref": f"http://127.0.0.1:{server.server_address[1]}/schema.json"}
        scores = _run(JsonSchemaVerifier(), _prompt(kind="json_schema", json_schema=remote), ["{}", "[]"])
        [local] = _run(JsonSchemaVerifier(), _prompt(kind="json_schema", json_schema={"$ref": "file:///etc/hostname"}),
                       ["{}"])
    finally:
        server.shutdown()
        server.server_close()
    assert hits == []
    assert [s.value for s in scores + [local]] == [None, None, None]
    assert all("nothing is fetched" in s.error for s in scores + [local])
    inner = {"$defs": {"age": {"type": "integer"}}, "properties": {"age": {"$ref": "#/$defs/age"}}}
    ok, bad = _run(JsonSchemaVerifier(), _prompt(kind="json_schema", json_schema=inner), ['{"age": 3}', '{"age": "x"}'])
    assert (ok.value, bad.value) == (1.0, 0.0)  # references inside the schema still work


def test_a_response_nested_past_the_recursion_limit_fails_instead_of_raising():
    deep = "[" * 100_000 + "]" * 100_000
    recursive = {"type": "array", "items": {"$ref": "#"}}
    scores = _run(JsonSchemaVerifier(), _prompt(kind="json_schema", json_schema=recursive),
                  [deep, "[" * 990 + "]" * 990, "[[], [[]]]"])
    assert [s.value for s in scores] == [0.0, 0.0, 1.0]
    assert "recursion limit" in scores[0].rationale


SLOW = r"""
import asyncio, json, sys
from agents.evaluators.json_schema import JsonSchemaVerifier
from agents.evaluators.regex import RegexVerifier
from schemas import Candidate, Message, ObjectiveSpec, Prompt, Sampling, Verification

EVIL = r"^(?:(?:a|aa)+)+$"  # exponential backtracking for re and regex alike
TEXT = "a" * 60 + "b"


def prompt(**v):
    return Prompt(id="p", messages=[Message(role="user", content="Answer.")], verification=Verification(**v))


async def score(ev, p, text):
    cand = Candidate(id="c", text=text, backend="x", model="x", sampling=Sampling(temperature=0, top_p=1, max_tokens=1))
    ticks, done = 0, False

    async def ticker():
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0.01)

    t = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    [s] = await ev.score(p, [cand], ObjectiveSpec(name="o"))
    done = True
    await t
    return {"value": s.value, "why": s.rationale or s.error, "ticks": ticks}


async def main():
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": EVIL}},
              "patternProperties": {EVIL: {"type": "string"}}, "additionalProperties": False}
    out = {"pattern": await score(JsonSchemaVerifier(), prompt(kind="json_schema", json_schema=schema),
                                  json.dumps({"s": TEXT})),
           "property": await score(JsonSchemaVerifier(), prompt(kind="json_schema", json_schema=schema),
                                   json.dumps({TEXT: "x"})),
           "regex": await score(RegexVerifier(), prompt(kind="regex", pattern=EVIL), TEXT)}
    print(json.dumps(out))

asyncio.run(main())
"""


def test_catastrophic_patterns_are_bounded_score_zero_and_leave_the_event_loop_free():
    """In a child process with a deadline (an unbounded `re` would run for years): a schema
    `pattern`, a `patternProperties` key next to `additionalProperties`, and the regex
    verifier's pattern, each backtracking exponentially on the response."""
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.run([sys.executable, "-c", SLOW], cwd=ROOT, capture_output=True, text=True, timeout=30,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for case, r in out.items():
        assert r["value"] == 0.0 and "took over" in r["why"], (case, r)
        assert r["ticks"] >= 10, (case, r)  # the loop ran while the pattern did (budget: 1 s)
