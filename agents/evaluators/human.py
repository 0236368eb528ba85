"""Human feedback: labels from the ``feedback`` topic join the ensemble as the ``human``
evaluator.

``FeedbackStore`` keeps, in memory and bounded, the labels seen per labelled id (a candidate
id, or a production response id): at most ``max_ids`` ids (the least recently labelled are
forgotten first) and ``max_labels`` labels per id (the newest kept). Each key (``Feedback.user``,
the API key's hash) holds one label per id, its newest, so one key cannot outweigh or push out
the labels of others by sending many; a label without a user is counted once per ``Feedback.id``
however often it is replayed. ``follow()`` feeds it from the compacted ``labels`` topic (every
label ever given, kept by ``agents.relabel``) and the ``feedback`` topic, from the beginning,
forever, like ``ObjectiveRegistry.follow``: a restarted worker has every label. A label that
comes after its set was judged re-scores that set (``agents.relabel``).

What a label says about one id, in [0, 1]: ``thumbs`` 1/0; ``score`` its value; ``ab`` 1 to
the chosen side and 0 to the other (0.5 each for a tie). ``HumanEvaluator`` scores a
candidate with the mean of its labels — looked up by candidate id and, for the production
response a captured prompt carries, by the response id the capture recorded. A candidate no
one labelled is unscored (``error="no_feedback"``), so it changes nothing.

The first ``score()`` call starts the reader (in the worker's event loop) and waits up to
``params.wait_s`` (default 5 s) for it to catch up, so labels already on the topic count.
"""
from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from agents.evaluators.base import params_of
from schemas import Candidate, Feedback, ObjectiveSpec, Prompt, Score

log = logging.getLogger(__name__)

IDLE_POLLS = 4


def label_values(fb: Feedback) -> list[tuple[str, float]]:
    """``(labelled id, value in [0, 1])`` for each id one label speaks about."""
    a = fb.candidate_id or fb.response_id
    if fb.kind == "ab" and fb.other_id:
        return [(a, fb.value), (fb.other_id, 1.0 - fb.value)]  # type: ignore[list-item]
    return [(a, fb.value)]  # type: ignore[list-item]


class FeedbackStore:
    def __init__(self, max_ids: int = 100_000, max_labels: int = 32) -> None:
        self.max_ids, self.max_labels = max_ids, max_labels
        self._labels: OrderedDict[str, OrderedDict[str, float]] = OrderedDict()
        self.ready = asyncio.Event()
        self._task: asyncio.Task | None = None

    def __len__(self) -> int:
        return len(self._labels)

    def add(self, fb: Feedback) -> None:
        who = f"user:{fb.user}" if fb.user else fb.id  # one label per (key, labelled id): the newest
        for key, value in label_values(fb):
            labels = self._labels.pop(key, None) or OrderedDict()
            labels.pop(who, None)
            labels[who] = value
            while len(labels) > self.max_labels:
                labels.popitem(last=False)
            self._labels[key] = labels  # now the most recently labelled
            while len(self._labels) > self.max_ids:
                self._labels.popitem(last=False)

    def labels(self, key: str) -> list[float]:
        return list(self._labels.get(key, {}).values())

    async def follow(self, settings, topics) -> None:
        """Read the ``labels`` topic (compacted: every label kept) and the ``feedback`` topic
        (the newest labels, before ``relabel`` copied them) from the start, forever; ``ready``
        once both caught up."""
        from streams.admin import follow

        caught: set[str] = set()

        def reader(topic):
            async def after_poll(consumer, idle: int) -> None:
                if idle >= IDLE_POLLS and topic.name not in caught:
                    caught.add(topic.name)
                    if len(caught) == 2:
                        self.ready.set()
                        log.info("labels caught up: labels for %d ids", len(self))

            return follow(settings, topic, self.add, after_poll)

        await asyncio.gather(reader(topics.labels), reader(topics.feedback))

    def start(self, settings, topics) -> None:
        """Start ``follow()`` as a background task once (a failed reader is restarted on the
        next call)."""
        if self._task is None or self._task.done():
            if self._task is not None and not self._task.cancelled() and self._task.exception():
                log.error("feedback reader stopped: %r; restarting", self._task.exception())
            self._task = asyncio.get_running_loop().create_task(self.follow(settings, topics))


def candidate_keys(prompt: Prompt, c: Candidate) -> list[str]:
    keys = [c.id]
    rid = prompt.metadata.get("production_response_id")
    if c.intent == "production" and isinstance(rid, str) and rid:
        keys.append(rid)
    return keys


class HumanEvaluator:
    name = "human"
    kind = "human"

    def __init__(self, store: FeedbackStore | None = None, settings=None, topics=None) -> None:
        self.store = store or FeedbackStore()
        self._settings, self._topics = settings, topics
        self._catch_up: asyncio.Future | None = None

    def applies(self, prompt: Prompt) -> bool:
        return True

    async def _follow(self, objective: ObjectiveSpec) -> None:
        """Keep the reader running; until it first caught up (or ``wait_s`` passed), wait."""
        if self._topics is None:
            from streams.topics import from_settings

            self._topics = from_settings(self._settings)
        self.store.start(self._settings, self._topics)
        if self._catch_up is None:
            wait_s = float(params_of(objective, self.name).get("wait_s", 5.0))
            self._catch_up = asyncio.ensure_future(self._wait_ready(wait_s))
        await asyncio.shield(self._catch_up)

    async def _wait_ready(self, wait_s: float) -> None:
        try:
            await asyncio.wait_for(self.store.ready.wait(), wait_s)
        except asyncio.TimeoutError:
            log.warning("feedback reader not caught up after %.1fs; scoring with what it has", wait_s)

    async def score(self, prompt: Prompt, candidates: list[Candidate],
                    objective: ObjectiveSpec) -> list[Score]:
        if self._settings is not None:  # else fed directly (tests, or a caller running follow())
            await self._follow(objective)
        return [self.one(prompt, c) for c in candidates]

    def one(self, prompt: Prompt, c: Candidate) -> Score:
        values = [v for key in candidate_keys(prompt, c) for v in self.store.labels(key)]
        if not values:
            return Score(evaluator=self.name, kind=self.kind, value=None, error="no_feedback")
        mean = sum(values) / len(values)
        return Score(evaluator=self.name, kind=self.kind, value=mean, raw=float(len(values)),
                     rationale=f"mean of {len(values)} human label(s)")
