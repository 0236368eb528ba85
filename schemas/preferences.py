"""The ``preferences`` and ``outcomes`` topics: what trainers take, and how each prompt ended.

One judged set can become several kinds of record (the objective's ``instantiation``):
a pair (``PreferenceRecord``), an unpaired KTO/BCO example (``UnpairedRecord``), a
listwise ranking (``RankingRecord``) and scalar rewards (``RewardRecord``). Each is its own
tagged type; the topic carries their union, ``AnyRecord``. Every record has a
deterministic ``id``, a ``kind``, the ``prompt_id`` and the ``objective`` (name@version).
"""
from __future__ import annotations

import json
from typing import Literal, Union

from schemas.base import Part, Wire
from schemas.judgments import Score
from schemas.prompts import Message


class Side(Part, kw_only=True):
    candidate_id: str
    model: str
    score: float
    scores: list[Score] = []
    off_policy: bool = False  # the side was not sampled from the policy (``model: reference``)
    policy: str | None = None  # "name@version": the policy version that wrote this side, where one did


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
    pairing: str = "best_vs_worst"  # the instantiation mode that made it
    length_chosen: int = 0  # the lengths the length guard compared
    length_rejected: int = 0
    length_flagged: bool = False  # chosen wins mainly by length (guard "count")
    # agent trajectories: the index of the turn the pair branches at (``prompt`` is the
    # trajectory before it; chosen and rejected are two next actions); None for a whole response
    step: int | None = None
    difficulty: str | None = None  # "easy" | "medium" | "hard" from the verifiers' pass rate
    rejudged_from: str | None = None  # `rejudge`: the judged set the candidates were first judged in
    supersedes: str | None = None  # a late label re-scored the set: the record this one replaces
    # "name@version" of the policy that wrote the record's sides; where sides differ, the oldest version
    # of the first side's policy (a pair of policy and fixed model: the policy side's). None: no policy
    policy: str | None = None

    @property
    def off_policy(self) -> bool:
        """A side was not sampled from the policy (a reference or production answer)."""
        return self.chosen_side.off_policy or self.rejected_side.off_policy

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
            **_provenance(self, self.off_policy),
        }


class UnpairedRecord(Wire, tag="preference.unpaired.v1", kw_only=True):
    """One completion with a desirable (``label`` true) / undesirable verdict: KTO, BCO."""

    id: str
    kind: Literal["unpaired"] = "unpaired"
    prompt_id: str
    objective: str
    prompt: list[Message]
    completion: list[Message]
    label: bool
    side: Side
    source: str = "unknown"
    created_at: float = 0.0
    step: int | None = None
    difficulty: str | None = None
    rejudged_from: str | None = None  # `rejudge`: the judged set the candidates were first judged in
    supersedes: str | None = None  # a late label re-scored the set: the record this one replaces
    # "name@version" of the policy that wrote the record's sides; where sides differ, the oldest version
    # of the first side's policy (a pair of policy and fixed model: the policy side's). None: no policy
    policy: str | None = None

    def trl(self) -> dict:
        """The line a trainer reads: TRL conversational unpaired preference format (KTO) + provenance."""
        return {
            "id": self.id,
            "prompt_id": self.prompt_id,
            "prompt": [_msg(m) for m in self.prompt],
            "completion": [_msg(m) for m in self.completion],
            "label": self.label,
            "score": self.side.score,
            "objective": self.objective,
            "model": self.side.model,
            **_provenance(self, self.side.off_policy),
        }


class Ranked(Part, kw_only=True):
    """One candidate in a ranking: rank 1 is best; equal scores share a rank."""

    rank: int
    completion: list[Message]
    side: Side


class RankingRecord(Wire, tag="preference.ranking.v1", kw_only=True):
    """Every scored candidate of one prompt, best first (listwise training)."""

    id: str
    kind: Literal["ranking"] = "ranking"
    prompt_id: str
    objective: str
    prompt: list[Message]
    ranked: list[Ranked]
    source: str = "unknown"
    created_at: float = 0.0
    step: int | None = None
    difficulty: str | None = None
    rejudged_from: str | None = None  # `rejudge`: the judged set the candidates were first judged in
    supersedes: str | None = None  # a late label re-scored the set: the record this one replaces
    # "name@version" of the policy that wrote the record's sides; where sides differ, the oldest version
    # of the first side's policy (a pair of policy and fixed model: the policy side's). None: no policy
    policy: str | None = None


