"""Heuristics: cheap features of a response, recorded on every candidate for bias control.

By default they weigh nothing (``EvaluationSpec.features``): they are on the record so
length bias, degenerate repetition and refusals can be measured and filtered; an objective
that wants them in the ensemble names them in ``evaluators`` with a weight.

* ``length``: ``raw`` is the length in characters; ``value`` is it relative to the set's
  longest candidate (1.0 = the longest). Instantiation's length guard reads ``raw``.
* ``repetition``: ``raw`` is the share of repeated word 3-grams; ``value`` = 1 - raw.
* ``refusal``: ``value`` 0.0 where the response refuses ("I can't help with that", "As an
  AI language model…"), 1.0 otherwise; ``raw`` is the phrase found.
* ``injection`` (a guard, on by default in ``EvaluationSpec.guards``): ``value`` 0.0 where
  the response talks to its evaluator — tells it to ignore its rubric or instructions,
  demands a score, forges the judge's own answer format or our delimiters, or carries chat
  template tokens; 1.0 otherwise. A flagged candidate's ensemble score is 0, so an
  injection never wins even where it fooled a model judge.
"""
from __future__ import annotations

import re

from schemas import Candidate, ObjectiveSpec, Prompt, Score

_WORD = re.compile(r"\w+")
_REFUSAL = re.compile(
    r"\b(?:I(?:'m| am)? (?:sorry,? but I )?(?:can(?:no|')t|won't|will not|am not able to|am unable to|"
    r"'m not able to|'m unable to) (?:help|assist|provide|comply|do that|answer|fulfil|fulfill|write|"
    r"create|support)|as an AI(?: language model)?,? I|I must (?:decline|refuse)|"
    r"I(?:'m| am) (?:not able|unable) to (?:help|assist|comply))",
    re.IGNORECASE)
# every branch above holds one of these (lower-cased): one cheap pass clears ordinary text
_REFUSAL_HINT = re.compile(r"cannot|can't|won't|will not|not able|unable|as an ai|must decline|must refuse")
_EVALUATOR = r"(?:judge|grader|evaluator|reviewer|rater|scorer|reward model|assessor|examiner)"
_TARGET = r"(?:this|the|my|our) (?:response|answer|output|reply|completion)"
_INJECTION = [
    ("override", r"\b(?:ignore|disregard|forget|override|bypass)\s+(?:all\s+|any\s+|the\s+|your\s+|of\s+)*"
                 r"(?:previous\s+|prior\s+|above\s+|earlier\s+|preceding\s+|grading\s+|scoring\s+)*"
                 r"(?:instructions?|rubric|guidelines|criteria|system prompt|prompts?)\b"),
    ("addresses the evaluator", rf"\b(?:dear|note to|attention|hey|hello|message (?:to|for)|instructions? (?:to|for))"
                                rf"\s+(?:the |my |any |all )?(?:AI |LLM )?{_EVALUATOR}s?\b"),
    ("evaluator told to score", rf"\b{_EVALUATOR}s?\b[^.\n]{{0,60}}?\b(?:must|should|will|shall|has to|needs to)\b"
                                rf"[^.\n]{{0,30}}?\b(?:score|rate|grade|give|assign|mark|prefer|choose)\b[^.\n]{{0,20}}?"
                                rf"\b{_TARGET}\b"),
    ("demands a score", r"\b(?:score|rate|grade|mark)\s+(?:this|it|me|my|the)\s*(?:response|answer|output|reply)?"
                        r"\s*(?:as\s+|a\s+|an\s+|with\s+|at\s+)?(?:10|ten|100|9|perfect|full marks|the (?:highest|maximum|best))"),
    ("demands a score", r"\bgive\s+(?:this|it|me|the)\s*(?:response|answer|reply|output)?\s+(?:a\s+|an\s+)?"
                        r"(?:10|ten|100|perfect|full marks|top marks|the (?:highest|maximum|best)\s+score)"),
    ("forges the verdict", r"score\s*\(\s*1\s*-\s*\d+\s*\)\s*:|\"score\"\s*:\s*\d+\s*,\s*\"rationale\"|"
                           r"\"winner\"\s*:\s*\"(?:A|B|tie)\"|better response \(A or B\)\s*:"),
    ("forges a delimiter", r"<\s*/?\s*(?:response|request)\b"),
    ("chat template tokens", r"<\|im_(?:start|end)\|>|<\|(?:system|user|assistant|eot_id|start_header_id)\|>|"
                             r"<(?:start|end)_of_turn>|\[/?INST\]|<</?SYS>>"),
]
_INJECTION_RE = [(why, re.compile(p, re.IGNORECASE)) for why, p in _INJECTION]
# every pattern above needs one of these words or characters: one cheap pass clears the
# ordinary response (nearly all of them) before the eight patterns run
_INJECTION_HINT = re.compile(
    r"ignore|disregard|forget|override|bypass|judge|grader|evaluator|reviewer|rater|scorer|reward model|"
    r"assessor|examiner|(?:score|rate|grade|mark)\s+(?:this|it|me|my|the)|give\s+(?:this|it|me|the)|"
    r"score\s*\(|\"score\"|\"winner\"|better response|<|inst\]")  # on lower-cased text:
