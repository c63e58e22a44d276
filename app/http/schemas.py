"""Request and response bodies (pydantic), shaped like the Hugging Face pipelines and the
OpenAI embeddings API a user already knows; every model carries an example for /docs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.http.errors import ServiceError


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain text, not only whitespace")
    return value


# Text a model reads: empty or whitespace-only input is a client error (422 naming the field),
# not a request for the model's opinion of [CLS] [SEP]; the pattern documents it in the schema.
Text = Annotated[str, Field(min_length=1, json_schema_extra={"pattern": r"\S"}), AfterValidator(_not_blank)]

def _example(value: dict[str, Any]) -> ConfigDict:
    return ConfigDict(extra="forbid", json_schema_extra={"examples": [value]})


class ItemInfo(BaseModel):
    tokens: int = Field(description="tokens the model read for this input (all windows for QA)")
    truncated: bool = Field(description="true when the input was cut to the model window")
    windows: int | None = Field(default=None, description="QA only: context windows used")
    windows_skipped: int | None = Field(
        default=None, description="QA with max_windows: windows of the context left unread (least word overlap)"
    )
    answered_by: Literal["student", "teacher"] | None = Field(default=None, description="cascades: who answered")
    escalation: Literal["answered", "refused"] | None = Field(
        default=None, description="cascades: the item went to the teacher, who answered or refused (`reason`)"
    )
    reason: str | None = Field(default=None, description="cascades: why the teacher refused the escalation")
    rechecked: bool | None = Field(
        default=None, description="int8 models with a guard: true when int8's best answer led the second by less "
        "than the calibrated margin, and the answer given is the fp32 file's"
    )


class Usage(BaseModel):
    tokens: int


class ClassifyRequest(BaseModel):
    model_config = _example({"inputs": ["a gripping, funny film", "dull and overlong"], "top_k": 2})
    inputs: Text | list[Text | list[Text]] = Field(
        min_length=1, description="a text, texts, or [text, text_pair] pairs"
    )
    model: str | None = Field(default=None, description="model name or alias teacher / student")
    top_k: int | None = Field(default=1, ge=1, description="labels per input; null for all")
    truncate: bool = Field(default=True, description="false: inputs longer than the window are rejected (413)")

    @field_validator("inputs")
    @classmethod
    def _pairs(cls, value: str | list[str | list[str]]) -> str | list[str | list[str]]:
        for i, item in enumerate(value if isinstance(value, list) else []):
            if isinstance(item, list) and len(item) != 2:
                raise ValueError(f"item {i} must be a text or a [text, text_pair] pair (got {len(item)} strings)")
        return value


class LabelScore(BaseModel):
    label: str
    score: float


class ClassifyResponse(BaseModel):
    model_config = _example(
        {
            "model": "sst2-quick-student",
            "results": [[{"label": "positive", "score": 0.98}]],
            "items": [{"tokens": 8, "truncated": False}],
            "usage": {"tokens": 8},
        }
    )
    model: str
    results: list[list[LabelScore]]
    items: list[ItemInfo]
    usage: Usage


class QAInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: Text
    context: Text


class QARequest(BaseModel):
    model_config = _example(
        {
            "question": "Where do penguins live?",
            "context": "Most penguins live in the Southern Hemisphere, many of them in Antarctica.",
            "top_k": 1,
        }
    )
    question: Text | None = None
    context: Text | None = None
    inputs: list[QAInput] | None = Field(default=None, min_length=1)
    model: str | None = None
    top_k: int = Field(default=1, ge=1)
    max_answer_len: int = Field(default=15, ge=1)
    doc_stride: int = Field(default=128, ge=0)
    handle_impossible_answer: bool = False
    max_windows: int | None = Field(
        default=None,
        ge=1,
        description="read only this many windows of a long context: those that share most words with the question "
        "(IDF-weighted); default every window",
    )

    @model_validator(mode="after")
    def _one_form(self) -> QARequest:
        single = self.question is not None or self.context is not None
        if single == (self.inputs is not None):
            raise ValueError("give either question and context, or inputs, not both or neither")
        if single and (self.question is None or self.context is None):  # "field: ..." names the param
            missing = "question" if self.question is None else "context"
            raise ValueError(f"{missing}: required (question and context go together)")
        return self

    def pairs(self) -> list[QAInput]:
        return self.inputs or [QAInput(question=self.question or "", context=self.context or "")]


class Answer(BaseModel):
    answer: str
    score: float
    start: int = Field(description="character offset in the context; context[start:end] == answer")
    end: int


class QAResponse(BaseModel):
    model_config = _example(
        {
            "model": "squad-quick-student",
            "results": [[{"answer": "the Southern Hemisphere", "score": 0.71, "start": 22, "end": 45}]],
            "items": [{"tokens": 30, "truncated": False, "windows": 1}],
            "usage": {"tokens": 30},
        }
    )
    model: str
    results: list[list[Answer]]
    items: list[ItemInfo]
    usage: Usage


class EmbedRequest(BaseModel):
    model_config = _example({"inputs": ["A man is playing a guitar.", "Someone plays music."]})
    inputs: Text | list[Text] = Field(min_length=1)
    model: str | None = None
    normalize: bool | None = Field(default=None, description="L2-normalise; null: the model's default")
    truncate: bool = True
    dimensions: int | None = Field(
        default=None, ge=1, description="keep the first N dimensions, then L2-normalise (as OpenAI's `dimensions`)"
    )


class EmbedResponse(BaseModel):
    model_config = _example(
        {
            "model": "embed-quick-student",
            "embeddings": [[0.01, -0.2, 0.05]],
            "dim": 3,
            "items": [{"tokens": 9, "truncated": False}],
            "usage": {"tokens": 9},
        }
    )
    model: str
    embeddings: list[list[float]]
    dim: int
    items: list[ItemInfo]
    usage: Usage


class OpenAIEmbeddingRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"input": "hello world", "model": "student"}]})
    input: Text | list[Text] = Field(min_length=1)
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, description="keep the first N dimensions, then L2-normalise")
    user: str | None = None


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    model_config = _example(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.01, -0.2]}],
            "model": "embed-quick-student",
            "usage": {"prompt_tokens": 4, "total_tokens": 4},
        }
    )
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class SimilarityInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source_sentence: Text
    sentences: list[Text] = Field(min_length=1)


class SimilarityRequest(BaseModel):
    """text-embeddings-inference's /similarity body."""

    model_config = _example(
        {"inputs": {"source_sentence": "A man plays guitar.", "sentences": ["Someone plays music.", "A cat sleeps."]}}
    )
    inputs: SimilarityInputs
    model: str | None = None


