"""The IFEval verifier against the real IFEval prompts (../shared/data, read in place),
with no NLTK data downloaded."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Callable

import pytest

from agents.evaluators.ifeval import IFEvalVerifier
from schemas import Candidate, Message, ObjectiveSpec, Prompt, Sampling, Verification

IFEVAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "ifeval" / "input_data.jsonl"


def _rows() -> list[dict]:
    if not IFEVAL.exists():
        pytest.skip(f"reference data not found at {IFEVAL}")
    return [json.loads(line) for line in IFEVAL.read_text().splitlines() if line.strip()]


def _prompt(row: dict) -> Prompt:
    return Prompt(id=str(row["key"]), messages=[Message(role="user", content=row["prompt"])],
                  verification=Verification(kind="ifeval",
                                            instruction_id_list=row["instruction_id_list"],
                                            kwargs=row["kwargs"]))


def _sentences(n: int) -> str:
    return " ".join(f"This is sentence number {i} of the reply." for i in range(1, n + 1))


def _no_comma(kw: dict) -> tuple[str, str]:
    return "A plain reply without any pause marks.", "Yes, this reply has a comma."


def _lowercase(kw: dict) -> tuple[str, str]:
    return "this reply is written in lower case only.", "This Reply Uses Capital Letters."


def _num_sentences(kw: dict) -> tuple[str, str]:
    n = kw["num_sentences"]
    few, many = _sentences(max(n - 1, 1)), _sentences(n + 1)
    return (few, many) if kw["relation"] == "less than" else (many, few)


def _capital_words(kw: dict) -> tuple[str, str]:
    f = kw["capital_frequency"]
    few = "the " + " ".join(["WORD"] * (f - 1)) + " end."
    many = "the " + " ".join(["WORD"] * (f + 1)) + " end."
    return (few, many) if kw["capital_relation"] == "less than" else (many, few)


BUILDERS: dict[str, Callable[[dict], tuple[str, str]]] = {
    "punctuation:no_comma": _no_comma,
    "change_case:english_lowercase": _lowercase,
    "length_constraints:number_sentences": _num_sentences,
    "change_case:capital_word_frequency": _capital_words,
}


@pytest.mark.parametrize("instruction", sorted(BUILDERS))
def test_following_response_outscores_violating_one(instruction):
    """Every real prompt whose only instruction is ``instruction``: a response built to
    follow it scores 1.0, one built to break it 0.0."""
    v = IFEvalVerifier()
    rows = [r for r in _rows() if r["instruction_id_list"] == [instruction]]
    assert rows, f"no single-instruction prompt for {instruction}"
    for row in rows:
        good, bad = BUILDERS[instruction](row["kwargs"][0])
        g, b = v.check(_prompt(row), good), v.check(_prompt(row), bad)
        assert (g.value, b.value) == (1.0, 0.0), (row["key"], g.rationale, b.rationale)
        assert f"{instruction}: pass" in g.rationale and f"{instruction}: fail" in b.rationale


DUMMIES = [
    "Hello world. This is a SHORT answer, with a comma.",
    "all lower case, two sentences. ok.",
    "* one\n* two\n* three\n\n***\n\nSECTION 1\n*highlighted*\nP.S. bye",
    '{"json": true}',
]


def test_all_541_prompts_evaluate_without_exception():
    v = IFEvalVerifier()
    rows = _rows()
    assert len(rows) == 541
    for row in rows:
        for text in DUMMIES + [row["prompt"]]:
            score = v.check(_prompt(row), text)
            assert score.error is None and score.value is not None, (row["key"], score.error)
            assert 0.0 <= score.value <= 1.0


def test_value_is_the_fraction_of_instructions_passed():
    v = IFEvalVerifier()
    multi = [r for r in _rows() if len(r["instruction_id_list"]) >= 3]
    for row in multi:
        score = v.check(_prompt(row), DUMMIES[0])
        verdicts = [part.rsplit(": ", 1)[1] for part in score.rationale.split("; ")]
        assert len(verdicts) == len(row["instruction_id_list"])
        assert score.value == pytest.approx(verdicts.count("pass") / len(verdicts))


def test_empty_response_scores_zero_not_none():
    row = next(r for r in _rows() if r["instruction_id_list"] == ["punctuation:no_comma"])
    score = IFEvalVerifier().check(_prompt(row), "   ")
    assert score.value == 0.0 and score.error is None


def test_unknown_instruction_is_not_scored():
    p = Prompt(id="p", messages=[Message(role="user", content="q")],
               verification=Verification(kind="ifeval", instruction_id_list=["nope:unknown"],
                                         kwargs=[{}]))
    score = IFEvalVerifier().check(p, "anything")
    assert score.value is None and "nope:unknown" in (score.error or "")


def test_score_per_candidate_and_applies():
    v = IFEvalVerifier()
    row = next(r for r in _rows() if r["instruction_id_list"] == ["punctuation:no_comma"])
    cands = [Candidate(id=str(i), text=t, backend="stub", model="stub",
                       sampling=Sampling(temperature=0.0, top_p=1.0, max_tokens=8))
             for i, t in enumerate(["no commas here", "a, b"])]
    scores = asyncio.run(v.score(_prompt(row), cands, ObjectiveSpec(name="o")))
    assert [s.value for s in scores] == [1.0, 0.0]
    assert v.applies(_prompt(row))
    assert not v.applies(Prompt(id="p", messages=[Message(role="user", content="q")]))
    assert not v.applies(Prompt(id="p", messages=[Message(role="user", content="q")],
                                verification=Verification(kind="math", answer="1")))
