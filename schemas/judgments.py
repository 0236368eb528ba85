"""The ``judgments`` topic: a candidate set with every evaluator's raw verdict."""
from __future__ import annotations

from schemas.base import Part, Wire
from schemas.candidates import Candidate
from schemas.objectives import ObjectiveSpec
from schemas.prompts import Prompt


class Score(Part, kw_only=True):
    """One evaluator's verdict on one candidate. ``value`` is normalised to [0, 1];
    ``None`` means the evaluator could not score it (never guessed)."""

    evaluator: str
    value: float | None
    raw: str | float | None = None
    rationale: str = ""
    kind: str = "verifier"  # "verifier" | "judge"
    error: str | None = None


class Judged(Part, kw_only=True):
    candidate: Candidate
    scores: list[Score]
    verified: float | None = None  # mean of verifier scores, None where none applied
    score: float | None = None  # the ensemble score instantiation ranks by


class JudgedSet(Wire, tag="judged.v1", kw_only=True):
    id: str
    prompt: Prompt
    objective: ObjectiveSpec
    judged: list[Judged]
    created_at: float = 0.0
