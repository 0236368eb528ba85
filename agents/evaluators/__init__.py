"""Evaluators: verifiers (checked by code) and judges (a model's opinion), and the ensemble
that turns one candidate's scores into the number instantiation ranks by."""
from __future__ import annotations

from typing import Any

from agents.evaluators.base import Evaluator
from agents.evaluators.ensemble import aggregate, validate
from agents.evaluators.ifeval import IFEvalVerifier
from agents.evaluators.judge import PointwiseJudge
from agents.evaluators.math import MathVerifier


def build_evaluators(backends: Any) -> dict[str, Evaluator]:
    """Every evaluator by the name objectives use. ``backends`` supplies the judge's model
    (``Backends(settings)``, or anything with ``get(spec) -> Generator``)."""
    evaluators: list[Evaluator] = [MathVerifier(), IFEvalVerifier(), PointwiseJudge(backends)]
    return {e.name: e for e in evaluators}


__all__ = ["Evaluator", "IFEvalVerifier", "MathVerifier", "PointwiseJudge", "aggregate",
           "build_evaluators", "validate"]
