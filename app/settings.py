"""Service configuration: environment variables prefixed `DISTILSERVE_`, validated at start-up
so that a bad value stops the service with a message naming it, not a failure at first request."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inference.backends import GRAPH_OPTIMIZATIONS, KINDS, OPENVINO_KINDS, openvino_installed

ALIASES = ("teacher", "student")


class Settings(BaseSettings):
    """Every knob of the service; lists are given as JSON in the environment,
    e.g. `DISTILSERVE_BACKENDS='["onnx","onnx-int8","torch"]'`."""

    model_config = SettingsConfigDict(env_prefix="DISTILSERVE_", extra="ignore")

    models_dir: Path = Path("models")
    backends: list[str] = Field(default_factory=lambda: ["onnx"])
    hub_models: list[str] = Field(default_factory=list, description="hub ids, served on torch")
    default_classification_model: str = "student"
    default_qa_model: str = "student"
    default_embedding_model: str = "student"
    default_classification_pair: str | None = Field(
        default=None,
        description="pair whose teacher/student the aliases name (unset: the only pair, else the longest-trained)",
    )
    default_qa_pair: str | None = None
    default_embedding_pair: str | None = None
    cascade_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description='per pair, the student confidence below which a cascade escalates to the teacher, e.g. '
        '{"sst2-quick": 0.9}; overrides the calibration recorded in the pair\'s manifests',
    )

    threads: int | None = Field(default=None, ge=1, description="intra-op threads per model")
    graph_optimization: str = "all"
    device: str = Field(
        default="cpu", pattern=r"^(cpu|cuda(:\d+)?)$", description="torch backend device: cpu, cuda, cuda:N"
    )
    model_workers: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description="model calls in flight per model (worker threads sharing its backend). Unset: on ONNX Runtime, "
        "two when warm-up measures them 15% faster than one, else one; one on torch. On 2 cores two made the int8 "
        "MiniLM 1.2-1.4x faster (one call at a time spends much of a small batch synchronising intra-op threads) and "
        "the 12-layer fp32 teacher 8% slower; two torch calls on CPU oversubscribe its OpenMP threads",
    )
    ort_spinning: bool = Field(default=False, description="let ONNX Runtime pool threads spin-wait between batches")
    openvino_cache: Path | None = Field(
        default=None, description="where the openvino backends keep compiled models, so that a later start imports "
        "them (the QA student's two files: 1.4 and 1.2 s to compile, 0.14 and 0.10 s to import)")
    int8_guard: bool = Field(
        default=True, description="int8 models (onnx-int8, openvino-int8) whose manifest records a guard read their "
        "near ties again on the fp32 file, on the same engine (inference.guard); false serves every int8 answer as the "
        "int8 file gives it")
    model_workers_memory: Path | None = Field(
        default=None,
        description="a JSON file where the measured model-worker choice is remembered per machine and model file, so "
        "every start makes the same choice without measuring; unset: measured at every start",
    )
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    max_batch_tokens: int = Field(default=16384, ge=1)
    max_wait_ms: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description="cap on the wait for a fuller batch (also capped at 1/4 of the last model call); 0: no wait. "
        "On CPU no wait is faster: the worker computes one group of requests while the event loop answers and "
        "reads the next (32 clients, MiniLM ONNX, 2 cores: 406 vs 325 req/s)",
    )
    sort_by_length: bool = True
    sort_window: int = Field(default=256, ge=1, description="items taken per cycle to sort by length")
    queue_depth: int = Field(default=1024, ge=1)
    request_deadline_s: float = Field(default=30.0, gt=0)
    retry_after_s: int = Field(
        default=1, ge=0, description="least Retry-After on a 429 (the estimated wait, rounded up, if longer)"
    )
    max_queue_wait_ms: float = Field(
        default=2000.0,
        ge=0,
        le=600_000,
        description="admission budget: a request whose estimated wait (queue ahead at the measured service rate) "
        "is longer gets 429 at once. The default bounds queueing at 2 s without turning away clients that "
        "cannot overload the service; 0 is the latency-protecting automatic budget, half the service time "
        "of one item alone, which keeps admitted p99 near the uncongested p99 under overload (app/batching.py)",
    )

    max_items: int = Field(default=64, ge=1)
    max_chars: int = Field(default=20000, ge=1)
    max_body_bytes: int = Field(default=4_000_000, ge=1)
    max_top_k: int = Field(default=100, ge=1)
    max_doc_stride: int = Field(default=512, ge=0)
    max_answer_len_limit: int = Field(default=512, ge=1)
    warmup: bool = True

    # reliability and security (app/security.py, app/middleware.py, app/shutdown.py, app/faults.py)
    api_keys: list[SecretStr] = Field(default_factory=list, description="accepted API keys; empty: no authentication")
    public_paths: list[str] = Field(
        default_factory=lambda: ["/health", "/ready", "/metrics", "/", "/playground"],
        description="paths served without an API key (the playground page is public; its API calls are not)",
    )
    access_log: bool = Field(
        default=True, description="one JSON line per request (method, path, status, ms, model, request id)"
    )
    log_inputs: bool = Field(default=False, description="put request bodies (input text) in the request log")
    shutdown_grace_s: float = Field(default=20.0, gt=0, description="SIGTERM: longest wait for in-flight requests")
    on_model_error: Literal["fail", "skip"] = Field(
        default="fail", description="a broken model folder: refuse to start, or serve without it (/ready 503)"
    )

    shadow_rate: float = Field(
        default=0.0, ge=0, le=1, description="fraction of student requests mirrored to the teacher"
    )
    shadow_max_items: int = Field(
        default=64, ge=1, description="shadow items in flight at the teachers; more are dropped"
    )
    shadow_agree_cosine: float = Field(default=0.9, ge=-1, le=1, description="embedding cosine counted as agreement")

    @field_validator("backends")
    @classmethod
    def _known_backends(cls, value: list[str]) -> list[str]:
        bad = [b for b in value if b not in KINDS]
        if bad or not value:
            raise ValueError(f"backends {bad or value!r} invalid; each must be one of {list(KINDS)}")
        if len(set(value)) != len(value):
            raise ValueError(f"backends {value!r} lists a backend twice")
        if (engine := [b for b in value if b in OPENVINO_KINDS]) and not openvino_installed():
            raise ValueError(f"backends {engine!r} need OpenVINO, which is not installed: "
                             "pip install 'distilserve[openvino]'")
        return value

    @field_validator("graph_optimization")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value not in GRAPH_OPTIMIZATIONS:
            raise ValueError(f"graph_optimization {value!r} not in {list(GRAPH_OPTIMIZATIONS)}")
        return value

    @model_validator(mode="after")
    def _models_present(self) -> Settings:
        if not self.hub_models and not self.models_dir.is_dir():
            raise ValueError(f"models_dir {str(self.models_dir)!r} is not a directory")
        return self

    def default_pairs(self) -> dict[str, str | None]:
        """Per task, the pair set as its default (None: chosen from what is served)."""
        return {task: getattr(self, f"default_{task}_pair") for task in ("classification", "qa", "embedding")}

    def default_model(self, task: str) -> str:
        """The model a request of `task` gets when it names none."""
        return str(getattr(self, f"default_{task}_model"))