class RewardRecord(Wire, tag="preference.reward.v1", kw_only=True):
    """One candidate with its score as a scalar reward (RL, regression reward models)."""

    id: str
    kind: Literal["reward"] = "reward"
    prompt_id: str
    objective: str
    prompt: list[Message]
    completion: list[Message]
    reward: float
    side: Side
    source: str = "unknown"
    created_at: float = 0.0
    step: int | None = None
    difficulty: str | None = None
    rejudged_from: str | None = None  # `rejudge`: the judged set the candidates were first judged in
    supersedes: str | None = None  # a late label re-scored the set: the record this one replaces
    # "name@version" of the policy that wrote the record's sides; where sides differ, the oldest version
    # of the first side's policy (a pair of policy and fixed model: the policy side's). None: no policy
    policy: str | None = None


class Withdrawn(Wire, tag="preference.withdrawn.v1", kw_only=True):
    """A record a late label took back with nothing in its place (its set, re-scored, no longer
    makes one of its kind): ``supersedes`` names it. No training row comes from it; the tap and
    the dataset API drop the record it names."""

    id: str
    kind: Literal["withdrawn"] = "withdrawn"
    prompt_id: str
    objective: str
    supersedes: str
    created_at: float = 0.0


AnyRecord = Union[PreferenceRecord, UnpairedRecord, RankingRecord, RewardRecord, Withdrawn]
RECORD_TYPES = (PreferenceRecord, UnpairedRecord, RankingRecord, RewardRecord)
KINDS = ("pair", "unpaired", "ranking", "reward")


def _provenance(record, off_policy: bool) -> dict:
    """A training row's optional provenance: only what the record has."""
    return {**({"off_policy": True} if off_policy else {}),
            **({"step": record.step} if record.step is not None else {}),
            **({"difficulty": record.difficulty} if record.difficulty is not None else {}),
            **({"supersedes": record.supersedes} if record.supersedes is not None else {}),
            **({"policy": record.policy} if record.policy else {})}


def message_dict(m: Message) -> dict:
    """A chat turn as TRL reads it: role and content; tool calls with their arguments as an
    object (as chat templates and TRL's tool calling expect), a tool result with the tool's
    ``name``."""
    out: dict = {"role": m.role, "content": m.content if m.content is not None else ""}
    if m.tool_calls:
        out["tool_calls"] = [_call_dict(c) for c in m.tool_calls]
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    if m.role == "tool" and m.name:
        out["name"] = m.name
    return out


def _call_dict(call: dict) -> dict:
    fn = call.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("arguments"), str):
        return call
    try:
        args = json.loads(fn["arguments"])
    except ValueError:
        return call
    return {**call, "function": {**fn, "arguments": args}} if isinstance(args, dict) else call


_msg = message_dict


class Outcome(Wire, tag="outcome.v1", kw_only=True):
    """How one prompt ended under one objective: ``records`` (ids listed), ``no_pair`` (a
    reason: all tied, margin too small, too few scored), or ``dropped`` (curate refused it).

    ``counts`` says what instantiation made and skipped: ``pairs``, ``desirable``,
    ``undesirable``, ``rankings``, ``rewards``, ``length_flagged``, ``length_dropped``,
    ``kto_between`` (scores between the KTO thresholds); what adaptive sampling added
    (``extra_rounds``, ``extra_candidates``, ``extra_judge_calls``, ``extra_readings``,
    ``agents.adaptive``); zero counts are left out."""

    prompt_id: str
    objective: str
    status: Literal["records", "no_pair", "dropped"]
    record_ids: list[str] = []
    candidates: int = 0
    reason: str = ""
    created_at: float = 0.0
    counts: dict[str, int] = {}
    rejudged_from: str | None = None  # `rejudge`: the judged set the prompt's candidates were first judged in