class SimilarityResponse(BaseModel):
    model: str
    scores: list[float] = Field(description="cosine of the source sentence with each sentence, in their order")
    items: list[ItemInfo] = Field(description="per text embedded: the source sentence first, then the sentences")
    usage: Usage


class RerankRequest(BaseModel):
    """text-embeddings-inference's /rerank body, scored by the bi-encoder's cosine."""

    model_config = _example({"query": "What plays music?", "texts": ["A guitar.", "A cat."], "top_n": 1})
    query: Text
    texts: list[Text] = Field(min_length=1)
    model: str | None = None
    top_n: int | None = Field(default=None, ge=1, description="return only the best N (default: all)")
    return_text: bool = False


class RerankResult(BaseModel):
    index: int = Field(description="position of the text in `texts`")
    score: float
    text: str | None = None


class RerankResponse(BaseModel):
    model: str
    results: list[RerankResult] = Field(description="best first")
    items: list[ItemInfo] = Field(description="per text embedded: the query first, then the texts")
    usage: Usage


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None


class ErrorResponse(BaseModel):
    model_config = _example({"error": {"message": "model 'x' not found", "type": "model_not_found", "param": "model"}})
    error: ErrorBody


class ModelInfo(BaseModel):
    name: str
    task: str
    role: str
    backend: str
    layers: int | None
    hidden_size: int | None
    params: int | None
    max_length: int
    labels: list[str] | None
    quality: dict[str, Any]
    teacher: str | None = None
    student: str | None = None
    pair: str | None = Field(default=None, description="the teacher/student pair it belongs to; null: a lone model")
    model_workers: int | None = Field(
        default=None, description="model calls in flight at once (measured once the service answers, unless set "
        "or remembered; see model_workers_choice)"
    )
    model_workers_choice: str | None = Field(
        default=None, description="how model_workers was chosen: set (MODEL_WORKERS), fixed (one: torch, OpenVINO, "
        "no warm-up), remembered (MODEL_WORKERS_MEMORY), measuring (one until measured while the service is idle), "
        "measured",
    )
    split_threads: int | None = Field(
        default=None,
        description="intra-op threads of the second session that a call runs on while another is in flight; "
        "null: every call runs on the one session (one worker, threads set, or not yet opened)",
    )
    int8_guard: float | None = Field(
        default=None, description="onnx-int8 with a guard: the lead (log of best over second score) under which "
        "an answer is read again on the fp32 file; null: every answer is the int8 file's",
    )
    startup_s: dict[str, float] = Field(
        default_factory=dict,
        description="seconds per start-up phase: load (backend + tokenizer), warm_up, model_workers (the choice), "
        "calibrate (admission's service-time estimate)",
    )


