"""Request and response bodies of the HTTP API, named for what they carry."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from service.embedder import text_from_messages

# Request models are strict: the spec says number or boolean, and lax parsing would
# take `true` as 1.0 or "0.5" as 0.5, accepting bodies the spec calls invalid.
JudgeScale = Annotated[float, Field(ge=-1e6, le=1e6, allow_inf_nan=False)]
MAX_CALL_USD = 1000.0  # one LLM call; anything above is a unit mistake
MAX_TOKENS = 100_000_000
PolicyName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


def _unicode(text: str) -> str:
    """JSON can carry unpaired UTF-16 surrogates ("\\ud800") that are no text at all:
    the tokenizer, Redis and the JSON encoder all fail on them, so refuse them here."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (it has an unpaired surrogate)") from None
    return text


# A string the service keeps, echoes or embeds: valid Unicode only.
Text = Annotated[str, AfterValidator(_unicode)]
# the spec's way to say "not empty or whitespace only" (a JSON Schema pattern searches)
_NOT_BLANK: dict[str, Any] = {"pattern": r"\S"}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Text
    content: Text | list[dict[str, Any]]


class RouteRequest(BaseModel):
    """Exactly one of `query` or OpenAI-style `messages` (routed on the last user
    message, which must have text that is not only whitespace), and at most one of
    `policy` and `experiment`."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        # the rules the validator enforces, for generated clients and fuzzers
        json_schema_extra={
            "oneOf": [
                {"required": ["query"], "properties": {"query": {"type": "string"}}},
                {"required": ["messages"], "properties": {"messages": {"type": "array"}}},
            ],
            "not": {
                "required": ["policy", "experiment"],
                "properties": {
                    "policy": {"type": "string"},
                    "experiment": {"type": "string"},
                },
            },
        },
    )

    query: Text | None = Field(default=None, json_schema_extra=_NOT_BLANK)
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    candidates: list[Text] | None = Field(default=None, min_length=1)
    cost_weight: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    policy: PolicyName | None = None
    experiment: PolicyName | None = None
    unit_id: Text | None = Field(default=None, min_length=1, max_length=256)
    explain: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> RouteRequest:
        if (self.query is None) == (self.messages is None):
            raise ValueError("give exactly one of 'query' or 'messages'")
        if self.policy is not None and self.experiment is not None:
            raise ValueError("give 'policy' or 'experiment', not both")
        if self.query is not None and not self.query.strip():
            raise ValueError("query must not be empty")
        if self.messages is not None:
            # the text routed on obeys the rules of `query`
            text = text_from_messages([m.model_dump() for m in self.messages])
            if not text.strip():
                raise ValueError("messages: the last user message has no text content")
            _unicode(text)
        return self


class CandidateExplanation(BaseModel):
    probability: float
    expected_quality: float | None = None
    expected_cost_usd: float | None = None
    score: float | None = None


class RouteResponse(BaseModel):
    event_id: str | None
    model: str
    propensity: float
    policy: str
    policy_version: int
    degraded: bool = False
    experiment: str | None = None
    variant: str | None = None
    explanation: dict[str, CandidateExplanation] | None = None


class FeedbackRequest(BaseModel):
    """The outcome of a routed call: one quality signal and the call's cost.

    quality in [0, 1]; or thumbs up (1) / down (0); or a judge `score` on
    [score_min, score_max]. Cost as `cost_usd`, or token counts priced from the
    model catalogue.
    """

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        # the rules the validator enforces (all but score in [score_min, score_max])
        json_schema_extra={
            "allOf": [
                {
                    "oneOf": [
                        {"required": [n], "properties": {n: {"type": t}}}
                        for n, t in (
                            ("quality", "number"),
                            ("thumbs", "string"),
                            ("score", "number"),
                        )
                    ]
                },
                {
                    "anyOf": [
                        {"required": ["cost_usd"], "properties": {"cost_usd": {"type": "number"}}},
                        {
                            "required": ["prompt_tokens", "completion_tokens"],
                            "properties": {
                                "prompt_tokens": {"type": "integer"},
                                "completion_tokens": {"type": "integer"},
                            },
                        },
                    ]
                },
            ]
        },
    )

    event_id: Text = Field(min_length=1, max_length=200)
    quality: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    thumbs: Literal["up", "down"] | None = None
    score: JudgeScale | None = None
    score_min: JudgeScale = 0.0
    score_max: JudgeScale = 10.0
    # bounds keep one absurd value from swamping the policy's cost statistics
    cost_usd: Annotated[float, Field(ge=0, le=MAX_CALL_USD, allow_inf_nan=False)] | None = None
    prompt_tokens: Annotated[int, Field(ge=0, le=MAX_TOKENS)] | None = None
    completion_tokens: Annotated[int, Field(ge=0, le=MAX_TOKENS)] | None = None
    source: Literal["user", "judge"] = "user"

    @model_validator(mode="after")
    def _signals(self) -> FeedbackRequest:
        given = [n for n in ("quality", "thumbs", "score") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of 'quality', 'thumbs' or 'score' (got {given or 'none'})"
            )
        if self.score is not None:
            if self.score_max <= self.score_min:
                raise ValueError("score_max must be greater than score_min")
            if not self.score_min <= self.score <= self.score_max:
                raise ValueError(
                    f"score must lie in [score_min, score_max] = "
                    f"[{self.score_min}, {self.score_max}]"
                )
        tokens = (self.prompt_tokens, self.completion_tokens)
        if self.cost_usd is None and None in tokens:
            raise ValueError(
                "give the call's cost: 'cost_usd', or both 'prompt_tokens' and 'completion_tokens'"
            )
        return self

    def quality_value(self) -> float:
        if self.quality is not None:
            return self.quality
        if self.thumbs is not None:
            return 1.0 if self.thumbs == "up" else 0.0
        assert self.score is not None
        return (self.score - self.score_min) / (self.score_max - self.score_min)


class FeedbackResponse(BaseModel):
    event_id: str
    status: Literal["accepted"]
    quality: float
    cost_usd: float


class ModelIn(BaseModel):
    # strict: the schema says number, so `true` is no price (nor "1")
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Text = Field(min_length=1, max_length=200, pattern=r"^[^\s/]+$")
    input_per_m: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]
    output_per_m: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]
    # the prior a policy starts this model from: expected cost = price x expected tokens,
    # and optionally an expected quality worth prior_strength observations
    expected_input_tokens: int = Field(default=200, ge=0, le=10_000_000)
    expected_output_tokens: int = Field(default=256, ge=0, le=10_000_000)
    prior_quality: Annotated[float | None, Field(ge=0, le=1, allow_inf_nan=False)] = None
    prior_strength: Annotated[float | None, Field(gt=0, le=1e6, allow_inf_nan=False)] = None


class ModelOut(ModelIn):
    pass


class ModelStatsOut(BaseModel):
    pulls: int
    mean_quality: float | None
    mean_cost_usd: float | None
    mean_reward: float | None


class PolicyStatus(BaseModel):
    name: str
    kind: str
    version: int
    updates_applied: int
    feedback_total: int
    feedback_waiting: int
    learner_lag_s: float | None
    models: dict[str, ModelStatsOut]


class Health(BaseModel):
    status: str
    detail: dict[str, Any] = Field(default_factory=dict)


class ErrorOut(BaseModel):
    """Every error response: `detail` names the field or the cause in one line."""

    detail: str


class FieldError(BaseModel):
    field: str
    message: str


class ValidationErrorOut(BaseModel):
    """A 422: `detail` joins every problem in one line; `errors` (present when the
    body failed validation) lists them one by one."""

    detail: str
    errors: list[FieldError] = Field(default_factory=list)
