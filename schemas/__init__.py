"""Wire formats: the only place a message shape is defined."""
from schemas.base import stable_id
from schemas.candidates import Candidate, CandidateSet, Sampling
from schemas.deadletters import DeadLetter
from schemas.judgments import Judged, JudgedSet, Score
from schemas.objectives import (
    EvaluationSpec,
    EvaluatorSpec,
    FewShot,
    GeneratorSpec,
    InstantiationSpec,
    JudgeSpec,
    ObjectiveSpec,
    SynthesisSpec,
)
from schemas.preferences import Outcome, PreferenceRecord, Side
from schemas.prompts import Curated, Message, Prompt, Verification, prompt_id

__all__ = [
    "Candidate", "CandidateSet", "Curated", "DeadLetter", "EvaluationSpec", "EvaluatorSpec",
    "FewShot", "GeneratorSpec", "InstantiationSpec", "Judged", "JudgedSet", "JudgeSpec",
    "Message", "ObjectiveSpec", "Outcome", "PreferenceRecord", "Prompt", "Sampling", "Score",
    "Side", "SynthesisSpec", "Verification", "prompt_id", "stable_id",
]
