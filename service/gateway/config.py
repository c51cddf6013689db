"""The gateway's settings: each model's upstream, and the gateway's own behaviour
(fallbacks, sessions, the judge, implicit signals). Plain validated values;
`service.settings` embeds them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class UpstreamConfig(BaseModel):
    """Where a catalogue model is served: an OpenAI-compatible endpoint. The API key
    is read from the environment variable `api_key_env` at start-up and never kept in
    the config or written to a log."""

    base_url: str = Field(min_length=1, pattern=r"^https?://")
    # the model name the upstream knows (default: the catalogue name)
    model: str | None = None
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    # the longest wait for the first byte of an answer, and between two stream chunks
    read_timeout_s: float = Field(default=60.0, gt=0)
    max_connections: int = Field(default=100, ge=1)
    max_keepalive: int = Field(default=20, ge=0)


class JudgeConfig(BaseModel):
    """A catalogue model that grades a sampled fraction of answered requests."""

    model: str = Field(min_length=1)
    fraction: float = Field(default=0.1, ge=0, le=1)
    max_per_minute: int = Field(default=60, ge=0)
    # graded requests waiting for the judge; beyond it a sampled request is skipped
    max_queue: int = Field(default=1000, ge=1)
    concurrency: int = Field(default=4, ge=1)
    # the sampling coin's seed (None: fresh randomness each start)
    seed: int | None = None


class ImplicitConfig(BaseModel):
    """Implicit signals, each off (None) by default or the quality it reports for the
    session's previous answer. They go through the same deferred path as the judge,
    so a user's own feedback on that event still wins."""

    # the user asked the same question again in the session: the last answer failed
    regenerate: float | None = Field(default=None, ge=0, le=1)
    # the conversation went on with a new question: the last answer was usable
    continued: float | None = Field(default=None, ge=0, le=1)
    # the model refused ("I can't help with that")
    refusal: float | None = Field(default=None, ge=0, le=1)
    # how long a session's last answer is remembered for these signals
    window_s: float = Field(default=1800.0, gt=0)


class GatewayConfig(BaseModel):
    # candidates tried after the chosen one fails (429, 5xx, timeout, connection)
    fallback_attempts: int = Field(default=2, ge=0)
    # the quality learned for a failed call's model (None: the failure is not learned)
    error_quality: float | None = Field(default=0.0, ge=0, le=1)
    # a session (x-banditroute-session, else the request's `user` when
    # session_from_user) keeps its model for this many turns; 1: every turn routes anew
    session_turns: int = Field(default=1, ge=1)
    session_from_user: bool = True
    session_ttl_s: float = Field(default=1800.0, gt=0)
    judge: JudgeConfig | None = None
    # cascade arms the policy chooses like models (see service/gateway/cascade.py)
    cascades: list[CascadeConfig] = Field(default_factory=list)
    # machine-made feedback (the judge's grade, implicit signals) is applied only if no
    # user feedback arrived this long after the decision: the user's takes precedence,
    # and exactly one outcome is learned per event
    feedback_wait_s: float = Field(default=60.0, ge=0)
    implicit: ImplicitConfig = Field(default_factory=ImplicitConfig)


class CascadeConfig(BaseModel):
    """A cascade arm: `first` answers; when its answer's confidence is below
    `threshold`, `then` answers instead. The policy chooses it like a model."""

    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\s/]+$")
    first: str = Field(min_length=1)
    then: str = Field(min_length=1)
    threshold: float = Field(ge=0, le=1)
    # judge: a catalogue model grades the first answer (1-10 -> [0, 1]);
    # agreement: the first model is sampled twice, confidence = the answers' overlap;
    # logprobs: the first answer's mean token probability (upstreams that return them)
    confidence: Literal["judge", "agreement", "logprobs"] = "judge"
    # the grader for confidence = "judge" (default: the gateway's judge model)
    judge_model: str | None = None


GatewayConfig.model_rebuild()
