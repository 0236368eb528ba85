"""Wire formats: the only place a message shape is defined."""
from schemas.base import stable_id
from schemas.candidates import Candidate, CandidateSet, Sampling
from schemas.deadletters import DeadLetter
from schemas.feedback import Feedback
from schemas.health import StageHealth
from schemas.judgments import Judged, JudgedSet, RecordRef, Score
from schemas.objectives import (
    CurationSpec,
    EvaluationSpec,
    EvaluatorSpec,
    FewShot,
    GeneratorSpec,
    InstantiationSpec,
    JudgeSpec,
    ObjectiveSpec,
    SynthesisSpec,
)
from schemas.policies import Policy
from schemas.preferences import (RECORD_TYPES, AnyRecord, Outcome, PreferenceRecord, Ranked, RankingRecord,
                                 RewardRecord, Side, UnpairedRecord, Withdrawn)
from schemas.prompts import Curated, Message, Prompt, Verification, prompt_id

__all__ = [
    "Candidate", "CandidateSet", "CurationSpec", "Curated", "DeadLetter", "EvaluationSpec", "EvaluatorSpec",
    "Feedback",
    "FewShot", "GeneratorSpec", "InstantiationSpec", "Judged", "JudgedSet", "JudgeSpec",
    "Message", "ObjectiveSpec", "Outcome", "Policy", "PreferenceRecord", "Prompt", "Sampling", "Score",
    "Side", "StageHealth", "SynthesisSpec", "Verification", "prompt_id", "stable_id",
    "AnyRecord", "RECORD_TYPES", "Ranked", "RankingRecord", "RewardRecord", "UnpairedRecord", "Withdrawn", "RecordRef",
]
