"""The ``objectives`` topic (compacted, key = objective name): what "better" means.

Specs are encoded with every field (no omitted defaults), so a spec read later means
exactly what it meant when it was published, whatever the defaults are by then.
"""
from __future__ import annotations

from typing import Any, Literal

import msgspec

from schemas.base import Part, Wire


class GeneratorSpec(Part, kw_only=True, omit_defaults=False):
    """One model that writes candidates, with its sampling parameters."""

    backend: Literal["llamacpp", "openai", "vllm", "echo"] = "llamacpp"
    model: str = "gemma-3-270m"
    base_url: str | None = None
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 128
    weight: float = 1.0
    count: int | None = None


class FewShot(Part, kw_only=True, omit_defaults=False):
    question: str
    answer: str


class SynthesisSpec(Part, kw_only=True, omit_defaults=False):
    # samples: N samples from the generators; pool: the same over several generators (each
    # with weight/count); contrastive: RLCD, half under a positive and half under a negative
    # system prompt; revise: draft → critique against a principle → revision; perturb: a
    # good response and a deliberately degraded copy of it.
    strategy: Literal["samples", "pool", "contrastive", "revise", "perturb"] = "samples"
    candidates: int = 4
    generators: list[GeneratorSpec] = msgspec.field(default_factory=lambda: [GeneratorSpec()])
    # "completion" renders the prompt as few-shot "Question: ...\nAnswer:" text (base models);
    # "chat" sends the messages through the model's chat template (instruct models).
    prompting: Literal["chat", "completion"] = "chat"
    few_shot: list[FewShot] = []
    stop: list[str] = []
    seed: int = 0
    # contrastive: the system prompts (None = written from the objective's principles)
    positive_prompt: str | None = None
    negative_prompt: str | None = None
    # revise: the critique's length; the principle is picked per prompt from `principles`
    critique_max_tokens: int = 96
    # perturb: which degradations to use, in order of preference where they apply
    perturbations: list[Literal["wrong_answer", "drop_constraint", "truncate"]] = msgspec.field(
        default_factory=lambda: ["wrong_answer", "drop_constraint", "truncate"])


class EvaluatorSpec(Part, kw_only=True, omit_defaults=False):
    name: Literal["math", "ifeval", "judge"]
    weight: float = 1.0
    params: dict[str, Any] = {}


class JudgeSpec(Part, kw_only=True, omit_defaults=False):
    """The pointwise LLM judge: which model, and how it is asked."""

    backend: Literal["llamacpp", "openai", "vllm", "echo"] = "llamacpp"
    model: str = "gemma-3-270m"
    base_url: str | None = None
    prompting: Literal["chat", "completion"] = "completion"
    scale: int = 10
    max_tokens: int = 8
    retries: int = 1


class EvaluationSpec(Part, kw_only=True, omit_defaults=False):
    evaluators: list[EvaluatorSpec] = msgspec.field(
        default_factory=lambda: [
            EvaluatorSpec(name="math"),
            EvaluatorSpec(name="ifeval"),
            EvaluatorSpec(name="judge"),
        ]
    )
    # "verifiers_first": where a verifier applies, its verdict is the score (a failing
    # candidate never outranks a passing one); elsewhere the weighted mean of the rest.
    # "weighted_mean": one weighted mean over every evaluator that scored.
    aggregation: Literal["verifiers_first", "weighted_mean"] = "verifiers_first"
    judge: JudgeSpec = JudgeSpec()


class InstantiationSpec(Part, kw_only=True, omit_defaults=False):
    pairs: Literal["best_vs_worst"] = "best_vs_worst"
    min_margin: float = 0.2


class ObjectiveSpec(Wire, tag="objective.v1", kw_only=True, omit_defaults=False):
    name: str
    version: int = 1
    principles: list[str] = []
    synthesis: SynthesisSpec = SynthesisSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    instantiation: InstantiationSpec = InstantiationSpec()
    status: Literal["active", "shadow", "retired"] = "active"

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"
