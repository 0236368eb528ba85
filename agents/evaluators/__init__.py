"""Evaluators: verifiers (checked by code), model judges and reward models (a model's
opinion), human labels, heuristics (features and guards), and the ensemble that turns a
candidate set's scores into the numbers instantiation ranks by."""
from __future__ import annotations

from typing import Any

from agents.evaluators.base import Evaluator
from agents.evaluators.code import CodeVerifier
from agents.evaluators.ensemble import aggregate, aggregate_set, validate
from agents.evaluators.heuristics import InjectionGuard, LengthFeature, RefusalFeature, RepetitionFeature
from agents.evaluators.human import FeedbackStore, HumanEvaluator
from agents.evaluators.ifeval import IFEvalVerifier
from agents.evaluators.json_schema import JsonSchemaVerifier
from agents.evaluators.judge import PointwiseJudge
from agents.evaluators.math import MathVerifier
from agents.evaluators.pairwise import PairwiseJudge
from agents.evaluators.regex import RegexVerifier
from agents.evaluators.reward import RewardModel


def build_evaluators(backends: Any, settings: Any = None,
                     feedback: FeedbackStore | None = None) -> dict[str, Evaluator]:
    """Every evaluator by the name objectives use. ``backends`` supplies the judges' model
    (``Backends(settings)``, or anything with ``get(spec) -> Generator``). ``settings`` lets
    the ``human`` evaluator follow the feedback topic (taken from ``backends`` where not
    given); without either it scores from ``feedback`` as fed."""
    settings = settings if settings is not None else getattr(backends, "_settings", None)
    evaluators: list[Evaluator] = [
        MathVerifier(), IFEvalVerifier(), CodeVerifier(), JsonSchemaVerifier(), RegexVerifier(),
        PointwiseJudge(backends), PairwiseJudge(backends), RewardModel(),
        HumanEvaluator(feedback, settings=settings),
        LengthFeature(), RepetitionFeature(), RefusalFeature(), InjectionGuard(),
    ]
    return {e.name: e for e in evaluators}


__all__ = ["CodeVerifier", "Evaluator", "FeedbackStore", "HumanEvaluator", "IFEvalVerifier",
           "JsonSchemaVerifier", "MathVerifier", "PairwiseJudge", "PointwiseJudge", "RegexVerifier",
           "RewardModel", "aggregate", "aggregate_set", "build_evaluators", "validate"]
