"""The ``objectives`` topic (compacted, key = objective name): what "better" means.

Specs are encoded with every field (no omitted defaults), so a spec read later means
exactly what it meant when it was published, whatever the defaults are by then.
"""
from __future__ import annotations

from typing import Any, Literal, get_args

# each concept list once: the backends a model runs on, the PII kinds curate scrubs
BackendName = Literal["llamacpp", "openai", "vllm", "echo"]
PiiKind = Literal["email", "phone", "card", "iban", "ip", "secret"]

import msgspec

from schemas.base import Part, Wire


class GeneratorSpec(Part, kw_only=True, omit_defaults=False):
    """One model that writes candidates, with its sampling parameters."""

    # "reference": no model; the prompt's own reference answer (a GSM8K solution, a plain
    # `answer`, a production response with positive feedback) joins as one off-policy candidate
    backend: Literal[BackendName, "reference"] = "llamacpp"
    model: str = "gemma-3-270m"
    base_url: str | None = None
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 128
    weight: float = 1.0
    count: int | None = None
    # a published policy (`prefstream policy publish NAME`): its newest version's LoRA adapter over
    # `model` (llamacpp: the GGUF file; openai: the adapter vLLM loads and serves), taken at each
    # prompt; candidates and records carry `policy: NAME@VERSION`. None: the fixed model.
    policy: str | None = None


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
    # agent trajectories: where to branch a trajectory (``Prompt.messages`` with assistant tool
    # calls and tool results). "off": answer the whole history. "first"/"last": at the first /
    # last assistant turn (or after the history where it does not end in one); "all": at every
    # one. Candidates are the next assistant action (a tool call or a final answer) from the
    # prefix before that turn; records carry ``step``, the index of that turn.
    branch: Literal["off", "first", "last", "all"] = "off"
    # adaptive sampling (samples/pool): a set that would make no pair (ties, or under the
    # margin) draws `candidates` more samples at a time until it pairs or holds this many
    # sampled candidates (None or <= `candidates`: off)
    max_candidates: int | None = None

    def __post_init__(self) -> None:
        if self.branch != "off" and self.strategy not in ("samples", "pool"):
            raise ValueError(f"synthesis.branch {self.branch!r} works with the samples or pool strategy, "
                             f"not {self.strategy!r}")


# verifiers: math, ifeval, code, json_schema, regex; model judges: judge (pointwise),
# pairwise, reward (a reward model behind vLLM's pooling/score API); human: labels from the
# `feedback` topic; heuristics (features): length, repetition, refusal, injection.
EvaluatorName = Literal["math", "ifeval", "judge", "pairwise", "reward", "code", "json_schema", "regex",
                        "human", "length", "repetition", "refusal", "injection", "outcome", "process"]


class EvaluatorSpec(Part, kw_only=True, omit_defaults=False):
    name: EvaluatorName
    weight: float = 1.0
    params: dict[str, Any] = {}


class JudgeSpec(Part, kw_only=True, omit_defaults=False):
    """The pointwise LLM judge: which model, and how it is asked."""

    backend: BackendName = "llamacpp"
    model: str = "gemma-3-270m"
    base_url: str | None = None
    prompting: Literal["chat", "completion"] = "completion"
    scale: int = 10
    max_tokens: int = 8
    retries: int = 1
    # the backend enforces the answer's form: a GBNF grammar on llama.cpp, a JSON schema
    # (`response_format`) on the OpenAI-compatible path; output that cannot be read is then rare
    structured: bool = True
    # one score per principle (combined by `principle_weights`, equal where empty) and a short
    # reason, instead of one overall score
    per_principle: bool = False
    principle_weights: list[float] = []


MAX_LATE_LABEL_DAYS = 30.0  # how far back a late label looks for its judged set


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
    # "borda" / "reciprocal_rank": each evaluator ranks the set; a candidate's score is the
    # weighted mean of its Borda points (share of candidates it beats, ties half) or of 1/rank.
    aggregation: Literal["verifiers_first", "weighted_mean", "borda", "reciprocal_rank"] = "verifiers_first"
    judge: JudgeSpec = JudgeSpec()
    # per evaluator, how its values are spread within a candidate set before aggregation:
    # "minmax" (0 worst .. 1 best), "zscore" (sigmoid of the z-score), "rank" (Borda points);
    # a set the evaluator cannot tell apart gets 0.5. The records keep the evaluator's own values.
    normalise: dict[str, Literal["none", "minmax", "zscore", "rank"]] = {}
    # heuristics scored on every candidate as features (weight 0 unless `evaluators` names them)
    features: list[EvaluatorName] = msgspec.field(default_factory=lambda: ["length", "repetition", "refusal"])
    # a candidate any guard scores below 0.5 gets ensemble score 0 (it can still be `rejected`)
    guards: list[EvaluatorName] = msgspec.field(default_factory=lambda: ["injection"])
    # a human label (`feedback`) that arrives at most this many days after its set was judged
    # re-scores the set and supersedes its records (agents.relabel); 0 = late labels never count
    late_label_days: float = 7.0
    # where the model judges disagree about a set's pair (no verifier decides it), the pointwise
    # judge reads the set once more in its other form (per principle or not); the readings average
    reread_disputed: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.late_label_days <= MAX_LATE_LABEL_DAYS:
            raise ValueError(f"evaluation.late_label_days must be in [0, {MAX_LATE_LABEL_DAYS:g}], "
                             f"not {self.late_label_days}")


