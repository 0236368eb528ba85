"""The ``prompt-stats`` topic: how informative one prompt's judged set was.

instantiate publishes one per judged set; curate follows the topic and keeps a decaying
utility estimate per prompt family (``agents.utility``), so it can spend less generation on
families that keep producing ties or all-correct / all-wrong sets.
"""
from __future__ import annotations

from typing import Literal

from schemas.base import Wire

Difficulty = Literal["easy", "medium", "hard"]


class PromptStats(Wire, tag="prompt-stats.v1", kw_only=True):
    """``spread``: best minus worst ensemble score; ``paired``: a pair survived instantiation;
    ``pass_rate``: the mean verifier verdict over the candidates a verifier scored (None where
    none did); ``utility`` in [0, 1]: the mean of ``paired``, ``spread`` and, where a verifier
    scored, ``4 p (1 - p)`` (0 for all-correct or all-wrong sets). ``family``: the family
    curate assigned (``metadata.family``), else the prompt's tags."""

    prompt_id: str
    objective: str  # name@version
    family: str
    candidates: int
    scored: int
    distinct: int  # distinct candidate texts
    spread: float
    paired: bool
    pairs: int = 0
    pass_rate: float | None = None
    difficulty: Difficulty | None = None
    utility: float = 0.0
    created_at: float = 0.0
