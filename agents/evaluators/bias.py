"""The evaluation's own biases, measured as it runs.

``BiasTracker`` folds in judged sets (and, for the run summary, the pair records made from
them) with running sums only, so a worker can keep one per objective forever. ``figures()``:

``swap_consistency``   share of pairwise comparisons (each pair of candidates once) whose
                       verdict was the same in both orders, over those readable in both
``length_diff_mean``   mean of len(chosen) - len(rejected), in characters, over pairs: the
                       pair records given, else each judged set's best vs worst by score
``length_margin_corr`` Pearson correlation of that length difference with the score margin
``tie_rate``           share of candidate pairs within a set (both scored) with equal scores
``parse_failure_rate`` share of model-judge scores (``judge``, ``pairwise``) whose verdict could not
                       be read even after the retry
``same_family_rate``   share of judged candidates whose writer is of a judge model's family
``evaluators``         per evaluator: ``count`` (scored), ``mean``, ``stdev`` of its values

A figure with nothing to measure is ``None`` (``null`` in JSON), never 0.
``BiasGauges`` publishes them as Prometheus gauges on a registry (labels: objective, figure,
evaluator — all bounded), and per objective version the rate figures' hits and totals as
counters that add up across workers. ``by_version`` computes them from judged sets as read
from the ``judgments`` topic (``prefstream report``).
"""
from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field
from typing import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from agents.evaluators.base import MODEL_JUDGES
from schemas import JudgedSet

FIGURES = ("swap_consistency", "length_diff_mean", "length_margin_corr", "tie_rate",
           "parse_failure_rate", "same_family_rate")
_VENDORS = {"meta", "google", "microsoft", "mistralai", "nvidia", "ibm", "hf", "unsloth", "thebloke",
            "openai", "anthropic", "deepseek-ai", "tiiuae", "allenai"}


def model_family(model: str) -> str:
    """A model's family: the leading letters of its name, lower-cased, without the
    organisation, path, file suffix or a vendor prefix — ``gemma-3-270m`` → ``gemma``,
    ``Qwen/Qwen2.5-7B-Instruct`` → ``qwen``, ``Meta-Llama-3-8B`` → ``llama``."""
    name = model.strip().lower().replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".gguf")
    tokens = [t for t in re.split(r"[-_:. ]+", name) if t]
    while len(tokens) > 1 and tokens[0] in _VENDORS:
        tokens = tokens[1:]
    m = re.match(r"[a-z]+", tokens[0]) if tokens else None
    return m.group(0) if m else name


@dataclass
class _Moments:
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: float) -> None:  # Welford
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)

    def summary(self) -> dict:
        return {"count": self.n, "mean": self.mean if self.n else None,
                "stdev": math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else None}


@dataclass
class _Pairs:
    """Running sums for the mean length difference and its correlation with the margin."""

    n: int = 0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    syy: float = 0.0
    sxy: float = 0.0

    def add(self, length_diff: float, margin: float) -> None:
        self.n += 1
        self.sx, self.sy = self.sx + length_diff, self.sy + margin
        self.sxx, self.syy = self.sxx + length_diff ** 2, self.syy + margin ** 2
        self.sxy += length_diff * margin

    def mean(self) -> float | None:
        return self.sx / self.n if self.n else None

    def corr(self) -> float | None:
        if self.n < 2:
            return None
        var = (self.n * self.sxx - self.sx ** 2) * (self.n * self.syy - self.sy ** 2)
        return (self.n * self.sxy - self.sx * self.sy) / math.sqrt(var) if var > 1e-12 else None


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total else None


@dataclass
class BiasTracker:
    swaps: list[int] = field(default_factory=lambda: [0, 0])  # consistent, readable
    ties: list[int] = field(default_factory=lambda: [0, 0])  # equal, candidate pairs
    parses: list[int] = field(default_factory=lambda: [0, 0])  # failed, verdicts
    families: list[int] = field(default_factory=lambda: [0, 0])  # same, judged
    implied: _Pairs = field(default_factory=_Pairs)  # best vs worst of each judged set
    evaluators: dict[str, _Moments] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)  # judged set ids
    prompt_ids: set[str] = field(default_factory=set)

    def add(self, jset: JudgedSet) -> None:
        """Fold in one judged set (a replayed set, same id, counts once)."""
        if jset.id in self.seen:
            return
        self.seen.add(jset.id)
        self.prompt_ids.add(jset.prompt.id)
        for j in jset.judged:
            if j.same_family is not None:
                self.families[0] += j.same_family
                self.families[1] += 1
            for s in j.scores:
                if s.value is not None:
                    self.evaluators.setdefault(s.evaluator, _Moments()).add(s.value)
                if s.evaluator in MODEL_JUDGES:
                    self.parses[0] += s.error == "parse_failure"
                    self.parses[1] += s.value is not None or s.error == "parse_failure"
                for c in s.comparisons if s.evaluator == "pairwise" else ():
                    if j.candidate.id < c.other and c.consistent is not None:  # each pair once
                        self.swaps[0] += c.consistent
                        self.swaps[1] += 1
        scored = [j for j in jset.judged if j.score is not None]
        for a in range(len(scored)):
            for b in range(a + 1, len(scored)):
                self.ties[0] += scored[a].score == scored[b].score
                self.ties[1] += 1
        if len(scored) >= 2:
            best = max(scored, key=lambda j: j.score)  # type: ignore[arg-type, return-value]
            worst = min(scored, key=lambda j: j.score)  # type: ignore[arg-type, return-value]
            if best.score != worst.score:
                self.implied.add(len(best.candidate.text) - len(worst.candidate.text),
                                 best.score - worst.score)  # type: ignore[operator]

    def figures(self, records: Iterable | None = None) -> dict:
        """The bias figures; ``records`` (pair records) decide the length figures where given."""
        pairs = self.implied
        if records is not None:
            pairs = _Pairs()
            for r in records:
                if getattr(r, "kind", None) == "pair":
                    pairs.add(_text_len(r.chosen) - _text_len(r.rejected), r.margin)
        return {
            "swap_consistency": _rate(*self.swaps),
            "length_diff_mean": pairs.mean(),
            "length_margin_corr": pairs.corr(),
            "tie_rate": _rate(*self.ties),
            "parse_failure_rate": _rate(*self.parses),
            "same_family_rate": _rate(*self.families),
            "evaluators": {name: m.summary() for name, m in sorted(self.evaluators.items())},
        }


