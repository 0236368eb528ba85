"""The ``feedback`` topic: a human label for a candidate or for a production response.

What ``value`` means depends on ``kind``:

- ``thumbs``: 1 = thumbs up, 0 = thumbs down.
- ``ab``: a choice between ``candidate_id`` (or ``response_id``) as A and ``other_id`` as B:
  1 = A is better, 0 = B is better, 0.5 = tie.
- ``score``: a rating normalised to [0, 1] (divide a 1-5 star rating's ``stars - 1`` by 4).

``response_id`` is the id the production model gave its response (the OpenAI ``id``,
``chatcmpl-…``), which the capture proxy records in the captured prompt's metadata.
"""
from __future__ import annotations

import math
from typing import Literal

from schemas.base import Wire, stable_id


class Feedback(Wire, tag="feedback.v1", kw_only=True):
    id: str
    prompt_id: str
    kind: Literal["thumbs", "ab", "score"]
    value: float
    candidate_id: str | None = None
    response_id: str | None = None  # a production response (the OpenAI response id)
    other_id: str | None = None  # B of an A/B choice: a candidate id or a production response id
    user: str | None = None  # hash of the API key that sent the label, never the key
    created_at: float = 0.0

    def __post_init__(self) -> None:
        if not self.prompt_id:
            raise ValueError("prompt_id must be non-empty")
        if not (self.candidate_id or self.response_id):
            raise ValueError("name what is labelled: candidate_id or response_id")
        if not math.isfinite(self.value):
            raise ValueError("value must be a finite number")
        if self.kind == "ab":
            if not self.other_id:
                raise ValueError("an `ab` label needs other_id (the B side)")
            if self.value not in (0.0, 0.5, 1.0):
                raise ValueError("an `ab` value is 1 (A better), 0 (B better) or 0.5 (tie)")
        elif self.other_id:
            raise ValueError(f"other_id is only for `ab` labels, not `{self.kind}`")
        if self.kind == "thumbs" and self.value not in (0.0, 1.0):
            raise ValueError("a `thumbs` value is 1 (up) or 0 (down)")
        if self.kind == "score" and not 0.0 <= self.value <= 1.0:
            raise ValueError("a `score` value is normalised to [0, 1]")


def feedback_id(prompt_id: str, kind: str, value: float, candidate_id: str | None,
                response_id: str | None, other_id: str | None, user: str | None) -> str:
    """Deterministic: the same label from the same key is the same record (a retry is a no-op
    at an idempotent sink); a changed label is a new record."""
    return "f-" + stable_id(prompt_id, kind, value, candidate_id, response_id, other_id, user)