class PairInfo(BaseModel):
    name: str
    task: str
    teacher: str | None
    student: str | None
    recipe: str | None
    default: bool = Field(description="the pair whose teacher and student the aliases `teacher` / `student` name")


class CascadeInfo(BaseModel):
    name: str
    pair: str
    task: str
    student: str
    teacher: str
    threshold: float = Field(description="student confidence below which an item goes to the teacher")
    confidence: str = Field(description="top_probability | margin (classification), span_score (QA)")
    threshold_source: str = Field(description="calibration (the manifests) or setting (CASCADE_THRESHOLDS)")
    calibration: dict[str, Any] = Field(description="what `python -m training calibrate` measured, if it ran")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    pairs: list[PairInfo] = Field(default_factory=list)
    cascades: list[CascadeInfo] = Field(default_factory=list)


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    status: Literal["ready"]
    models: int = Field(description="served (model, backend) pairs")


# --- /compare: the task endpoint's own body plus the two model names ---------------------

TASK_BODIES: dict[str, type[BaseModel]] = {
    "classification": ClassifyRequest,
    "qa": QARequest,
    "embedding": EmbedRequest,
}


class CompareRequest(BaseModel):
    """`task`, `teacher`, `student`; every other field is the task endpoint's own (validated by
    that endpoint's schema), e.g. `inputs` and `top_k` for classification."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {"task": "classification", "inputs": ["a gripping, funny film", "dull and overlong"]},
                {"task": "qa", "question": "Where do penguins live?", "context": "Most penguins live in Antarctica."},
                {"task": "embedding", "inputs": ["A man is playing a guitar."], "teacher": "teacher@onnx"},
            ]
        },
    )
    task: Literal["classification", "qa", "embedding"]
    teacher: str = Field(default="teacher", description="model name or alias (teacher, teacher@backend, pair:teacher)")
    student: str = Field(default="student", description="model name or alias (student, student@backend, pair:student)")
    pair: str | None = Field(default=None, description="resolve bare `teacher` / `student` aliases in this pair")

    def side(self, role: str) -> str:
        """The name to resolve for one side: a bare alias is qualified with `pair` when given."""
        name: str = getattr(self, role)
        bare = name.partition("@")[0] in ("teacher", "student", "cascade")
        return f"{self.pair}:{name}" if self.pair and bare else name

    def task_body(self) -> BaseModel:
        """The remaining fields as the task endpoint's request; its validation errors answer 422."""
        fields = dict(self.model_extra or {})
        if "model" in fields:
            raise ServiceError("invalid_input", "model: /compare takes `teacher` and `student` instead", "model")
        try:
            return TASK_BODIES[self.task].model_validate(fields)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None


class CompareSide(BaseModel):
    model: str
    role: str
    backend: str
    results: list[Any] = Field(description="as the task endpoint returns them (embeddings: vectors)")
    items: list[ItemInfo]
    usage: Usage
    latency_ms: float = Field(description="this model's request time: queue, tokenize, inference, postprocess")


class CompareResponse(BaseModel):
    task: str
    teacher: CompareSide
    student: CompareSide
    agreement: list[dict[str, float | bool | None]] = Field(
        description="per item: same_label | span_f1 + exact_match | cosine (null when dimensions differ)"
    )
    summary: dict[str, float | None] = Field(description="means over the items")
    latency_ratio: float | None = Field(description="student latency / teacher latency")
    speedup: float | None = Field(description="teacher latency / student latency")
