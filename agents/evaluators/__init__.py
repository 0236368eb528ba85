"""Evaluators: verifiers (checked by code), model judges and reward models (a model's
opinion), human labels, heuristics (features and guards), and the ensemble that turns a
candidate set's scores into the numbers instantiation ranks by.

The evaluator modules load heavy libraries (nltk, sympy, …); they are imported when first
used, so importing this package (e.g. for ``validate``) stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

from agents.evaluators.base import Evaluator
from agents.evaluators.ensemble import aggregate, aggregate_set, validate

_CLASSES = {
    "MathVerifier": "math", "IFEvalVerifier": "ifeval", "CodeVerifier": "code",
    "JsonSchemaVerifier": "json_schema", "RegexVerifier": "regex", "PointwiseJudge": "judge",
    "PairwiseJudge": "pairwise", "RewardModel": "reward", "HumanEvaluator": "human", "FeedbackStore": "human",
    "LengthFeature": "heuristics", "RepetitionFeature": "heuristics", "RefusalFeature": "heuristics",
    "InjectionGuard": "heuristics", "OutcomeVerifier": "trajectory", "ProcessVerifier": "trajectory",
}


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        return getattr(importlib.import_module(f"agents.evaluators.{_CLASSES[name]}"), name)
    raise AttributeError(name)


def build_evaluators(backends: Any, settings: Any = None, feedback: Any = None) -> dict[str, Evaluator]:
    """Every evaluator by the name objectives use. ``backends`` supplies the judges' model
    (``Backends(settings)``, or anything with ``get(spec) -> Generator``). ``settings`` lets
    the ``human`` evaluator follow the feedback topic (taken from ``backends`` where not
    given); without either it scores from ``feedback`` as fed."""
    g = __getattr__
    settings = settings if settings is not None else getattr(backends, "_settings", None)
    evaluators: list[Evaluator] = [
        g("MathVerifier")(), g("IFEvalVerifier")(), g("CodeVerifier")(settings), g("JsonSchemaVerifier")(),
        g("RegexVerifier")(), g("PointwiseJudge")(backends), g("PairwiseJudge")(backends), g("RewardModel")(settings),
        g("HumanEvaluator")(feedback, settings=settings),
        g("LengthFeature")(), g("RepetitionFeature")(), g("RefusalFeature")(), g("InjectionGuard")(),
        g("OutcomeVerifier")(backends), g("ProcessVerifier")(),
    ]
    return {e.name: e for e in evaluators}


__all__ = ["Evaluator", "aggregate", "aggregate_set", "build_evaluators", "validate", *_CLASSES]
