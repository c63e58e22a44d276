"""The Kubernetes manifests (deploy/k8s), checked without a cluster:

- Kubernetes' own kinds with kubernetes-validate --strict (the API's OpenAPI schemas, unknown fields
  rejected), on the oldest Kubernetes the manifests claim and on the newest the validator bundles;
- the ScaledObject and the ServiceMonitor against their CRDs' OpenAPI v3 schemas, kept in
  deploy/k8s/schemas (where they came from and what is checked: its README.md), made as strict;
- that both validators are live: a broken copy of each manifest must fail, at the broken field;
- that the manifests agree with the app and the image: probe paths are routes that answer without an
  API key and behave as the drain needs, the port, the uid, the settings in the environment, the
  metric names the autoscaler queries, the termination grace against the app's drain;
- that the kustomizations hold together: HPA and ScaledObject never in one set, selectors match."""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml

from tests.deploy.test_deploy_files import dockerfile_instructions, stages

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy/k8s"
SCHEMAS = K8S / "schemas"
# The oldest Kubernetes the manifests are written for (every field used is GA or on by default there),
# and the newest whose schemas the installed kubernetes-validate carries.
OLDEST = "1.30"
NEWEST = ".".join(kubernetes_validate.latest_version().split(".")[:2])
K8S_VERSIONS = sorted({OLDEST, NEWEST})
# Custom resources: (apiVersion, kind) -> the CRD schema file that checks them.
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.json",
}
# KEDA v2.20.2's trigger metadata keys (pkg/scalers/prometheus_scaler.go, cpu_memory_scaler.go): the CRD
# types `metadata` as a free map of strings, so a misspelt key would pass it and fail in KEDA.
KEDA_TRIGGER_KEYS = {
    "prometheus": {
        "serverAddress", "query", "queryParameters", "threshold", "activationThreshold", "namespace",
        "customHeaders", "ignoreNullValues", "unsafeSsl", "awsRegion", "timeout", "identityOwner",
    },
    "cpu": {"value", "containerName"},
}
# Labels Prometheus puts on a scraped series from its target (ServiceMonitor discovery), next to the
# service's own.
TARGET_LABELS = {"namespace", "service", "pod", "container", "endpoint", "job", "instance"}
APP_LABELS = {"app.kubernetes.io/name": "distilserve"}


# ---------------------------------------------------------------------------------------------
# reading the manifests


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def manifest_files() -> list[Path]:
    """Every manifest under deploy/k8s: YAML files except the kustomizations (and no schema file)."""
    return sorted(
        p for p in K8S.rglob("*.yaml")
        if p.name != "kustomization.yaml" and SCHEMAS not in p.parents
    )


def all_docs() -> list[tuple[str, dict[str, Any]]]:
    """(id, manifest) for every document of every manifest file."""
    found = []
    for path in manifest_files():
        for i, doc in enumerate(load_docs(path)):
            found.append((f"{path.relative_to(K8S)}#{i}:{doc.get('kind')}", doc))
    return found


