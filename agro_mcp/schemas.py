"""Structured outputs of the MCP tools (DESIGN.md section 4)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ADMIN_RESULTS", "AdminResult", "AnswerResponse", "Citation", "FeedbackResponse", "IndexResponse", "JobStatus",
    "SearchHit", "SearchResponse", "admin_output_schema", "admin_result",
]


class SearchHit(BaseModel):
    doc_id: str = Field(description="path:start-end; pass it to submit_feedback")
    path: str
    start_line: int
    end_line: int
    language: str
    symbol: str | None
    text: str
    score: float = Field(description="final ranking score")
    rerank_score: float | None = None
    fused_score: float
    bm25_rank: int | None = None
    dense_rank: int | None = None


class SearchResponse(BaseModel):
    event_id: str = Field(description="Refer to this in submit_feedback")
    corpus: str
    query: str
    results: list[SearchHit]
    reranking_used: bool
    reranker_model: str | None = None
    reranker_fallback_reason: str | None = None
    index_generation: str
    index_stale_files: int = Field(description="files added/changed/deleted on disk since the index was built")
    timings_ms: dict[str, float]
    note: str | None = None


class IndexResponse(BaseModel):
    action: str
    corpus: str | None = None
    data: dict


class FeedbackResponse(BaseModel):
    feedback_id: str
    event_id: str
    signal: str
    created: bool = Field(description="false when this exact feedback was already recorded")
    message: str


class Citation(BaseModel):
    doc_id: str
    path: str
    start_line: int
    end_line: int


class AnswerResponse(BaseModel):
    event_id: str
    answer: str | None
    mode: str = Field(description="'sampling', 'endpoint' or 'context'")
    citations: list[Citation]
    dropped_citations: list[str] = Field(default_factory=list)
    context: str
    note: str | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)


# -- reranker_admin: one typed result per action ------------------------------------------------------------------
# Each action returns its own model; the tool publishes their union (discriminated by ``action``) as its output
# schema. Fields that vary with the model or job kind stay open (``extra="allow"``), the ones a caller acts on are
# typed.


class AdminResult(BaseModel):
    """The base of every ``reranker_admin`` result; ``action`` says which model it is."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    action: str


class JobStatus(BaseModel):
    run_id: str
    kind: str
    state: str = Field(description="queued, running, succeeded, failed or cancelled")
    progress: float = Field(description="0..1")
    message: str | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    pid: int | None = None


class AdminInfo(AdminResult):
    action: Literal["info"] = "info"
    enabled: bool | None = None
    loaded: bool | None = None
    model: str | None = Field(None, description="the serving model's id")
    release_id: str | None = None
    device: str | None = None
    backend: str | None = None
    dtype: str | None = None
    alpha: float | None = None
    topn: int | None = None
    batch: int | None = None
    maxlen: int | None = None
    reload_on_change: bool | None = None
    reload_period_sec: float | None = None
    loaded_at: float | None = None
    latest_eval: dict[str, Any] | None = None


class AdminReload(AdminResult):
    action: Literal["reload"] = "reload"


class AdminStatus(AdminResult):
    action: Literal["status"] = "status"
    job: JobStatus | None = Field(None, description="the job asked for (run_id given)")
    jobs: list[JobStatus] | None = Field(None, description="recent jobs (no run_id)")
    training_lock: dict[str, Any] | None = None
    current_release: str | None = None


class AdminJob(AdminResult):
    """A job started (mine, train, evaluate, promote), waited for, or asked to stop (cancel)."""

    action: Literal["mine", "train", "evaluate", "promote", "wait", "cancel"]
    run_id: str
    state: str = Field(description="'started', or the job's state when waited for / cancelled")
    job: JobStatus | None = None
    note: str | None = None


class AdminRollback(AdminResult):
    action: Literal["rollback"] = "rollback"
    decision: str
    from_release: str | None = Field(None, alias="from", description="the release current pointed at before")
    release: str = Field(description="the release current points at now")


class RunSummary(BaseModel):
    model_config = ConfigDict(extra="allow")

    run_id: str
    state: str | None = None
    created_at: float | str | None = None


class ReleaseSummary(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    complete: bool


class AdminRuns(AdminResult):
    action: Literal["runs"] = "runs"
    runs: list[RunSummary]
    releases: list[ReleaseSummary]


class AdminEvalLatest(AdminResult):
    action: Literal["eval_latest"] = "eval_latest"
    id: int | str
    ts: float
    name: str
    model: str | None = None
    payload: dict[str, Any]


class AdminLogs(AdminResult):
    action: Literal["logs"] = "logs"
    run_id: str
    lines: list[str]


ADMIN_RESULTS: tuple[type[AdminResult], ...] = (
    AdminInfo, AdminReload, AdminStatus, AdminJob, AdminRollback, AdminRuns, AdminEvalLatest, AdminLogs,
)


def admin_result(action: str, out: dict[str, Any]) -> AdminResult:
    """The typed result of ``action`` from the dict the library returns."""
    for model in ADMIN_RESULTS:
        if action in model.model_fields["action"].annotation.__args__:  # type: ignore[union-attr]
            if model is AdminJob:
                job = out.get("job") or {}
                out = {"run_id": job.get("run_id"), "state": job.get("state"), **out}
            return model.model_validate({**out, "action": action})
    raise ValueError(f"no result model for action {action!r}")  # pragma: no cover


def admin_output_schema() -> dict[str, Any]:
    """The output schema of ``reranker_admin``: one object schema per action, told apart by ``action``."""
    from pydantic import TypeAdapter

    union = Annotated[Union[ADMIN_RESULTS], Field(discriminator="action")]  # noqa: UP007 - a runtime tuple
    schema = TypeAdapter(union).json_schema(by_alias=True)
    return {"type": "object", **schema}