class InstantiationSpec(Part, kw_only=True, omit_defaults=False):
    """Which training records one judged set becomes; pairs, unpaired labels, a ranking
    and scalar rewards can all be on at once. Scores are the ensemble's, in [0, 1]."""

    # best_vs_worst: one pair; best_vs_each: the best against every other candidate;
    # all_pairs: every pair; none: no pairs. A pair needs chosen - rejected >= min_margin;
    # ties and identical texts never become pairs.
    pairs: Literal["best_vs_worst", "best_vs_each", "all_pairs", "none"] = "best_vs_worst"
    min_margin: float = 0.2
    # a pair whose chosen side is over length_ratio times as long as the rejected one (the
    # "length" evaluator's figure where present, else characters) wins mainly by length:
    # "count" keeps and flags it, "drop" drops it; both are counted in the outcome.
    length_guard: Literal["off", "count", "drop"] = "off"
    length_ratio: float = 1.5
    # unpaired (KTO/BCO): score >= kto_desirable → label true, <= kto_undesirable → false,
    # in between no record
    kto: bool = False
    kto_desirable: float = 0.8
    kto_undesirable: float = 0.2
    ranking: bool = False  # listwise: every scored candidate, ordered, with its score
    rewards: bool = False  # scalar: each scored candidate with its score as the reward
    # difficulty tag on records and prompt stats, from the verifiers' pass rate over the set:
    # at or above easy_pass_rate "easy", at or below hard_pass_rate "hard", else "medium"
    easy_pass_rate: float = 0.75
    hard_pass_rate: float = 0.25

    def __post_init__(self) -> None:
        if not 0.0 <= self.hard_pass_rate < self.easy_pass_rate <= 1.0:
            raise ValueError(f"instantiation: need 0 <= hard_pass_rate ({self.hard_pass_rate}) < easy_pass_rate "
                             f"({self.easy_pass_rate}) <= 1")
        if self.min_margin < 0:
            raise ValueError(f"instantiation.min_margin must be >= 0, not {self.min_margin}")
        if self.length_ratio < 1:
            raise ValueError(f"instantiation.length_ratio must be >= 1, not {self.length_ratio}")
        if self.kto_undesirable >= self.kto_desirable:
            raise ValueError(f"instantiation.kto_undesirable ({self.kto_undesirable}) must be below "
                             f"kto_desirable ({self.kto_desirable})")


class RoutingSpec(Part, kw_only=True, omit_defaults=False):
    """Which prompts an objective takes besides those that name it. Each criterion given
    narrows: ``tags`` (any of them), ``sources`` (any of them), then ``fraction`` (a
    deterministic sample by prompt id, in [0, 1]). No criterion: only prompts naming it
    (or, for the default objective, prompts naming none)."""

    tags: list[str] = []
    sources: list[str] = []
    fraction: float | None = None


class DedupSpec(Part, kw_only=True, omit_defaults=False):
    """Duplicate prompts under one objective (its user turns, normalised): ``exact`` by hash;
    ``near`` adds the embedding model (cosine >= ``threshold``) for prompts up to ``long_chars``
    and MinHash (estimated Jaccard of word 5-grams >= ``minhash_threshold``) for longer ones.
    A duplicate ends as a ``dropped`` outcome naming the prompt it repeats. ``window``: prompts
    remembered per objective (the oldest are forgotten first)."""

    mode: Literal["off", "exact", "near"] = "off"
    threshold: float = 0.95
    minhash_threshold: float = 0.8
    long_chars: int = 1000
    window: int = 10000

    def __post_init__(self) -> None:
        for name in ("threshold", "minhash_threshold"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"curation.dedup.{name} must be in (0, 1], not {getattr(self, name)}")
        if self.window < 1 or self.long_chars < 1:
            raise ValueError("curation.dedup.window and long_chars must be >= 1")


class UtilitySpec(Part, kw_only=True, omit_defaults=False):
    """Prompt utility: every judged set reports how informative its prompt was (``prompt-stats``);
    curate keeps a decaying estimate per family and spends at most ``budget`` of generation on
    families whose estimate is below ``low`` (after ``warmup`` judged sets; a low family is
    sampled up to that share, the rest dropped with the reason). ``budget`` None: off.
    ``burst``: how many low-family prompts may go through at once after a run of others.
    ``family``: by the prompt's tags, its source, or an embedding cluster (cosine >=
    ``cluster_threshold`` to the cluster's first prompt)."""

    budget: float | None = None
    low: float = 0.2
    decay: float = 0.7  # the share of the old estimate kept per new judged set
    warmup: int = 3
    family: Literal["tags", "source", "cluster"] = "tags"
    cluster_threshold: float = 0.6
    burst: float = 3.0

    def __post_init__(self) -> None:
        if self.budget is not None and not 0.0 <= self.budget <= 1.0:
            raise ValueError(f"curation.utility.budget must be in [0, 1], not {self.budget}")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"curation.utility.decay must be in [0, 1), not {self.decay}")
        if self.warmup < 1 or self.burst < 1:
            raise ValueError("curation.utility.warmup and burst must be >= 1")


class CurationSpec(Part, kw_only=True, omit_defaults=False):
    """What curate does to a prompt before any model sees it. ``pii``: the kinds of personal
    data and secrets replaced by typed placeholders (an empty list turns scrubbing off)."""

    pii: list[PiiKind] = msgspec.field(default_factory=lambda: list(get_args(PiiKind)))
    dedup: DedupSpec = DedupSpec()
    utility: UtilitySpec = UtilitySpec()


class ObjectiveSpec(Wire, tag="objective.v1", kw_only=True, omit_defaults=False):
    name: str
    version: int = 1
    principles: list[str] = []
    synthesis: SynthesisSpec = SynthesisSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    instantiation: InstantiationSpec = InstantiationSpec()
    status: Literal["active", "shadow", "retired"] = "active"
    routing: RoutingSpec = RoutingSpec()
    curation: CurationSpec = CurationSpec()

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"
