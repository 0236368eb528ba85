"""The math verifier against the real GSM8K answers (../shared/data, read in place)."""
from __future__ import annotations

import asyncio
import json
import re
import threading
from pathlib import Path

import pytest

from agents.evaluators.math import MathVerifier, answers_match, extract_answer
from schemas import Candidate, Message, ObjectiveSpec, Prompt, Sampling, Verification

GSM8K = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k" / "train_first1000.jsonl"


def _gsm8k() -> list[dict]:
    if not GSM8K.exists():
        pytest.skip(f"reference data not found at {GSM8K}")
    return [json.loads(line) for line in GSM8K.read_text().splitlines() if line.strip()]


def _final(answer: str) -> str:
    return answer.rsplit("####", 1)[1].strip()


def _bump(final: str) -> str:
    """The reference final answer plus one, as a plain integer."""
    return str(int(final.replace(",", "")) + 1)


def _prompt(answer: str | None) -> Prompt:
    return Prompt(id="p", messages=[Message(role="user", content="q")],
                  verification=Verification(kind="math", answer=answer))


def _candidate(text: str) -> Candidate:
    return Candidate(id="c", text=text, backend="stub", model="stub",
                     sampling=Sampling(temperature=0.0, top_p=1.0, max_tokens=8))


def test_all_gsm8k_reference_solutions_verify_and_perturbed_ones_fail():
    v = MathVerifier()
    rows = _gsm8k()
    assert len(rows) == 1000
    failures = []
    for row in rows:
        final = _final(row["answer"])
        wrong = _bump(final)
        reasoning_wrong = row["answer"].rsplit("####", 1)[0] + f"#### {wrong}"
        got = (v.check(final, row["answer"]).value, v.check(final, wrong).value,
               v.check(final, reasoning_wrong).value)
        if got != (1.0, 0.0, 0.0):
            failures.append((final, got))
    assert failures == []


@pytest.mark.parametrize("text", [
    "The answer is $1,200.", "Answer: 1200", "So she pays \\boxed{1,200} in total.",
    "First 600 + 600 = 1200 dollars", "#### 1,200", "The answer is 1200.00",
])
def test_formatted_answers_match_1200(text):
    assert MathVerifier().check("1200", text).value == 1.0


@pytest.mark.parametrize("text", ["The answer is $1,201.", "Answer: 120", "I don't know."])
def test_wrong_or_missing_answers_score_zero(text):
    score = MathVerifier().check("1200", text)
    assert score.value == 0.0 and score.error is None


def test_extraction_prefers_final_marker_then_phrase_then_last_number():
    assert extract_answer("3 + 4 = 7\n#### 7\nthen 9") == "7"
    assert extract_answer("It costs $18 each. The answer is $36. Then 5 more.") == "$36"
    assert extract_answer("2 and 3 and 5") == "5"
    assert extract_answer("no digits here") is None


def test_dollar_amount_matches_plain_number():
    assert answers_match("18", "$18")
    assert not answers_match("18", "$19")


def test_raw_is_the_extracted_answer_and_rationale_names_both():
    score = MathVerifier().check("72", "48 + 24 = 72 clips\n#### 72")
    assert score.raw == "72"
    assert "72" in score.rationale and score.kind == "verifier"


def test_score_is_async_and_per_candidate_in_order():
    texts = ["#### 5", "#### 6", "nothing"]
    scores = asyncio.run(MathVerifier().score(
        _prompt("5"), [_candidate(t) for t in texts], ObjectiveSpec(name="o")))
    assert [s.value for s in scores] == [1.0, 0.0, 0.0]


def test_applies_only_to_math_prompts_with_an_answer():
    v = MathVerifier()
    assert v.applies(_prompt("5"))
    assert not v.applies(_prompt(None))
    assert not v.applies(Prompt(id="p", messages=[Message(role="user", content="q")]))


def test_works_in_a_worker_thread():
    """math-verify's signal-based timeouts fail off the main thread unless turned off."""
    results: list = []

    def work() -> None:
        v = MathVerifier()
        results.append((v.check("1200", "The answer is $1,200.").value,
                        v.check("1200", "#### 1201").value))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert results == [(1.0, 0.0)]


def test_works_from_asyncio_to_thread():
    scores = asyncio.run(asyncio.to_thread(
        lambda: asyncio.run(MathVerifier().score(
            _prompt("18"), [_candidate("It costs $18.")], ObjectiveSpec(name="o")))))
    assert [s.value for s in scores] == [1.0]
    assert re.search(r"18", scores[0].rationale)
