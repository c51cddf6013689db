"""The service's one settings class: environment variables (prefix BANDITROUTE_), an
optional TOML config file, and defaults, in that order of precedence."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from service.budgets.config import (
    OWN_STATE_KINDS,
    PacerConfig,
    TenantConfig,
    check_tenant_name,
)
from service.embedder import EmbedBackend
from service.experiments import ExperimentConfig
from service.gateway.config import GatewayConfig, UpstreamConfig
from service.privacy.rules import PrivacyConfig
from service.store.base import ModelPrice


class ModelConfig(BaseModel):
    """A model of the catalogue, priced in USD per 1M input / output tokens."""

    name: str = Field(min_length=1, max_length=200)
    input_per_m: float = Field(ge=0)
    output_per_m: float = Field(ge=0)
    expected_output_tokens: int = Field(default=256, ge=0)
    expected_input_tokens: int = Field(default=200, ge=0)
    # what is known of its quality before feedback, worth prior_strength observations
    # (policies that take priors: `hybrid`)
    prior_quality: float | None = Field(default=None, ge=0, le=1)
    prior_strength: float | None = Field(default=None, gt=0)
    # USD per 1M prompt tokens served from the upstream's prompt cache (default: the
    # input price); the gateway prices usage's cached_tokens with it
    cached_input_per_m: float | None = Field(default=None, ge=0)
    # where the gateway calls it (POST /v1/chat/completions); None: route only
    upstream: UpstreamConfig | None = None
    # what privacy rules read (`local`, `eu`, `cloud`, ...)
    tags: list[str] = Field(default_factory=list)

    def price(self) -> ModelPrice:
        """The catalogue entry, with the prior the policies start this model from."""
        meta = {
            "expected_input_tokens": self.expected_input_tokens,
            "expected_output_tokens": self.expected_output_tokens,
            "prior_quality": self.prior_quality,
            "prior_strength": self.prior_strength,
            "cached_input_per_m": self.cached_input_per_m,
            "tags": list(self.tags),
        }
        return ModelPrice(self.name, self.input_per_m, self.output_per_m, meta)


class PolicyConfig(BaseModel):
    """A named policy (a tenant): its kind and hyper-parameters, see `policies`."""

    kind: str = "hybrid"
    params: dict[str, Any] = Field(default_factory=dict)
    cost_weight: float = Field(default=0.2, ge=0)
    # run in shadow beside this served policy: see every request, learn from its
    # feedback, never answer
    shadow_of: str | None = None
    # move cost_weight online toward a spend target (service/budgets/pacer.py); a
    # paced policy routes with the pacer's λ, whatever a request asks
    pacer: PacerConfig | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BANDITROUTE_", env_nested_delimiter="__", extra="forbid"
    )

    redis_url: str | None = None
    key_prefix: str = "br"
    state_dir: Path = Path("state")

    models: list[ModelConfig] = Field(default_factory=list)
    policies: dict[str, PolicyConfig] = Field(default_factory=lambda: {"default": PolicyConfig()})
    default_policy: str = "default"
    fallback_model: str | None = None

    # A/B experiments seed the store at start-up when it has none of that name; after
    # that the admin API owns them (as with the model catalogue)
    experiments: list[ExperimentConfig] = Field(default_factory=list)
    default_experiment: str | None = None  # requests naming no policy join it
    decision_log_max: int = Field(default=100_000, ge=1)
    guardrail_every_s: float = Field(default=5.0, gt=0)

    # None: all 384 embedding dimensions (measured best with the hybrid learner)
    projection_dim: int | None = Field(default=None, ge=1, le=384)
    # texts per embedding batch; None: sized for the device (32 on CPU, 128 on CUDA)
    embed_batch_max: int | None = Field(default=None, ge=1)
    # where the embedding model runs: "auto" is CUDA where the backend sees a device
    # (torch: torch.cuda; ONNX: onnxruntime's CUDA provider), else the CPU
    embed_device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    embed_batch_wait_ms: float = Field(default=2.0, ge=0)
    embed_cache_size: int = Field(default=50_000, ge=0)
    # the embedding cache's memory bound (vectors and keys; texts are never kept)
    embed_cache_max_bytes: int = Field(default=128 * 2**20, ge=0)
    # new queries waiting for the model; beyond it a route answers 503 + Retry-After
    embed_queue_max: int = Field(default=1024, ge=1)
    # what computes the vectors (service/embedder.py): "onnx" (ONNX Runtime fp32) matched
    # torch to cosine 0.9999995 on 2,000 prompts of each shared set and halved the CPU a
    # new query costs on 2 cores (benchmarks.embed_gate, benchmarks.load); "onnx-int8" is
    # faster still but strays (min cosine 0.974, mean 0.993); "torch" is the reference.
    # A policy learned under one backend is refused under another.
    embed_backend: EmbedBackend = "onnx"
    # where the ONNX exports are cached (made from the local model files on first load);
    # None: $XDG_CACHE_HOME/banditroute/onnx or ~/.cache/banditroute/onnx
    embed_onnx_dir: Path | None = None

    decision_ttl_s: float = Field(default=24 * 3600, gt=0)
    # how long past its deadline an answered or closed decision's tombstone is kept,
    # so a late second feedback is a 409 rather than a 404
    decision_grace_s: float = Field(default=3600, ge=0)
    # the in-process store keeps at most this many decision records per policy and
    # sheds the oldest beyond (banditroute_decisions_shed); Redis expires them instead
    decision_max_in_memory: int = Field(default=500_000, ge=1)
    default_reward: float | None = Field(default=None, ge=0, le=1)
    snapshot_every_n: int = Field(default=200, ge=1)
    snapshot_every_ms: int = Field(default=1000, ge=1)
    lease_ttl_ms: int = Field(default=5000, ge=100)
    reload_poll_ms: int = Field(default=500, ge=10)
    run_learner: bool = True
    # "json": one JSON object a log line, with extra fields such as event_id and
    # policy (service.logs); "text": plain lines
    log_format: Literal["text", "json"] = "text"

    client_keys: list[SecretStr] = Field(default_factory=list)
    admin_key: SecretStr | None = None
    # with keys set, /metrics and the API docs (/openapi.json, /docs) need a key too
    # unless opened here (e.g. for a Prometheus that scrapes without one);
    # /healthz and /readyz are always open
    public_metrics: bool = False
    public_docs: bool = False

    # tenants (service/budgets/): seed the store at start-up like experiments; after
    # that the admin API owns them (own_state is fixed at start-up: it adds a learner)
    tenants: dict[str, TenantConfig] = Field(default_factory=dict)

    # the OpenAI-compatible gateway (service/gateway/)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    # where sensitive data may go (service/privacy/rules.py)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)

    max_query_chars: int = Field(default=100_000, ge=1)
    max_candidates: int = Field(default=64, ge=1)

    @field_validator("policies")
    @classmethod
    def _some_policy(cls, v: dict[str, PolicyConfig]) -> dict[str, PolicyConfig]:
        if not v:
            raise ValueError("policies: at least one policy must be configured")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: duplicate model names in {names}")
        if self.default_policy not in self.policies:
            raise ValueError(
                f"default_policy: {self.default_policy!r} is not among policies "
                f"{sorted(self.policies)}"
            )
        for name, p in self.policies.items():
            if p.shadow_of is not None and (
                p.shadow_of == name or p.shadow_of not in self.policies
            ):
                raise ValueError(
                    f"policies.{name}.shadow_of: {p.shadow_of!r} is not another configured policy"
                )
        for name, p in self.policies.items():
            if p.pacer is not None and p.shadow_of is not None:
                raise ValueError(
                    f"policies.{name}.pacer: a shadow never routes; it cannot be paced"
                )
        for name, t in self.tenants.items():
            try:
                check_tenant_name(name)
            except ValueError as exc:
                raise ValueError(f"tenants.{name}: {exc}") from None
            policy = t.policy or self.default_policy
            if policy not in self.policies or self.policies[policy].shadow_of is not None:
                raise ValueError(
                    f"tenants.{name}.policy: {policy!r} is not a served policy "
                    f"{sorted(n for n, p in self.policies.items() if p.shadow_of is None)}"
                )
            if t.keyed and self.admin_key is None:
                raise ValueError(
                    f"tenants.{name}.keys: a tenant with keys needs admin_key set (without "
                    "keys every other caller is admin, and could read every tenant)"
                )
            if t.own_state and self.policies[policy].kind not in OWN_STATE_KINDS:
                raise ValueError(
                    f"tenants.{name}.own_state: policy {policy!r} is a "
                    f"{self.policies[policy].kind!r}; own state needs one of {OWN_STATE_KINDS}"
                )
            unknown = sorted(set(t.candidates or []) - set(names))
            if self.models and unknown:
                raise ValueError(f"tenants.{name}.candidates: unknown model(s) {unknown}")
        exps = [e.name for e in self.experiments]
        if len(set(exps)) != len(exps):
            raise ValueError(f"experiments: duplicate experiment names in {exps}")
        for e in self.experiments:
            try:
                e.check_policies(self.policies)
            except ValueError as exc:
                raise ValueError(f"experiments.{e.name}.{exc}") from None
        if self.default_experiment is not None and self.default_experiment not in exps:
            raise ValueError(
                f"default_experiment: {self.default_experiment!r} is not among experiments {exps}"
            )
        upstreamed = {m.name for m in self.models if m.upstream is not None}
        for i, c in enumerate(self.gateway.cascades):
            where = f"gateway.cascades[{i}]"
            for field in ("first", "then"):
                if self.models and getattr(c, field) not in upstreamed:
                    raise ValueError(
                        f"{where}.{field}: {getattr(c, field)!r} is not a configured model "
                        f"with an upstream (those with one: {sorted(upstreamed)})"
                    )
            if c.name in names:
                raise ValueError(f"{where}.name: {c.name!r} is also a model's name")
            grader = c.judge_model
            if grader is not None and self.models and grader not in upstreamed:
                raise ValueError(
                    f"{where}.judge_model: {grader!r} is not a configured model with an upstream"
                )
        judge = self.gateway.judge
        if judge is not None and self.models:
            upstreams = {m.name for m in self.models if m.upstream is not None}
            if judge.model not in upstreams:
                raise ValueError(
                    f"gateway.judge.model: {judge.model!r} is not a configured model with "
                    f"an upstream (those with one: {sorted(upstreams)})"
                )
        fallback = self.privacy.fallback_model
        if fallback is not None and self.models:
            allowed = {t for r in self.privacy.rules for t in r.allow_tags}
            tagged = {m.name for m in self.models if allowed & set(m.tags)}
            if fallback not in tagged:
                raise ValueError(
                    f"privacy.fallback_model: {fallback!r} is not a configured model with an "
                    f"allowed tag {sorted(allowed)} (those with one: {sorted(tagged)})"
                )
        if self.fallback_model is not None and self.models and self.fallback_model not in names:
            raise ValueError(f"fallback_model: {self.fallback_model!r} is not a configured model")
        return self

    @property
    def auth_enabled(self) -> bool:
        return bool(self.client_keys) or self.admin_key is not None


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Settings from keyword overrides, then the environment, then a config file
    (TOML, or YAML for a .yaml / .yml name)."""
    if config is None:
        return Settings(**overrides)
    if not Path(config).is_file():
        raise FileNotFoundError(f"config file {config} does not exist")
    yaml = Path(config).suffix.lower() in (".yaml", ".yml")

    class FromFile(Settings):
        model_config = SettingsConfigDict(
            **{**Settings.model_config, f"{'yaml' if yaml else 'toml'}_file": config}  # type: ignore[misc]
        )

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            if yaml:
                return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))
            return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    return FromFile(**overrides)
