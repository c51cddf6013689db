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
    # the call's cost will be posted separately: a quality posted first waits for it
    cost_later: bool = False
    # the tenant it is for: a tenant's API key names it already (naming another is a
    # 403); a tenant without keys is named here
    tenant: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    # the answer's token bound, for a capped tenant's reservation (else the catalogue's
    # expected output)
    max_output_tokens: int | None = Field(default=None, ge=1, le=10_000_000)

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


_SIGNALS = (("quality", "number"), ("thumbs", "string"), ("score", "number"))
_TOKENS = (("prompt_tokens", "completion_tokens"), ("completion_tokens", "prompt_tokens"))


def _given(name: str, kind: str) -> dict[str, Any]:
    """The schema of "`name` is present and not null"."""
    return {"required": [name], "properties": {name: {"type": kind}}}


# the rules FeedbackRequest's validator enforces (all but score in [score_min,
# score_max]), for generated clients and fuzzers: at most one quality signal; a token
# count needs its pair (or cost_usd); and a quality signal or a cost, or both
_FEEDBACK_RULES: dict[str, Any] = {
    "allOf": [
        {
            "not": {
                "anyOf": [
                    {
                        "required": [a, b],
                        "properties": {a: {"type": ta}, b: {"type": tb}},
                    }
                    for i, (a, ta) in enumerate(_SIGNALS)
                    for b, tb in _SIGNALS[i + 1 :]
                ]
            }
        },
        *(
            {
                "anyOf": [
                    {"not": _given(one, "integer")},
                    _given("cost_usd", "number"),
                    _given(other, "integer"),
                ]
            }
            for one, other in _TOKENS
        ),
        {
            "anyOf": [
                *(_given(n, t) for n, t in _SIGNALS),
                _given("cost_usd", "number"),
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
}


class FeedbackRequest(BaseModel):
    """The outcome of a routed call: a quality signal, the call's cost, or both (they
    may come apart, in either order; each counts once).

    quality in [0, 1]; or thumbs up (1) / down (0); or a judge `score` on
    [score_min, score_max]. Cost as `cost_usd`, or token counts priced from the
    model catalogue. A quality alone learns with an estimated cost unless the
    decision has (or awaits) a measured one; a cost attached earlier wins over a cost
    given with the quality.
    """

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra=_FEEDBACK_RULES,
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
        given = [n for n, _ in _SIGNALS if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of 'quality', 'thumbs' or 'score' (got {given})")
        if self.score is not None:
            if self.score_max <= self.score_min:
                raise ValueError("score_max must be greater than score_min")
            if not self.score_min <= self.score <= self.score_max:
                raise ValueError(
                    f"score must lie in [score_min, score_max] = "
                    f"[{self.score_min}, {self.score_max}]"
                )
        tokens = (self.prompt_tokens, self.completion_tokens)
        if self.cost_usd is None and tokens.count(None) == 1:
            raise ValueError(
                "give the call's cost as 'cost_usd', or both 'prompt_tokens' and "
                "'completion_tokens'"
            )
        if not given and not self.has_cost():
            raise ValueError(
                "give a quality ('quality', 'thumbs' or 'score'), the call's cost "
                "('cost_usd', or 'prompt_tokens' and 'completion_tokens'), or both"
            )
        return self

    def has_cost(self) -> bool:
        return self.cost_usd is not None or None not in (self.prompt_tokens, self.completion_tokens)

    def quality_value(self) -> float | None:
        """The quality signal on [0, 1], None if the request carries only a cost."""
        if self.quality is not None:
            return self.quality
        if self.thumbs is not None:
            return 1.0 if self.thumbs == "up" else 0.0
        if self.score is None:
            return None
        return (self.score - self.score_min) / (self.score_max - self.score_min)


class FeedbackResponse(BaseModel):
    """status: "accepted" (the quality was learned, with cost_usd), "awaiting_cost"
    (the quality waits for the decision's cost, posted apart), "cost_attached" (the
    cost was taken; a quality posted earlier or later is learned with it).
    cost_estimated: cost_usd is an estimate (no cost was given or attached)."""

    event_id: str
    status: Literal["accepted", "awaiting_cost", "cost_attached"]
    quality: float | None
    cost_usd: float | None
    cost_estimated: bool = False


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


class ModelListEntry(BaseModel):
    """One entry of GET /v1/models: OpenAI's fields, then banditroute's."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "banditroute"
    kind: Literal["router", "model"]
    upstream: bool | None = None
    name: str | None = None
    input_per_m: float | None = None
    output_per_m: float | None = None
    expected_input_tokens: int | None = None
    expected_output_tokens: int | None = None
    prior_quality: float | None = None
    prior_strength: float | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelListEntry]


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
