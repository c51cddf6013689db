"""Everything one app instance holds between requests, built in its lifespan."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from service.batcher import FeatureBatcher
from service.budgets.config import TenantConfig
from service.experiments import ExperimentConfig
from service.learner_pool import LearnerPool
from service.metrics import Metrics
from service.serving import ServingPolicy
from service.settings import Settings
from service.store.base import ModelPrice, Store

if TYPE_CHECKING:
    from service.gateway.service import Gateway


@dataclass
class Runtime:
    settings: Settings
    store: Store
    batcher: FeatureBatcher
    metrics: Metrics
    policies: dict[str, ServingPolicy]
    catalogue: dict[str, ModelPrice]
    pool: LearnerPool | None = None  # this process's share of the learners
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    store_ok: bool = True
    catalogue_confirmed: bool = True
    experiments: dict[str, ExperimentConfig] = field(default_factory=dict)
    # held across each check-and-act on the catalogue (routes/models.py)
    catalogue_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    gateway: Gateway | None = None  # the OpenAI-compatible front door's parts
    # tenants as stored (keys as digests), and key digest -> tenant
    tenants: dict[str, TenantConfig] = field(default_factory=dict)
    tenant_keys: dict[str, str] = field(default_factory=dict)

    @functools.cached_property
    def shadows_of(self) -> dict[str, list[str]]:
        """Served policy -> the policies running in its shadow."""
        out: dict[str, list[str]] = {}
        for name, cfg in self.settings.policies.items():
            if cfg.shadow_of is not None:
                out.setdefault(cfg.shadow_of, []).append(name)
        return out

    def model_names(self) -> list[str]:
        return list(self.catalogue)

    def confirmed_catalogue(self) -> dict[str, ModelPrice] | None:
        """The catalogue for the learner, or None while it is only the configured
        stand-in: the learner must never drop a learned model on a guess."""
        return dict(self.catalogue) if self.catalogue_confirmed else None
