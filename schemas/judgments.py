"""The ``judgments`` topic: a candidate set with every evaluator's raw verdict."""
from __future__ import annotations

from schemas.base import Part, Wire
from schemas.candidates import Candidate
from schemas.feedback import Feedback
from schemas.objectives import ObjectiveRef, ObjectiveSpec, bind_ref
from schemas.prompts import Prompt


class Comparison(Part, kw_only=True):
    """One pairwise judgment of a candidate against ``other``, asked in both orders.

    ``first``/``second``: the verdict with this candidate shown first / second — ``"this"``,
    ``"other"``, ``"tie"``, or ``None`` where the judge's answer could not be read.
    ``consistent``: both orders named the same winner (``None`` where one was unreadable).
    ``outcome``: 1 this one is better, 0 the other, 0.5 a tie (an inconsistent verdict is a
    tie); ``None`` where either order was unreadable (never guessed)."""

    other: str
    outcome: float | None
    first: str | None = None
    second: str | None = None
    consistent: bool | None = None


class Score(Part, kw_only=True):
    """One evaluator's verdict on one candidate. ``value`` is normalised to [0, 1];
    ``None`` means the evaluator could not score it (never guessed)."""

    evaluator: str
    value: float | None
    raw: str | float | None = None
    rationale: str = ""
    kind: str = "verifier"  # "verifier" | "judge" | "reward" | "human" | "feature" | "guard"
    error: str | None = None
    swap_consistent: bool | None = None  # pairwise: every comparison agreed in both orders
    comparisons: list[Comparison] = []  # pairwise: one per other candidate


class RecordRef(Part, kw_only=True):
    """A preference record by id, with what pairs it with its successor: kind and step."""

    id: str
    kind: str
    step: int | None = None


class Judged(Part, kw_only=True):
    candidate: Candidate
    scores: list[Score]
    verified: float | None = None  # mean of verifier scores, None where none applied
    score: float | None = None  # the ensemble score instantiation ranks by
    # a model judge (judge, pairwise, reward) is of the same family as the candidate's writer;
    # None where no model judged
    same_family: bool | None = None


class JudgedSet(Wire, tag="judged.v1", kw_only=True):
    id: str
    prompt: Prompt
    objective: ObjectiveSpec | None = None  # the spec once resolved, as in ``Curated``
    judged: list[Judged]
    created_at: float = 0.0
    rejudged_from: str | None = None  # `rejudge`: the judged set these candidates were first judged in
    # a late label re-scored an earlier judged set (``agents.relabel``): its id, the labels folded in
    # since (each once), and the records it made (which this set's records supersede)
    supersedes: str | None = None
    late_labels: list[Feedback] = []
    superseded_records: list[RecordRef] = []
    # what adaptive sampling added: extra_rounds, extra_candidates, extra_judge_calls
    extra: dict[str, int] = {}
    objective_ref: ObjectiveRef = ""  # name@version, as in ``Curated``

    def __post_init__(self) -> None:
        bind_ref(self)


def judged_id(set_id: str) -> str:
    """The id of the judged set made from the candidate set ``set_id``."""
    return "j-" + set_id.removeprefix("s-")