def by_kind(kind: str, name: str | None = None) -> dict[str, Any]:
    """The one manifest of `kind` (and `name`)."""
    hits = [d for _, d in all_docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def kustomize(folder: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
    """What `kubectl apply -k folder` applies, for kustomizations that only list `resources`
    (files or folders with a kustomization of their own): (file, manifest) pairs."""
    assert folder not in seen, f"kustomization cycle through {folder}"
    config = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert config["kind"] == "Kustomization", folder
    assert set(config) <= {"apiVersion", "kind", "resources", "namespace"}, (
        f"{folder}: only `resources` (and `namespace`) are resolved by this test; add to it before using more"
    )
    out = []
    for entry in config["resources"]:
        target = (folder / entry).resolve()
        assert target.exists(), f"{folder}/kustomization.yaml lists {entry}, which does not exist"
        if target.is_dir():
            out += kustomize(target, (*seen, folder))
        else:
            out += [(target, doc) for doc in load_docs(target)]
    return out


def pod_template(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod spec and its labels of a Deployment, a Job or a bare Pod."""
    if doc["kind"] == "Pod":
        return {"metadata": doc["metadata"], "spec": doc["spec"]}
    return doc["spec"]["template"]


def api_container() -> dict[str, Any]:
    (container,) = by_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def mutated(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of `doc` with `value` set at `path` (dot-separated; integers index lists)."""
    broken = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node: Any = broken
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[int(last) if isinstance(node, list) else last] = value
    return broken


def path_of(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path)


CORE_DOCS = [(i, d) for i, d in all_docs() if (d["apiVersion"], d["kind"]) not in CRD_SCHEMAS]
CUSTOM_DOCS = [(i, d) for i, d in all_docs() if (d["apiVersion"], d["kind"]) in CRD_SCHEMAS]


# ---------------------------------------------------------------------------------------------
# 1. Kubernetes' own kinds: kubernetes-validate --strict


def test_there_are_manifests_of_every_kind() -> None:
    kinds = {d["kind"] for _, d in all_docs()}
    assert kinds >= {
        "Deployment", "Service", "PersistentVolumeClaim", "PodDisruptionBudget", "HorizontalPodAutoscaler",
        "ScaledObject", "ServiceMonitor", "ServiceAccount", "Job",
    }, kinds
    for _, doc in all_docs():
        assert selects(APP_LABELS, doc["metadata"].get("labels", {})), f"{doc['kind']} lacks {APP_LABELS}"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("name", "doc"), CORE_DOCS, ids=[i for i, _ in CORE_DOCS])
def test_core_manifest_passes_strict_validation(name: str, doc: dict[str, Any], version: str) -> None:
    used = kubernetes_validate.validate(doc, version, strict=True)
    assert used == version, f"validated against {used}'s schemas, not {version}'s"


BROKEN_DEPLOYMENTS = {
    # an unknown field, as a typo makes it
    "unknown probe field": ("spec.template.spec.containers.0.livenessProbe.httpGet.paht", "/health"),
    "unknown spec field": ("spec.replicaCount", 2),
    # a wrong type
    "port as string": ("spec.template.spec.containers.0.ports.0.containerPort", "8000"),
    "runAsNonRoot as string": ("spec.template.spec.securityContext.runAsNonRoot", "true"),
}


@pytest.mark.parametrize(("path", "value"), BROKEN_DEPLOYMENTS.values(), ids=BROKEN_DEPLOYMENTS.keys())
def test_strict_validation_rejects_a_broken_deployment(path: str, value: Any) -> None:
    broken = mutated(by_kind("Deployment"), path, value)
    with pytest.raises(kubernetes_validate.ValidationError) as caught:
        kubernetes_validate.validate(broken, OLDEST, strict=True)
    # the error is about the broken field (an unknown one: reported on the object that holds it)
    where = path_of(caught.value)
    parent = path.rsplit(".", 1)[0]
    assert where in (path, parent), f"error at {where!r}, broke {path!r}: {caught.value.message}"


def test_unknown_fields_pass_only_without_strict() -> None:
    """What --strict adds: the same unknown field is accepted by the non-strict schemas."""
    path, value = BROKEN_DEPLOYMENTS["unknown probe field"]
    broken = mutated(by_kind("Deployment"), path, value)
    kubernetes_validate.validate(broken, OLDEST, strict=False)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, OLDEST, strict=True)


# ---------------------------------------------------------------------------------------------
# 2. Custom resources: their CRDs' OpenAPI v3 schemas, strict


def k8s_definitions() -> referencing.Resource:
    """kubernetes-validate's strict definitions of the oldest version (ObjectMeta and the rest)."""
    folder = f"kubernetes-json-schema/v{OLDEST}.0-local-strict"
    ref = resources.files("kubernetes_validate").joinpath(f"{folder}/_definitions.json")
    return referencing.Resource.from_contents(json.loads(ref.read_text()))


def forbid_unknown(node: Any) -> Any:
    """The schema as the API server applies a structural CRD schema: fields it does not declare are
    pruned (rejected under --validate=strict), so each object with `properties` and no
    `additionalProperties` or `x-kubernetes-preserve-unknown-fields` of its own gets
    `additionalProperties: false`."""
    if isinstance(node, list):
        return [forbid_unknown(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: (forbid_unknown(v) if k != "properties" else {p: forbid_unknown(s) for p, s in v.items()})
           for k, v in node.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get(
        "x-kubernetes-preserve-unknown-fields"
    ):
        out["additionalProperties"] = False
    return out


def crd_schema(file: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / file).read_text())


def crd_validator(file: str) -> jsonschema.Draft202012Validator:
    schema = forbid_unknown(crd_schema(file))
    definitions = k8s_definitions()
    meta_id = definitions.contents["$id"] + "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    assert schema["properties"]["metadata"] == {"type": "object"}, "the CRD now types metadata: drop the $ref"
    schema["properties"]["metadata"] = {"$ref": meta_id}
    registry = definitions @ referencing.Registry()
    return jsonschema.Draft202012Validator(schema, registry=registry)


def cel_rules(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for rule in node.get("x-kubernetes-validations", []):
            yield rule["rule"]
        for value in node.values():
            yield from cel_rules(value)
    elif isinstance(node, list):
        for value in node:
            yield from cel_rules(value)


def _replica_bounds(doc: dict[str, Any]) -> bool:
    spec = doc["spec"]
    return "minReplicaCount" not in spec or spec["minReplicaCount"] <= spec.get("maxReplicaCount", 100)


# The CEL rules of the CRD schemas (x-kubernetes-validations), which jsonschema cannot run, in Python.
CEL_CHECKS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "!has(self.minReplicaCount) || self.minReplicaCount <= "
    "(has(self.maxReplicaCount) ? self.maxReplicaCount : 100)": _replica_bounds,
}


def test_crd_schemas_are_the_recorded_ones() -> None:
    readme = (SCHEMAS / "README.md").read_text()
    for (api_version, kind), file in CRD_SCHEMAS.items():
        schema = crd_schema(file)
        assert file in readme, f"{file}: where it came from is not recorded in schemas/README.md"
        assert api_version in readme
        assert {"apiVersion", "kind", "metadata", "spec"} <= set(schema["properties"]), file
        assert kind in schema["description"], f"{file} does not describe {kind}"


@pytest.mark.parametrize(("name", "doc"), CUSTOM_DOCS, ids=[i for i, _ in CUSTOM_DOCS])
def test_custom_resource_matches_its_crd_schema(name: str, doc: dict[str, Any]) -> None:
    file = CRD_SCHEMAS[(doc["apiVersion"], doc["kind"])]
    errors = [f"{path_of(e)}: {e.message}" for e in crd_validator(file).iter_errors(doc)]
    assert not errors, errors
    rules = set(cel_rules(crd_schema(file)))
    assert rules <= set(CEL_CHECKS), f"CEL rules with no Python check here: {rules - set(CEL_CHECKS)}"
    for rule in rules:
        assert CEL_CHECKS[rule](doc), rule


BROKEN_CUSTOM = {
    "threshold as number": ("ScaledObject", "spec.triggers.0.metadata.threshold", 16,
                            "spec.triggers.0.metadata.threshold"),
    "unknown spec field": ("ScaledObject", "spec.maxReplicas", 8, "spec"),
    "replica count as string": ("ScaledObject", "spec.minReplicaCount", "2", "spec.minReplicaCount"),
    "misspelt metadata": ("ScaledObject", "metadata.lables", {"a": "b"}, "metadata"),
    "unknown endpoint field": ("ServiceMonitor", "spec.endpoints.0.paths", "/metrics", "spec.endpoints.0"),
    "interval not a duration": ("ServiceMonitor", "spec.endpoints.0.interval", "15 seconds",
                                "spec.endpoints.0.interval"),
    "scheme not in enum": ("ServiceMonitor", "spec.endpoints.0.scheme", "tcp", "spec.endpoints.0.scheme"),
}


@pytest.mark.parametrize(("kind", "path", "value", "where"), BROKEN_CUSTOM.values(), ids=BROKEN_CUSTOM.keys())
def test_crd_validation_rejects_a_broken_custom_resource(kind: str, path: str, value: Any, where: str) -> None:
    doc = by_kind(kind)
    file = CRD_SCHEMAS[(doc["apiVersion"], kind)]
    validator = crd_validator(file)
    assert not list(validator.iter_errors(doc))
    errors = list(validator.iter_errors(mutated(doc, path, value)))
    assert errors, f"{kind} with {path}={value!r} passed"
    assert where in {path_of(e) for e in errors}, [f"{path_of(e)}: {e.message}" for e in errors]


def test_unknown_custom_fields_pass_only_the_raw_crd_schema() -> None:
    """What forbid_unknown adds: the raw CRD schema lets a misspelt field through."""
    for kind, path in (("ScaledObject", "spec.maxReplicas"), ("ServiceMonitor", "spec.endpoints.0.paths")):
        doc = by_kind(kind)
        broken = mutated(doc, path, 1)
        raw = crd_schema(CRD_SCHEMAS[(doc["apiVersion"], kind)])
        assert not list(jsonschema.Draft202012Validator(raw).iter_errors(broken)), kind
        assert list(crd_validator(CRD_SCHEMAS[(doc["apiVersion"], kind)]).iter_errors(broken)), kind


def test_cel_check_catches_inverted_replica_bounds() -> None:
    doc = by_kind("ScaledObject")
    assert _replica_bounds(doc)
    assert not _replica_bounds(mutated(doc, "spec.minReplicaCount", doc["spec"]["maxReplicaCount"] + 1))


# ---------------------------------------------------------------------------------------------
# 3. The manifests agree with the app and the image


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return tmp_path


def settings_from_manifest(monkeypatch: pytest.MonkeyPatch, models_dir: Path, **override: str) -> Any:
    """The app's Settings as the Deployment's environment makes them (the models folder, absent
    here, replaced by an empty one)."""
    from app.settings import Settings

    for name in [n for n in os.environ if n.startswith("DISTILSERVE_")]:
        monkeypatch.delenv(name)
    for name, value in {**env_of(api_container()), **override}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DISTILSERVE_MODELS_DIR", str(models_dir))
    return Settings()


def test_environment_is_valid_settings(monkeypatch: pytest.MonkeyPatch, models_dir: Path) -> None:
    from app.settings import Settings

    env = env_of(api_container())
    fields = {f"DISTILSERVE_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, f"not settings of the app: {sorted(set(env) - fields)}"
    assert env["DISTILSERVE_MODELS_DIR"] == "/models"
    settings = settings_from_manifest(monkeypatch, models_dir)
    assert settings.backends == ["onnx", "onnx-int8"]
    # the image's own default is the same backend list
    runtime_env = " ".join(a for op, a in stages()["runtime"] if op == "ENV")
    assert """DISTILSERVE_BACKENDS='["onnx","onnx-int8"]'""" in runtime_env
    # one intra-op thread per CPU of the limit
    assert settings.threads == cpu_cores(api_container()["resources"]["limits"]["cpu"])


def cpu_cores(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_cpu_quantities() -> None:
    assert (cpu_cores("2"), cpu_cores("1500m"), cpu_cores(1)) == (2.0, 1.5, 1.0)


def probe(kind: str) -> dict[str, Any]:
    return api_container()[kind]["httpGet"]


async def get(app: Any, path: str, key: str | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path, headers=headers)


async def test_probes_and_scrape_path_are_routes_that_answer_without_a_key(models_dir: Path) -> None:
    """Kubelet and Prometheus send no API key: with keys set, the probe and metrics paths must
    still answer (and /ready says 503 not_ready before the models are in, not 401)."""
    from app.main import create_app
    from app.settings import Settings

    readiness, liveness, startup = probe("readinessProbe"), probe("livenessProbe"), probe("startupProbe")
    assert (readiness["path"], liveness["path"], startup["path"]) == ("/ready", "/health", "/health")
    (endpoint,) = by_kind("ServiceMonitor")["spec"]["endpoints"]
    app = create_app(Settings(models_dir=models_dir, api_keys=["k8s-test-key"]))
    routes = {r.path for r in app.routes if "GET" in getattr(r, "methods", set())}
    assert {readiness["path"], liveness["path"], endpoint["path"]} <= routes
    assert (await get(app, liveness["path"])).status_code == 200
    not_ready = await get(app, readiness["path"])
    assert not_ready.status_code == 503
    assert not_ready.json()["error"]["type"] == "not_ready"
    metrics = await get(app, endpoint["path"])
    assert metrics.status_code == 200
    assert "distilserve_queue_depth" in metrics.text
    # the gate is live: a route outside the public paths needs the key
    assert (await get(app, "/models")).status_code == 401


async def test_readiness_fails_and_liveness_holds_while_draining(models_dir: Path) -> None:
    """After SIGTERM the pod must leave the endpoints (readiness 503) without being restarted by
    its liveness probe mid-drain (liveness 200), and stay scrapable."""
    from app.main import create_app
    from app.settings import Settings

    app = create_app(Settings(models_dir=models_dir))
    app.state.drain.draining = True  # what the SIGTERM hook sets
    draining = await get(app, probe("readinessProbe")["path"])
    assert draining.status_code == 503
    assert draining.json()["error"]["type"] == "shutting_down"
    assert (await get(app, probe("livenessProbe")["path"])).status_code == 200
    assert (await get(app, by_kind("ServiceMonitor")["spec"]["endpoints"][0]["path"])).status_code == 200


def test_ports_agree_with_the_image() -> None:
    container = api_container()
    runtime = dict(stages()["runtime"])
    assert runtime["EXPOSE"] == "8000"
    cmd = json.loads(runtime["CMD"])
    image_port = int(cmd[cmd.index("--port") + 1])
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("http", image_port)
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container_port(container, container[kind]["httpGet"]["port"]) == image_port, kind
    (service_port,) = by_kind("Service")["spec"]["ports"]
    assert (service_port["name"], service_port["port"]) == ("http", 80)
    assert container_port(container, service_port["targetPort"]) == image_port
    (endpoint,) = by_kind("ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["port"] == service_port["name"]
    annotations = by_kind("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == image_port
    assert annotations["prometheus.io/path"] == endpoint["path"] == "/metrics"


def image_user(stage: str) -> tuple[int, int]:
    uid, gid = dict(stages()[stage])["USER"].split(":")
    return int(uid), int(gid)


@pytest.mark.parametrize(("kind", "image", "stage"), [
    ("Deployment", "distilserve:runtime", "runtime"),
    ("Job", "distilserve:models", "models"),
    ("Pod", "distilserve:runtime", "runtime"),
])
def test_pods_run_as_the_image_user_locked_down(kind: str, image: str, stage: str) -> None:
    uid, gid = image_user(stage)
    groupadd = next(a for op, a in dockerfile_instructions() if op == "RUN" and "groupadd" in a)
    assert f"--gid {gid}" in groupadd
    assert f"--uid {uid}" in groupadd
    spec = pod_template(by_kind(kind))["spec"]
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (uid, gid, gid)
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    for container in spec["containers"]:
        assert container["image"] == image
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert "add" not in sc["capabilities"]
        assert sc.get("runAsUser", uid) == uid
        # a read-only root: /tmp is an emptyDir
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert {"cpu", "memory"} <= set(limits)
        assert {"cpu", "memory"} <= set(requests)


def test_models_volume_is_read_only_for_the_api_and_written_by_the_job() -> None:
    claim = by_kind("PersistentVolumeClaim", "distilserve-models")
    # one writer (the Job or the loader), replicas on any node reading
    assert set(claim["spec"]["accessModes"]) & {"ReadWriteMany", "ReadOnlyMany"}
    assert "ReadWriteMany" in claim["spec"]["accessModes"], "the Job writes the claim the API reads"

    def models_mount(kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
        spec = pod_template(by_kind(kind))["spec"]
        (mount,) = [m for c in spec["containers"] for m in c["volumeMounts"] if m["mountPath"] == "/models"]
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"], kind
        return mount, volume

    mount, volume = models_mount("Deployment")
    assert mount["readOnly"] is True
    assert volume["persistentVolumeClaim"]["readOnly"] is True
    for writer in ("Job", "Pod"):
        mount, volume = models_mount(writer)
        assert not mount.get("readOnly"), writer
        assert not volume["persistentVolumeClaim"].get("readOnly"), writer
    job_env = env_of(pod_template(by_kind("Job"))["spec"]["containers"][0])
    assert job_env["DISTILSERVE_MODELS_DIR"] == "/models"
    assert job_env["DISTILSERVE_RECIPE"] == "quick"
    assert pod_template(by_kind("Job"))["spec"]["containers"][0]["command"] == ["build-models"]
    copied = [a.split() for op, a in dockerfile_instructions() if op == "COPY" and "build-models" in a]
    assert copied
    assert copied[0][-1] == "/usr/local/bin/build-models"


def test_termination_grace_covers_prestop_and_the_apps_drain(
    monkeypatch: pytest.MonkeyPatch, models_dir: Path
) -> None:
    from app.settings import Settings

    spec = by_kind("Deployment")["spec"]["template"]["spec"]
    command = api_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    match = re.fullmatch(r"sleep (\d+)", command[2])
    assert match, command
    sleep = match.group(1)
    assert int(sleep) >= 3, "too short for the endpoint removal to reach the proxies"
    default_grace = Settings.model_fields["shutdown_grace_s"].default
    grace = settings_from_manifest(monkeypatch, models_dir).shutdown_grace_s
    assert grace == default_grace == 20.0
    assert spec["terminationGracePeriodSeconds"] > int(sleep) + max(grace, default_grace)


def promql_names(query: str) -> tuple[set[str], set[str]]:
    """Metric names and the label names matched inside braces of a PromQL query."""
    metrics = set(re.findall(r"\b(distilserve_[a-z0-9_]+)", query))
    labels = {m for sel in re.findall(r"\{([^}]*)\}", query) for m in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", sel)}
    return metrics, labels


def exported_series() -> set[str]:
    """Every series name the service's registry can expose (histograms with their suffixes)."""
    from app.observability.metrics import REGISTRY

    suffixes = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",), "info": ("_info",),
                "gauge": ("",)}
    return {f.name + s for f in REGISTRY.collect() for s in suffixes.get(f.type, ("",))}


def test_scaled_object_queries_metrics_the_service_exports() -> None:
    from app.observability.metrics import MODEL_LABELS

    scaled = by_kind("ScaledObject")
    (prometheus,) = [t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"]
    meta = prometheus["metadata"]
    metrics, labels = promql_names(meta["query"])
    assert metrics == {"distilserve_queue_depth"}
    assert metrics <= exported_series()
    assert labels <= set(MODEL_LABELS) | TARGET_LABELS, labels
    assert meta["query"].startswith("sum(")  # over every pod: KEDA divides by the threshold per replica
    assert float(meta["threshold"]) > 0
    assert re.fullmatch(r"https?://[^/\s]+(:\d+)?/?", meta["serverAddress"])
    for trigger in scaled["spec"]["triggers"]:
        unknown = set(trigger["metadata"]) - KEDA_TRIGGER_KEYS[trigger["type"]]
        assert not unknown, f"{trigger['type']} trigger: keys KEDA does not read: {unknown}"
    # the alternative query in the comment uses real series too
    text = (K8S / "keda/scaledobject.yaml").read_text()
    mentioned, _ = promql_names(text)
    assert "distilserve_stage_duration_seconds_count" in mentioned
    assert mentioned <= exported_series(), mentioned - exported_series()


def test_promql_name_extraction() -> None:
    metrics, labels = promql_names('sum(rate(distilserve_x_sum{stage="queue", role!~"t.*"}[1m])) / up{job="a"}')
    assert (metrics, labels) == ({"distilserve_x_sum"}, {"stage", "role", "job"})


def test_alternative_queue_query_uses_real_labels() -> None:
    """The alternative KEDA query (in the ScaledObject's comment) filters on stage="queue": a label
    of the stage histogram, and a stage the app records."""
    from app.observability.metrics import STAGES, TASK_LABELS

    (query,) = [ln.strip("# ") for ln in (K8S / "keda/scaledobject.yaml").read_text().splitlines()
                if "distilserve_stage_duration_seconds_sum" in ln]
    metrics, labels = promql_names(query)
    assert metrics == {"distilserve_stage_duration_seconds_sum"}
    assert "stage" in labels
    assert labels <= {"stage", *TASK_LABELS}
    assert 'stage="queue"' in query
    assert "queue" in STAGES


# ---------------------------------------------------------------------------------------------
# 4. The objects point at each other, and the kustomizations hold together


def test_selectors_and_references_match() -> None:
    deployment = by_kind("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selects(selector, pod_labels)
    service = by_kind("Service")
    assert selects(service["spec"]["selector"], pod_labels)
    # the Service sends no traffic to the one-off pods, which carry the same app name
    for kind in ("Job", "Pod"):
        assert not selects(service["spec"]["selector"], pod_template(by_kind(kind))["metadata"]["labels"]), kind
    assert by_kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    monitor = by_kind("ServiceMonitor")["spec"]["selector"]["matchLabels"]
    assert selects(monitor, service["metadata"]["labels"])
    (spread,) = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"] == selector
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert by_kind("ServiceAccount", account)["automountServiceAccountToken"] is False
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert by_kind("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"] == target
    assert by_kind("ScaledObject")["spec"]["scaleTargetRef"] == target


def test_autoscalers_agree_and_own_the_replica_count() -> None:
    deployment = by_kind("Deployment")
    assert "replicas" not in deployment["spec"], "the autoscaler owns the count; a fixed one resets it on apply"
    hpa, scaled = by_kind("HorizontalPodAutoscaler")["spec"], by_kind("ScaledObject")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (scaled["minReplicaCount"], scaled["maxReplicaCount"])
    assert hpa["minReplicas"] >= 2
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
    behavior = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior == hpa["behavior"]
    (cpu,) = [m for m in hpa["metrics"] if m["type"] == "Resource"]
    (keda_cpu,) = [t for t in scaled["triggers"] if t["type"] == "cpu"]
    assert cpu["resource"]["target"]["averageUtilization"] == int(keda_cpu["metadata"]["value"])
    # the budget leaves a pod serving at the autoscalers' minimum
    assert by_kind("PodDisruptionBudget")["spec"]["maxUnavailable"] < hpa["minReplicas"]


def kinds_of(built: list[tuple[Path, dict[str, Any]]]) -> list[tuple[str, str]]:
    return [(d["kind"], d["metadata"]["name"]) for _, d in built]


def test_kustomizations_never_combine_hpa_and_scaled_object() -> None:
    default, keda, monitoring = kustomize(K8S), kustomize(K8S / "keda"), kustomize(K8S / "monitoring")
    for built in (default, keda, monitoring):
        assert len(set(kinds_of(built))) == len(built), f"an object twice: {kinds_of(built)}"
    default_kinds, keda_kinds = {k for k, _ in kinds_of(default)}, {k for k, _ in kinds_of(keda)}
    core = {"Deployment", "Service", "PersistentVolumeClaim", "PodDisruptionBudget", "ServiceAccount"}
    assert default_kinds == core | {"HorizontalPodAutoscaler"}
    assert keda_kinds == core | {"ScaledObject"}
    assert {k for k, _ in kinds_of(monitoring)} == {"ServiceMonitor"}
    # a ScaledObject would bring a second HPA for the Deployment: never in the same set as one
    for built in (default, keda, default + monitoring, keda + monitoring):
        kinds = [k for k, _ in kinds_of(built)]
        assert not ("HorizontalPodAutoscaler" in kinds and "ScaledObject" in kinds)
    # the default set needs no operator's CRDs
    assert all((d["apiVersion"], d["kind"]) not in CRD_SCHEMAS for _, d in default)


def test_every_manifest_is_reachable() -> None:
    """A manifest file is in some kustomization, or a one-off under jobs/ applied with -f."""
    reached = {p for folder in (K8S, K8S / "keda", K8S / "monitoring") for p, _ in kustomize(folder)}
    for path in manifest_files():
        assert path.resolve() in reached or path.parent == K8S / "jobs", f"{path} is in no kustomization"
    assert {p.name for p in (K8S / "jobs").glob("*.yaml")} == {"build-models.yaml", "models-loader.yaml"}


def test_kustomize_resolver_follows_folders() -> None:
    """The resolver the tests above rely on reads through a folder reference (keda -> ../base)."""
    via_folder = kustomize(K8S / "keda")
    assert {p.parent.name for p, _ in via_folder} == {"base", "keda"}
