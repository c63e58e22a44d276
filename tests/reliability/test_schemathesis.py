"""schemathesis against the served /openapi.json, every endpoint, a bounded number of examples
per operation and mode (valid and invalid data): no 5xx, and every response - status, content
type and body - conforms to the schema the service publishes.

Operations are driven with hypothesis directly (schemathesis's pytest plugin does not run under
this pytest version); one test per operation, so a failure names the endpoint."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.reliability.server import Server

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 10
OPERATIONS = [
    "GET /health", "GET /ready", "GET /metrics", "GET /models",
    "POST /classify", "POST /qa", "POST /embed", "POST /v1/embeddings", "POST /similarity", "POST /rerank",
    "POST /compare",
]


@pytest.fixture(scope="module")
def api_schema(server: Server) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(server.url + "/openapi.json")


def test_every_operation_is_covered(api_schema: schemathesis.BaseSchema) -> None:
    """The list of operations tested may not fall behind the schema."""
    labels = {result.ok().label for result in api_schema.get_all_operations()}
    assert labels == set(OPERATIONS), labels


# invalid data only where there is input to make invalid (the GETs take no parameters)
CASES = [(label, GenerationMode.POSITIVE) for label in OPERATIONS] + [
    (label, GenerationMode.NEGATIVE) for label in OPERATIONS if label.startswith("POST")
]


@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{label}-{mode.value}" for label, mode in CASES])
def test_operation_conforms(
    api_schema: schemathesis.BaseSchema, server: Server, label: str, mode: GenerationMode
) -> None:
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, label

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=30)

    run()
