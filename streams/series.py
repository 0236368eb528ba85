"""The worker's series: ``LoopCounter``, ``LoopGauge`` and ``LoopHistogram`` as plain numbers the event loop
adds to (cheaper per update than prometheus-client's locked values: `benchmarks/stages.py
--metrics-compare`, figures in docs/benchmarks.md), each
family a collector on a prometheus-client registry that turns them into the usual families when
/metrics is scraped (same names, labels, buckets and ``le`` strings).

Only the event-loop thread updates them; a scrape from the server's thread copies the children
atomically and reads numbers an update may follow by one.
"""
from __future__ import annotations

import bisect
import math
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString


class _Family:
    """One metric with labels, registered on ``registry`` as a collector; ``labels(*values)``
    gives the child that holds the numbers."""

    def __init__(self, name: str, documentation: str, labelnames: list[str], registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._children: dict[tuple[str, ...], Any] = {}
        registry.register(self)

    def labels(self, *values: str):
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: {len(self.labelnames)} label values expected ({self.labelnames}), "
                             f"got {values!r}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._child()
        return child

    def _child(self):
        return _Value()

    def _series(self):
        return self._children.copy().items()  # copy() is atomic: the loop thread may add a child

    def _family(self):
        raise NotImplementedError

    def describe(self):
        return [self._family()]  # the names, for the registry's duplicate check

    def collect(self):
        family = self._family()
        for key, child in self._series():
            family.add_metric(key, child.value)
        yield family


class _Value:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class LoopCounter(_Family):
    def _family(self):
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)


class LoopGauge(_Family):
    def _family(self):
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)


class _Observations:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds, self.counts, self.sum = bounds, [0] * len(bounds), 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1  # le: a bucket holds its bound
        self.sum += amount


class LoopHistogram(_Family):
    def __init__(self, name: str, documentation: str, labelnames: list[str], registry: CollectorRegistry,
                 buckets: tuple[float, ...]) -> None:
        self.bounds = tuple(sorted(float(b) for b in buckets if b != math.inf)) + (math.inf,)
        super().__init__(name, documentation, labelnames, registry)

    def _child(self) -> _Observations:
        return _Observations(self.bounds)

    def _family(self):
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self):
        family = self._family()
        for key, child in self._series():
            counts, running, buckets = list(child.counts), 0, []
            for bound, n in zip(self.bounds, counts):
                running += n
                buckets.append((floatToGoString(bound), running))
            family.add_metric(key, buckets, child.sum)
        yield family