def _text_len(messages) -> int:
    return sum(len(m.content or "") for m in messages)


def counts(tracker: BiasTracker) -> dict[str, tuple[int, int]]:
    """The rate figures as additive ``(hits, total)``: summed over workers (or sets), their
    ratio is the figure over all of them."""
    return {"swap_consistency": tuple(tracker.swaps), "tie_rate": tuple(tracker.ties),
            "parse_failure_rate": tuple(tracker.parses), "same_family_rate": tuple(tracker.families)}


def by_version(judged: Iterable[JudgedSet]) -> dict[str, BiasTracker]:
    """One tracker per objective@version over judged sets (a set a late label re-scored
    repeats its first judgment, so only first judgments count)."""
    out: dict[str, BiasTracker] = {}
    for jset in judged:
        if jset.supersedes is None:
            out.setdefault(jset.objective.ref, BiasTracker()).add(jset)
    return out


class BiasGauges:
    """The figures as gauges, one tracker per objective, computed when Prometheus scrapes
    (a judged set only folds into its tracker: no figure is recomputed per message). A figure
    that is ``None`` has no sample, so a dashboard shows a gap, never a false 0.

    Per objective version, comparable across workers: ``prefstream_bias_events_total{objective,
    version, figure, outcome="hit"|"total"}`` counts what each rate figure is made of, so
    ``sum by (objective, version) (…{outcome="hit"}) / sum by (objective, version)
    (…{outcome="total"})`` (or the same over ``increase(…[1h])``) is the figure over every
    worker's judged sets."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.trackers: dict[str, BiasTracker] = {}
        self.versions: dict[tuple[str, int], BiasTracker] = {}
        self.lock = threading.Lock()  # the scrape runs on the metrics server's thread
        registry.register(self)

    def observe(self, jset: JudgedSet) -> None:
        key = (jset.objective.name, jset.objective.version)
        with self.lock:
            for tracker in (self.trackers.setdefault(key[0], BiasTracker()),
                            self.versions.setdefault(key, BiasTracker())):
                tracker.add(jset)
                tracker.seen.clear()  # a live worker needs no replay guard, and memory stays bounded
                tracker.prompt_ids.clear()

    def describe(self):  # the series names, without computing figures at registration
        return self._families()

    def collect(self):
        with self.lock:
            figures = {name: tracker.figures() for name, tracker in self.trackers.items()}
            events = {key: counts(tracker) for key, tracker in self.versions.items()}
        return self._families(figures, events)

    @staticmethod
    def _families(figures: dict | None = None, events: dict | None = None):
        figure = GaugeMetricFamily("prefstream_bias", "Evaluation bias figures over the judged sets this worker "
                                   "produced", labels=["objective", "figure"])
        mean = GaugeMetricFamily("prefstream_evaluator_score_mean", "Mean normalised value per evaluator",
                                 labels=["objective", "evaluator"])
        stdev = GaugeMetricFamily("prefstream_evaluator_score_stdev", "Standard deviation of values per evaluator",
                                  labels=["objective", "evaluator"])
        for name, f in (figures or {}).items():
            for key in FIGURES:
                if f[key] is not None:
                    figure.add_metric([name, key], f[key])
            for evaluator, stats in f["evaluators"].items():
                if stats["mean"] is not None:
                    mean.add_metric([name, evaluator], stats["mean"])
                if stats["stdev"] is not None:
                    stdev.add_metric([name, evaluator], stats["stdev"])
        per_version = CounterMetricFamily(
            "prefstream_bias_events", "What each rate bias figure is made of, per objective version: "
            "hits and total (sum over workers, then divide)", labels=["objective", "version", "figure", "outcome"])
        for (name, version), by_figure in (events or {}).items():
            for key, (hits, total) in by_figure.items():
                per_version.add_metric([name, str(version), key, "hit"], hits)
                per_version.add_metric([name, str(version), key, "total"], total)
        return [figure, mean, stdev, per_version]