# a case-insensitive alternation is much slower in ``re`` (benchmarks/text.py). "score", "rate", "mark" and
# "give" only count followed by what the patterns need ("give this…"): alone they are in a
# quarter of ordinary prompts ("given", "market", "separate").


def repetition(text: str) -> float:
    """The share of word 3-grams that repeat an earlier one (0 for under four words)."""
    # lower-casing first is the same for ASCII text (not for all: "İ".lower() is two code points)
    words = _WORD.findall(text.lower()) if text.isascii() else [w.lower() for w in _WORD.findall(text)]
    grams = list(zip(words, words[1:], words[2:]))
    if len(grams) < 2:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def refusal(text: str) -> str | None:
    if text.isascii() and _REFUSAL_HINT.search(text.lower()) is None:  # (as in ``injection``)
        return None
    m = _REFUSAL.search(text)
    return m.group(0) if m else None


def injection(text: str) -> tuple[str, str] | None:
    """``(why, matched text)`` for the first sign the response addresses its evaluator."""
    if text.isascii() and _INJECTION_HINT.search(text.lower()) is None:  # (non-ASCII text gets the
        return None  # full scan: re's case-insensitive match folds "ſ", "K", "İ" onto ASCII letters)
    for why, pattern in _INJECTION_RE:
        m = pattern.search(text)
        if m:
            return why, m.group(0)
    return None


class _Heuristic:
    name = ""
    kind = "feature"

    def applies(self, prompt: Prompt) -> bool:
        return True

    async def score(self, prompt: Prompt, candidates: list[Candidate],
                    objective: ObjectiveSpec) -> list[Score]:
        return [self.one(c.text, candidates) for c in candidates]

    def one(self, text: str, candidates: list[Candidate]) -> Score:
        raise NotImplementedError

    def _score(self, value: float, raw: str | float | None, rationale: str = "") -> Score:
        return Score(evaluator=self.name, kind=self.kind, value=value, raw=raw, rationale=rationale)


class LengthFeature(_Heuristic):
    name = "length"

    async def score(self, prompt: Prompt, candidates: list[Candidate],
                    objective: ObjectiveSpec) -> list[Score]:
        lengths = [len(c.text) for c in candidates]
        longest = max(lengths, default=0)  # once per set, not per candidate
        return [self._score(n / longest if longest else 0.0, n, f"{n} characters") for n in lengths]


class RepetitionFeature(_Heuristic):
    name = "repetition"

    def one(self, text: str, candidates: list[Candidate]) -> Score:
        share = repetition(text)
        return self._score(1.0 - share, round(share, 4), f"{share:.0%} of word 3-grams repeat")


class RefusalFeature(_Heuristic):
    name = "refusal"

    def one(self, text: str, candidates: list[Candidate]) -> Score:
        found = refusal(text)
        return self._score(0.0 if found else 1.0, found, f"refuses: {found!r}" if found else "no refusal")


class InjectionGuard(_Heuristic):
    name = "injection"
    kind = "guard"

    def one(self, text: str, candidates: list[Candidate]) -> Score:
        found = injection(text)
        if found is None:
            return self._score(1.0, None, "no instruction to the evaluator found")
        why, matched = found
        return self._score(0.0, matched[:120], f"flagged: {why}")
