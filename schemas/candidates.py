"""The ``candidates`` topic: all N responses for one prompt travel as one message."""
from __future__ import annotations

from schemas.base import Part, Wire
from schemas.objectives import ObjectiveSpec
from schemas.prompts import Prompt


class Sampling(Part, kw_only=True):
    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None = None


class Candidate(Part, kw_only=True):
    id: str
    text: str
    backend: str
    model: str
    sampling: Sampling
    strategy: str = "samples"
    finish_reason: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    # what the strategy meant this candidate to be: "positive"/"negative" (contrastive),
    # "draft"/"revision" (revise), "original"/"perturbed" (perturb), "production" (captured)
    intent: str | None = None
    parent: str | None = None  # the candidate this one was derived from
    critique: str | None = None  # revise: the critique the revision answers
    # written by something other than the policy being sampled (a reference answer): its pairs
    # are SPIN-style, the reference against the policy's own answer
    off_policy: bool = False
    policy: str | None = None  # "name@version" where the generator follows a policy (GeneratorSpec.policy)


class CandidateSet(Wire, tag="candidates.v1", kw_only=True):
    id: str
    prompt: Prompt
    objective: ObjectiveSpec
    candidates: list[Candidate]
    created_at: float = 0.0
    # `prefstream rejudge`: the id of the stored set these candidates were first judged in
    # (this set re-judges them under ``objective``, with no generator call)
    rejudged_from: str | None = None
