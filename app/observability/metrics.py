"""All Prometheus metrics of the service, in one place (names are a fixed contract:
see the metrics contract; shadow-traffic metrics are added here by the shadow feature)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

REGISTRY = CollectorRegistry(auto_describe=True)
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
BATCH_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)

MODEL_LABELS = ("model", "role", "backend")
TASK_LABELS = ("task", "model", "role", "backend")

REQUEST_DURATION = Histogram(
    "distilserve_request_duration_seconds", "HTTP request latency",
    (*TASK_LABELS, "status"), buckets=LATENCY_BUCKETS, registry=REGISTRY,
)
STAGE_DURATION = Histogram(
    "distilserve_stage_duration_seconds", "Time per pipeline stage (tokenize|queue|inference|postprocess)",
    ("stage", *TASK_LABELS), buckets=LATENCY_BUCKETS, registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "distilserve_batch_size", "Sequences per model call", MODEL_LABELS,
    buckets=BATCH_SIZE_BUCKETS, registry=REGISTRY,
)
BATCH_TOKENS = Histogram(
    "distilserve_batch_tokens", "Padded tokens per model call", MODEL_LABELS,
    buckets=BATCH_TOKEN_BUCKETS, registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "distilserve_queue_depth", "Items waiting for the model's worker", MODEL_LABELS, registry=REGISTRY,
)
REQUESTS = Counter(
    "distilserve_requests_total", "Requests by outcome", (*TASK_LABELS, "status"), registry=REGISTRY,
)
INPUT_TOKENS = Counter(
    "distilserve_input_tokens_total", "Tokens fed to models", TASK_LABELS, registry=REGISTRY,
)
TRUNCATED_INPUTS = Counter(
    "distilserve_truncated_inputs_total", "Inputs cut to the model window", TASK_LABELS, registry=REGISTRY,
)
ERRORS = Counter(
    "distilserve_errors_total", "Error responses by error type", ("type", "task"), registry=REGISTRY,
)
INT8_RECHECKED = Counter(
    "distilserve_int8_rechecked_total", "Items an int8 model read again on its fp32 file: near ties, where the "
    "best answer led the second by less than the file's calibrated guard (inference.guard)",
    MODEL_LABELS, registry=REGISTRY,
)
MODEL_INFO = Info(
    "distilserve_model", "Served models",
    ("model", "task", "role", "backend", "layers", "hidden_size", "params", "max_length"),
    registry=REGISTRY,
)

# Shadow traffic (app/shadow.py): the teacher's view of a sample of the student's requests.
AGREEMENT_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)
CASCADE_ITEMS = Counter(
    "distilserve_cascade_items_total", "Items a cascade answered, by who answered them (student | teacher | refused:"
    " the teacher refused the escalation and the student's answer was returned)",
    ("task", "pair", "answered_by"), registry=REGISTRY,
)
SHADOW_REQUESTS = Counter(
    "distilserve_shadow_requests_total", "Student requests mirrored to the teacher (sent | dropped | failed)",
    ("task", "result"), registry=REGISTRY,
)
SHADOW_AGREEMENT = Counter(
    "distilserve_shadow_agreement_total", "Shadowed items on which teacher and student agree",
    ("task", "agree"), registry=REGISTRY,
)
SHADOW_SPAN_F1 = Histogram(
    "distilserve_shadow_span_f1", "SQuAD F1 of the student's answer against the teacher's", ("task",),
    buckets=AGREEMENT_BUCKETS, registry=REGISTRY,
)
SHADOW_COSINE = Histogram(
    "distilserve_shadow_embedding_cosine", "Cosine of the student's embedding with the teacher's", ("task",),
    buckets=AGREEMENT_BUCKETS, registry=REGISTRY,
)


STAGES = ("tokenize", "queue", "inference", "postprocess")


def register_model(name: str, task: str, role: str, backend: str, info: dict[str, str]) -> None:
    """Publish a served model and create its series at zero. Prometheus computes `rate()` from
    samples it has seen: a series born with its first requests already counted never shows an
    increase, and a short burst to a fresh model would be invisible in latency quantiles."""
    labels = {"model": name, "role": role, "backend": backend}
    MODEL_INFO.labels(task=task, **labels, **info).info({})
    REQUEST_DURATION.labels(task=task, status="200", **labels)
    REQUESTS.labels(task=task, status="200", **labels)
    for counter in (INPUT_TOKENS, TRUNCATED_INPUTS):
        counter.labels(task=task, **labels)
    for stage in STAGES:
        STAGE_DURATION.labels(stage=stage, task=task, **labels)
    for histogram in (BATCH_SIZE, BATCH_TOKENS):
        histogram.labels(**labels)


def register_cascade(name: str, task: str, pair: str, backend: str) -> None:
    """A served cascade's series at zero (as `register_model`): its requests carry role="cascade"."""
    labels = {"model": name, "role": "cascade", "backend": backend}
    REQUEST_DURATION.labels(task=task, status="200", **labels)
    REQUESTS.labels(task=task, status="200", **labels)
    for who in ("student", "teacher", "refused"):
        CASCADE_ITEMS.labels(task=task, pair=pair, answered_by=who)


def render() -> tuple[bytes, str]:
    """The exposition text and its content type, for GET /metrics."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class ModelMetrics:
    """One served model's pre-bound metric children (the batcher's): label lookups once per
    model, not once per item."""

    def __init__(self, task: str, labels: dict[str, str]) -> None:
        self.name = labels["model"]
        self.depth = QUEUE_DEPTH.labels(**labels)
        self._stages = {s: STAGE_DURATION.labels(stage=s, task=task, **labels) for s in STAGES}
        self._size, self._tokens = BATCH_SIZE.labels(**labels), BATCH_TOKENS.labels(**labels)
        self._in_tokens = INPUT_TOKENS.labels(task=task, **labels)
        self._truncated = TRUNCATED_INPUTS.labels(task=task, **labels)
        self._rechecked = INT8_RECHECKED.labels(**labels)

    def observe(self, stage: str, seconds: float) -> None:
        self._stages[stage].observe(seconds)

    def batch(self, size: int, tokens: int) -> None:
        self._size.observe(size)
        self._tokens.observe(tokens)

    def count(self, tokens: int, truncated: bool) -> None:
        self._in_tokens.inc(tokens)
        if truncated:
            self._truncated.inc()

    def rechecked(self, items: int) -> None:
        if items:
            self._rechecked.inc(items)
