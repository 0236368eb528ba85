"""The interface every evaluator implements."""
from __future__ import annotations

from typing import Protocol

from schemas import Candidate, ObjectiveSpec, Prompt, Score


# evaluator names that are a model judging candidates (bias figures, same-family checks)
MODEL_JUDGES = frozenset({"judge", "pairwise"})
# evaluator kinds that give an opinion (a model or a person) rather than a check: they wait
# outside the worker (run side by side) and the ensemble weighs them as opinions
OPINION_KINDS = frozenset({"judge", "reward", "human"})


class Evaluator(Protocol):
    name: str  # the name objectives use: "math", "ifeval", "judge", "code", ...
    kind: str  # "verifier" (checked by code), "judge"/"reward" (a model), "human", "feature", "guard"
    # optional ``waits: bool``: scoring waits outside the worker (default: kind judge/reward/human);
    # the waiting evaluators of one set run side by side (agents.evaluate.score_all)

    def applies(self, prompt: Prompt) -> bool:
        """Whether this evaluator can score responses to this prompt at all."""
        ...

    async def score(self, prompt: Prompt, candidates: list[Candidate],
                    objective: ObjectiveSpec) -> list[Score]:
        """One ``Score`` per candidate, in order. ``value`` in [0, 1], or ``None`` with
        ``error`` set when it could not be scored (never a guess)."""
        ...


def params_of(objective: ObjectiveSpec, name: str) -> dict:
    """The ``params`` the objective gives evaluator ``name`` (``{}`` where it names none)."""
    for spec in objective.evaluation.evaluators:
        if spec.name == name:
            return dict(spec.params)
    return {}
