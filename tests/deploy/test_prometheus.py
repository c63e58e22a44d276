"""Questions to a real Prometheus that has scraped the real service while it served teacher and
student traffic. `.ci/prometheus_check.sh` sets all of that up and sets DISTILSERVE_PROMETHEUS_URL;
without it there is no Prometheus to ask, and these tests are skipped."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

PROMETHEUS = os.environ.get("DISTILSERVE_PROMETHEUS_URL", "")
pytestmark = pytest.mark.skipif(
    not PROMETHEUS, reason="needs a Prometheus scraping the service: run .ci/prometheus_check.sh"
)
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/dashboards/distilserve.json"
WINDOW = "2m"


def query(expr: str) -> list[dict]:
    """Instant query through the HTTP API; a PromQL error fails the test with Prometheus' message."""
    response = httpx.get(f"{PROMETHEUS}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert response.status_code == 200, f"{expr}: {body}"
    assert body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def query_until(expr: str, done: Callable[[list[dict]], bool], seconds: float = 15.0) -> list[dict]:
    """Query until `done(result)` holds (scrapes land every second), returning the last result."""
    deadline = time.monotonic() + seconds
    result = query(expr)
    while not done(result) and time.monotonic() < deadline:
        time.sleep(0.5)
        result = query(expr)
    return result


def p95(by: str) -> str:
    return (f"histogram_quantile(0.95, sum by ({by}, le) "
            f"(rate(distilserve_request_duration_seconds_bucket[{WINDOW}])))")


def roles(result: list[dict]) -> set[str]:
    return {series["metric"].get("role") for series in result}


def test_the_service_is_scraped() -> None:
    result = query_until('up{job="distilserve"}', lambda r: bool(r) and r[0]["value"][1] == "1")
    assert [s["value"][1] for s in result] == ["1"]


def test_p95_latency_by_role_has_teacher_and_student_and_is_plausible() -> None:
    result = query_until(p95("role"), lambda r: {"teacher", "student"} <= roles(r))
    assert roles(result) == {"teacher", "student"}
    for series in result:
        seconds = float(series["value"][1])
        assert math.isfinite(seconds), series
        assert 0 < seconds < 10, series


def test_p95_latency_by_role_and_task_covers_every_task_served() -> None:
    tasks = {s["metric"]["task"] for s in query('count by (task) (distilserve_model_info)')}
    assert tasks, "distilserve_model_info has no series"
    result = query_until(p95("role, task"), lambda r: len(r) >= 2 * len(tasks))
    pairs = {(s["metric"]["task"], s["metric"]["role"]) for s in result if math.isfinite(float(s["value"][1]))}
    assert pairs == {(t, r) for t in tasks for r in ("teacher", "student")}


def test_student_requests_were_counted_per_role() -> None:
    result = query(f'sum by (role) (increase(distilserve_requests_total{{status="200"}}[{WINDOW}]))')
    counted = {s["metric"]["role"]: float(s["value"][1]) for s in result}
    assert set(counted) == {"teacher", "student"}, counted
    assert min(counted.values()) > 10, counted


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    # What Grafana substitutes before sending: variables set to "All", its rate interval.
    return [e.replace("$__rate_interval", WINDOW).replace("$task", ".*").replace("$backend", ".*") for e in exprs]


def test_every_dashboard_query_is_valid_promql() -> None:
    bad = {}
    for expr in dashboard_exprs():
        body = httpx.get(f"{PROMETHEUS}/api/v1/query", params={"query": expr}, timeout=10).json()
        if body["status"] != "success":
            bad[expr] = body.get("error")
    assert not bad, bad


def test_dashboard_latency_panels_show_data() -> None:
    latency = [e for e in dashboard_exprs() if "distilserve_request_duration_seconds" in e]
    assert latency
    for expr in latency:
        assert query_until(expr, bool), f"no data for dashboard query {expr}"
