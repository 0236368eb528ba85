"""Every topic, declared once: its name under the namespace, partitions, key and value type."""
from __future__ import annotations

from dataclasses import dataclass
import typing
from typing import Any

import msgspec

from schemas import (AnyRecord, CandidateSet, Curated, DeadLetter, Feedback, JudgedSet, ObjectiveSpec, Outcome, Policy,
                     Prompt, StageHealth)
from schemas.stats import PromptStats


@dataclass(frozen=True)
class TopicSpec:
    short: str  # "prompts"
    value_type: Any
    key: str  # what the key holds
    partitions: int | None = None  # None = the settings' default
    compacted: bool = False
    # the Settings field holding this topic's ``retention.ms`` (-1: kept forever); None: the broker's
    retention: str | None = None


PROMPTS = TopicSpec("prompts", Prompt, key="prompt id")
CURATED = TopicSpec("curated", Curated, key="prompt id")
OBJECTIVES = TopicSpec("objectives", ObjectiveSpec, key="objective name", partitions=1, compacted=True)
# every published version, never compacted: `objective history/show --version/rollback` read it
OBJECTIVE_HISTORY = TopicSpec("objective-history", ObjectiveSpec, key="objective name", partitions=1)
# LoRA adapters generators may name (`policy: NAME`): the newest per name, and every version kept
# (`prefstream policy history/show/rollback`, the tap's staleness bound read it)
POLICIES = TopicSpec("policies", Policy, key="policy name", partitions=1, compacted=True)
POLICY_HISTORY = TopicSpec("policy-history", Policy, key="policy name", partitions=1)
# `prefstream rejudge` re-judges stored candidate sets: they are kept as long as objectives may
# reach back (PREFSTREAM_CANDIDATES_RETENTION_MS, 30 days by default)
CANDIDATES = TopicSpec("candidates", CandidateSet, key="prompt id", retention="candidates_retention_ms")
JUDGMENTS = TopicSpec("judgments", JudgedSet, key="prompt id")
PREFERENCES = TopicSpec("preferences", AnyRecord, key="prompt id")  # pair | unpaired | ranking | reward
PREFERENCES_SHADOW = TopicSpec("preferences-shadow", AnyRecord, key="prompt id")  # shadow objectives' records
OUTCOMES = TopicSpec("outcomes", Outcome, key="prompt id")
DEADLETTERS = TopicSpec("deadletters", DeadLetter, key="prompt id or original key")
FEEDBACK = TopicSpec("feedback", Feedback, key="prompt id")
# every human label, kept for good: key = the labelled id (candidate or production response) and
# the labeller, so a changed label replaces the old one (agents.relabel writes it, the human
# evaluator reads it at start)
LABELS = TopicSpec("labels", Feedback, key="labelled id/user", compacted=True)
PROMPT_STATS = TopicSpec("prompt-stats", PromptStats, key="prompt id")  # instantiate → curate's utility estimate
# each worker's stages, running or blocked by the environment (`status`, `run` read it)
HEALTH = TopicSpec("health", StageHealth, key="worker/stage", partitions=1, compacted=True)

ALL: tuple[TopicSpec, ...] = (PROMPTS, CURATED, OBJECTIVES, CANDIDATES, JUDGMENTS, PREFERENCES,
                              OUTCOMES, DEADLETTERS, FEEDBACK, OBJECTIVE_HISTORY, PREFERENCES_SHADOW, PROMPT_STATS,
                              HEALTH, LABELS, POLICIES, POLICY_HISTORY)


# what decoding bad bytes raises: invalid JSON or types (msgspec.DecodeError), invalid UTF-8
# inside a string (UnicodeDecodeError), JSON nested deeper than Python's recursion limit
MALFORMED = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


class Codec:
    """One encoder and one typed decoder for a topic, built once."""

    def __init__(self, value_type: Any) -> None:
        self.value_type = value_type
        members = typing.get_args(value_type) or (value_type,)  # a tagged union, or one type
        self.tag = "|".join(t.__struct_config__.tag for t in members)
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(value_type)

    def encode(self, value: Any) -> bytes:
        return self._encoder.encode(value)

    def decode(self, data: bytes) -> Any:
        return self._decoder.decode(data)


@dataclass(frozen=True)
class Topic:
    spec: TopicSpec
    name: str
    partitions: int
    codec: Codec


class Topics:
    """The concrete topics of one namespace: ``topics.prompts.name == "prefstream.prompts"``."""

    def __init__(self, namespace: str = "prefstream", partitions: int = 4) -> None:
        if not namespace or any(c in namespace for c in " /\\"):
            raise ValueError(f"namespace {namespace!r} must be non-empty with no spaces or slashes")
        self.namespace = namespace
        self._by_short = {
            s.short: Topic(s, f"{namespace}.{s.short}", s.partitions or partitions, Codec(s.value_type))
            for s in ALL
        }

    def __getattr__(self, short: str) -> Topic:
        """``topics.preferences_shadow`` is the ``preferences-shadow`` topic."""
        by_short = self.__dict__["_by_short"]
        try:
            return by_short[short] if short in by_short else by_short[short.replace("_", "-")]
        except KeyError:
            raise AttributeError(short) from None

    def __iter__(self):
        return iter(self._by_short.values())

    def of(self, spec: TopicSpec) -> Topic:
        """The concrete topic of a declared one."""
        return self._by_short[spec.short]

    def by_name(self, name: str) -> Topic:
        for t in self._by_short.values():
            if t.name == name:
                return t
        raise KeyError(name)


def from_settings(settings) -> Topics:
    return Topics(settings.namespace, settings.partitions)
