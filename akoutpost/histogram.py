# -*- test-case-name: tests.test_metrics -*-
"""
A Prometheus histogram for code that runs in the reactor thread only.

C{prometheus_client}'s L{Histogram} takes a lock for every bucket it
increments, so that threads can share it, and checks its labels on every
C{labels()} call.  Every request to an outpost observes one or two
durations, always from the reactor thread, which also answers the scrapes:
L{ReactorHistogram} keeps plain counts instead, and is exposed through the
same registry, with the same buckets and the same text.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

#: prometheus_client's default buckets, ending with +Inf.
BUCKETS: tuple[float, ...] = tuple(float(b) for b in Histogram.DEFAULT_BUCKETS)


class Series:
    """
    One labelled series: how many observations fell in each bucket (not
    cumulated), and their sum.
    """

    __slots__ = ("counts", "total")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.total += value
        self.counts[bisect_left(BUCKETS, value)] += 1


class ReactorHistogram(Collector):
    """
    A labelled histogram whose series are only touched from one thread.
    """

    def __init__(self, name: str, documentation: str, labelNames: Sequence[str], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labelNames = list(labelNames)
        self._series: dict[tuple[str, ...], Series] = {}
        registry.register(self)

    def labels(self, *values: str) -> Series:
        """
        The series with these label values, created empty if new.
        """
        if len(values) != len(self.labelNames):
            raise ValueError(f"{self.name} takes {len(self.labelNames)} labels, not {len(values)}")
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = Series(len(BUCKETS))
        return series

    def remove(self, *values: str) -> None:
        self._series.pop(values, None)

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelNames)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelNames)
        for values, series in self._series.items():
            buckets = []
            cumulated = 0
            for bound, count in zip(BUCKETS, series.counts, strict=True):
                cumulated += count
                buckets.append((floatToGoString(bound), float(cumulated)))
            family.add_metric(list(values), buckets, series.total)
        yield family
