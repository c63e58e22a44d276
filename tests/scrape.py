"""Reading /metrics in tests. The registry is process-wide (every app of the test session, and
every earlier test, adds to the same series), so assertions take a scrape before and after what
they test and compare the two: `delta(before, after, name, **labels)`."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str, prefix: str = "distilserve_") -> Samples:
    """Every sample of the exposition text whose name starts with `prefix`."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text) if family.name.startswith(prefix)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over the series of `name` whose labels include `labels` (0 when there is none)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)
