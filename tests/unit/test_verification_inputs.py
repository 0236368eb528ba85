"""Input lines carrying the new verification kinds (code, json_schema, regex)."""
from __future__ import annotations

import json

import pytest

from streams.commands.serving.inputs import InputError, parse_line, read_prompts


def test_plain_and_chat_lines_carry_code_json_schema_and_regex_checks(tmp_path):
    lines = [
        {"prompt": "Write add(a, b).", "verification": {"kind": "code", "tests": ["assert add(1, 2) == 3"]}},
        {"messages": [{"role": "user", "content": "Give a person as JSON."}],
         "verification": {"kind": "json_schema", "json_schema": {"type": "object", "required": ["name"]}}},
        {"prompt": "Answer yes or no.", "verification": {"kind": "regex", "pattern": "^(yes|no)$", "fullmatch": True}},
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in lines))
    code, js, rx = read_prompts(path)
    assert code.verification.kind == "code" and code.verification.tests == ["assert add(1, 2) == 3"]
    assert js.verification.json_schema == {"type": "object", "required": ["name"]} and js.source == "chat"
    assert rx.verification.pattern == "^(yes|no)$" and rx.verification.fullmatch is True


@pytest.mark.parametrize("v,needs", [({"kind": "code"}, "tests"), ({"kind": "json_schema"}, "json_schema"),
                                     ({"kind": "regex", "pattern": ""}, "pattern")])
def test_a_check_without_what_it_checks_by_is_refused(v, needs):
    with pytest.raises(ValueError, match=needs):
        parse_line({"prompt": "x", "verification": v})


def test_an_unknown_kind_is_reported_with_its_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"prompt": "x"}) + "\n" + json.dumps({"prompt": "x", "verification": {"kind": "sql"}}) + "\n")
    with pytest.raises(InputError, match=r"in.jsonl:2"):
        list(read_prompts(path))
