"""The ``preferences`` and ``outcomes`` topics: what trainers take, and how each prompt ended."""
from __future__ import annotations

from typing import Literal

from schemas.base import Part, Wire
from schemas.judgments import Score
from schemas.prompts import Message


class Side(Part, kw_only=True):
    candidate_id: str
    model: str
    score: float
    scores: list[Score] = []


class PreferenceRecord(Wire, tag="preference.v1", kw_only=True):
    """A preference pair in TRL's conversational shape plus provenance."""

    id: str
    kind: Literal["pair"] = "pair"
    prompt_id: str
    objective: str  # name@version
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    score_chosen: float
    score_rejected: float
    margin: float
    chosen_side: Side
    rejected_side: Side
    source: str = "unknown"
    created_at: float = 0.0

    def trl(self) -> dict:
        """The line a trainer reads: TRL conversational preference format + provenance."""
        return {
            "id": self.id,
            "prompt_id": self.prompt_id,
            "prompt": [_msg(m) for m in self.prompt],
            "chosen": [_msg(m) for m in self.chosen],
            "rejected": [_msg(m) for m in self.rejected],
            "score_chosen": self.score_chosen,
            "score_rejected": self.score_rejected,
            "margin": self.margin,
            "objective": self.objective,
            "model_chosen": self.chosen_side.model,
            "model_rejected": self.rejected_side.model,
        }


def _msg(m: Message) -> dict:
    out: dict = {"role": m.role, "content": m.content if m.content is not None else ""}
    if m.tool_calls:
        out["tool_calls"] = m.tool_calls
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    return out


class Outcome(Wire, tag="outcome.v1", kw_only=True):
    """How one prompt ended under one objective: ``records`` (ids listed), ``no_pair`` (a
    reason: all tied, margin too small, too few scored), or ``dropped`` (curate refused it)."""

    prompt_id: str
    objective: str
    status: Literal["records", "no_pair", "dropped"]
    record_ids: list[str] = []
    candidates: int = 0
    reason: str = ""
    created_at: float = 0.0
