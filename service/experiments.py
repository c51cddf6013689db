"""A/B experiments: their configuration, its validation, and sticky unit assignment.

An experiment splits traffic between variants by unit (a user, a session): each
variant routes with one of the configured policies, learning or static. Assignment is
weighted rendezvous hashing: unit u draws an exponential E_v = -ln(h(salt, u, v)) per
variant and lands in the variant with the smallest E_v / w_v. It needs no stored
state (every worker, before and after a restart, computes the same answer), lands a
unit in v with probability w_v / Σw, and when one weight changes only units moving to
or from that variant move: the fewest a weight change can move.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME = r"^[A-Za-z0-9_-]{1,64}$"


class VariantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME)
    policy: str = Field(pattern=NAME, description="a configured policy (learning or static)")
    weight: float = Field(ge=0, le=1e6, allow_inf_nan=False)


class GuardrailConfig(BaseModel):
    """Stop a variant (its weight goes to 0) once its reward is below control's by more
    than `margin` with anytime-valid confidence 1 − alpha, after `min_feedback` each."""

    model_config = ConfigDict(extra="forbid")

    margin: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    # the intervals rest on a normal approximation: not below 30 per variant
    min_feedback: int = Field(default=100, ge=30)


class StopRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: float = Field(ge=0, allow_inf_nan=False)
    reason: str = Field(max_length=2000)


class ExperimentConfig(BaseModel):
    """One experiment. `cost_weight` is the λ of the reported reward
    (quality − λ · cost / cost_scale), `cost_scale` the USD of one cost unit (None:
    the priciest catalogue model's expected cost, as the policies use)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME)
    variants: list[VariantConfig] = Field(min_length=1, max_length=32)
    control: str | None = None
    salt: str | None = Field(default=None, max_length=128)
    cost_weight: float = Field(default=0.2, ge=0, allow_inf_nan=False)
    cost_scale: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    guardrail: GuardrailConfig | None = None
    stopped: dict[str, StopRecord] = Field(default_factory=dict)
    # learning variants also learn from the other variants' feedback (sound: every
    # decision is logged with its propensity); by default each learns from its own
    share_feedback: bool = False
    # the tenant it belongs to: only that tenant's requests join it and only its key
    # (or the admin's) sees it; None: global
    tenant: str | None = Field(default=None, pattern=NAME)

    @field_validator("variants")
    @classmethod
    def _variants(cls, v: list[VariantConfig]) -> list[VariantConfig]:
        names = [x.name for x in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate variant names {dupes}")
        if not sum(x.weight for x in v) > 0:
            raise ValueError("the weights of the variants sum to 0: no traffic to assign")
        return v

    @model_validator(mode="after")
    def _control(self) -> ExperimentConfig:
        names = [x.name for x in self.variants]
        if self.control is None:
            self.control = names[0]
        elif self.control not in names:
            raise ValueError(f"control: {self.control!r} is not a variant of {names}")
        unknown = sorted(set(self.stopped) - set(names))
        if unknown:
            raise ValueError(f"stopped: {unknown} are not variants")
        return self

    @property
    def key_salt(self) -> str:
        return self.salt if self.salt is not None else self.name

    def variant(self, name: str) -> VariantConfig:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    def check_policies(self, known: Collection[str]) -> None:
        """Every variant's policy must be configured (ValueError naming it otherwise)."""
        for v in self.variants:
            if v.policy not in known:
                raise ValueError(
                    f"variants: variant {v.name!r} uses unknown policy {v.policy!r}; "
                    f"configured: {sorted(known)}"
                )

    def effective_weights(self) -> dict[str, float]:
        """Weights after guardrail stops (a stopped variant gets no new units)."""
        return {v.name: 0.0 if v.name in self.stopped else v.weight for v in self.variants}


def _uniform(salt: str, unit: str, variant: str) -> float:
    """A uniform draw in (0, 1) fixed by (salt, unit, variant)."""
    h = hashlib.blake2b(f"{salt}\x1f{unit}\x1f{variant}".encode(), digest_size=8).digest()
    return (int.from_bytes(h, "big") + 0.5) / 2**64


def assign(exp: ExperimentConfig, unit: str) -> str:
    """The variant of `unit`: sticky, deterministic, proportional to the weights."""
    best, best_score = None, math.inf
    for name, w in exp.effective_weights().items():
        if w <= 0:
            continue
        score = -math.log(_uniform(exp.key_salt, unit, name)) / w
        if score < best_score:
            best, best_score = name, score
    if best is None:
        # every variant stopped by the guardrail: control keeps serving
        assert exp.control is not None
        return exp.control
    return best
