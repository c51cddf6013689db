"""The FastAPI app, assembled in `create_app(settings)`; nothing connects or loads at
import time. The lifespan opens the store, loads the embedding model, restores each
policy from its newest snapshot, and starts the learners and background refreshers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from policies import Policy, PolicyError, load_policy
from service.abreport import collect, cost_scale, guardrail_stops
from service.batcher import FeatureBatcher
from service.embedder import Embedder
from service.experiments import ExperimentConfig
from service.features import Featurizer
from service.learner import Learner
from service.metrics import Metrics
from service.middleware import LimitsAndMetrics
from service.routes import experiments, feedback, health, models, policies, route
from service.runtime import single_threaded_blas
from service.runtime_state import Runtime
from service.serving import (
    ServingPolicy,
    build_policy,
    check_dim,
    check_features,
    features_json,
)
from service.settings import PolicyConfig, Settings
from service.store import open_store
from service.store.base import ModelPrice, Store, StoreUnavailable

log = logging.getLogger("banditroute.app")


def create_app(
    settings: Settings, *, embedder: Embedder | None = None, store: Store | None = None
) -> FastAPI:
    """Build the app. `embedder` / `store` may be injected (tests share one loaded
    model across apps); otherwise they are built from `settings` in the lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        single_threaded_blas()
        rt = await _start(settings, embedder, store)
        app.state.runtime = rt
        try:
            yield
        finally:
            await _shutdown(rt, close_store=store is None)

    app = FastAPI(
        title="banditroute",
        version="0.1.0",
        description="Online LLM routing with contextual bandits.",
        lifespan=lifespan,
    )
    for r in (
        route.router,
        feedback.router,
        models.router,
        policies.router,
        experiments.router,
        health.router,
    ):
        app.include_router(r)
    _install_handlers(app, settings)
    return app


async def _start(settings: Settings, embedder: Embedder | None, store: Store | None) -> Runtime:
    st = store or await open_store(
        settings.redis_url,
        settings.state_dir,
        prefix=settings.key_prefix,
        log_max=settings.decision_log_max,
        grace_s=settings.decision_grace_s,
        max_decisions=settings.decision_max_in_memory,
    )
    emb = embedder or Embedder(cache_size=settings.embed_cache_size)
    if not emb.loaded:
        await asyncio.to_thread(emb.load)
    featurizer = Featurizer(emb, projection_dim=settings.projection_dim)
    batcher = FeatureBatcher(
        emb,
        featurizer,
        max_batch=settings.embed_batch_max,
        max_wait_ms=settings.embed_batch_wait_ms,
    )
    catalogue, catalogue_confirmed = await _catalogue(settings, st)
    if not catalogue:
        raise RuntimeError("models: the catalogue is empty; configure at least one model")
    serving: dict[str, ServingPolicy] = {}
    for name, cfg in settings.policies.items():
        serving[name] = await _restore(
            name,
            st,
            lambda n=name, c=cfg: build_policy(n, c, catalogue, featurizer.dim),
            featurizer.dim,
            features_json(featurizer),
        )
        serving[name].sync_models(catalogue)
    rt = Runtime(
        settings=settings,
        store=st,
        batcher=batcher,
        metrics=Metrics(),
        policies=serving,
        catalogue=catalogue,
        catalogue_confirmed=catalogue_confirmed,
        experiments=await _experiments(settings, st),
    )
    batcher.start()
    if settings.run_learner:
        for name, cfg in settings.policies.items():
            learner = Learner(
                st,
                name,
                functools.partial(_fresh, name, cfg, rt, featurizer.dim),
                every_n=settings.snapshot_every_n,
                every_ms=settings.snapshot_every_ms,
                lease_ttl_ms=settings.lease_ttl_ms,
                default_reward=settings.default_reward,
                models=rt.confirmed_catalogue,
                features=features_json(featurizer),
            )
            rt.learners.append(learner)
            rt.tasks.append(asyncio.create_task(learner.run(rt.stop), name=f"learner-{name}"))
    rt.tasks.append(asyncio.create_task(_refresh(rt), name="refresh"))
    return rt


def _fresh(name: str, cfg: PolicyConfig, rt: Runtime, dim: int) -> Policy:
    """A cold-start policy over the current catalogue (the learner's first state)."""
    return build_policy(name, cfg, rt.catalogue, dim)


async def _catalogue(settings: Settings, st: Store) -> tuple[dict[str, ModelPrice], bool]:
    """The model catalogue, and whether it was read from the store (False: the
    configured one, as a stand-in while the store is down)."""
    configured = {
        m.name: m.price() for m in settings.models
    }
    try:
        stored = await st.get_models()
        if not stored:
            # the config seeds an empty catalogue; after that the API owns it, so a
            # model deleted through the API does not come back with the next restart
            for price in configured.values():
                await st.put_model(price)
            stored = dict(configured)
        return dict(stored), True
    except StoreUnavailable:
        log.warning("store unreachable at start-up: serving the configured catalogue")
        return configured, False


async def _experiments(settings: Settings, st: Store) -> dict[str, ExperimentConfig]:
    """The experiments: the store's, seeded with configured ones it does not have."""
    configured = {e.name: e for e in settings.experiments}
    try:
        # seeded once: after that the API owns it, and a deleted one stays deleted
        known = await st.get_experiments(include_deleted=True)
        for name, exp in configured.items():
            if name not in known:
                await st.put_experiment(name, exp.model_dump_json())
        return _parse_experiments(await st.get_experiments(), settings, configured)
    except StoreUnavailable:
        log.warning("store unreachable at start-up: serving the configured experiments")
        return configured


def _parse_experiments(
    raw: dict[str, str], settings: Settings, current: dict[str, ExperimentConfig]
) -> dict[str, ExperimentConfig]:
    """Parse stored configs; one that no longer fits this worker's policies keeps its
    previous version here (logged), so a bad write never half-applies."""
    out = {}
    for name, doc in raw.items():
        try:
            exp = ExperimentConfig.model_validate_json(doc)
            exp.check_policies(settings.policies)
        except ValueError as exc:
            log.error("experiment %s: stored config rejected: %s", name, exc)
            if name in current:
                out[name] = current[name]
            continue
        out[name] = exp
    return out


async def _guard(rt: Runtime) -> None:
    """Apply each experiment's guardrail: a stopped variant's weight goes to 0."""
    for name, exp in list(rt.experiments.items()):
        if exp.guardrail is None:
            continue
        scale = cost_scale(exp, rt.catalogue)
        stops = guardrail_stops(exp, await collect(rt.store, exp), scale)
        if stops:
            # merge into the newest stored config, not this worker's copy, so an admin
            # change made meanwhile is kept (a change within this one round trip can
            # still be overwritten: the store has no compare-and-set for configs)
            doc = (await rt.store.get_experiments()).get(name)
            if doc is None:
                continue  # deleted meanwhile
            exp = ExperimentConfig.model_validate_json(doc)
            stops = {v: r for v, r in stops.items() if v in {x.name for x in exp.variants}}
            updated = exp.model_copy(update={"stopped": {**stops, **exp.stopped}})
            await rt.store.put_experiment(name, updated.model_dump_json())
            rt.experiments[name] = updated
            for variant, rec in stops.items():
                log.warning("experiment %s: guardrail stopped %s: %s", name, variant, rec.reason)


async def _restore(
    name: str, st: Store, fresh: Any, dim: int, features: str = ""
) -> ServingPolicy:
    try:
        snap = await st.load_snapshot(name)
    except StoreUnavailable:
        snap = None
    if snap is None:
        return ServingPolicy(name, fresh(), 0, features)
    check_features(name, snap, features)
    policy = await asyncio.to_thread(load_policy, snap.state)
    check_dim(name, policy, dim)
    return ServingPolicy(name, policy, snap.version, features)


async def _refresh(rt: Runtime) -> None:
    """Keep the catalogue and the served snapshots current even without traffic."""
    period = rt.settings.reload_poll_ms / 1000
    last_catalogue = last_guard = 0.0
    while not rt.stop.is_set():
        try:
            now = time.monotonic()
            if now - last_guard >= rt.settings.guardrail_every_s:
                last_guard = now
                await _guard(rt)
            if now - last_catalogue >= 1.0:
                last_catalogue = now
                rt.experiments = _parse_experiments(
                    await rt.store.get_experiments(), rt.settings, rt.experiments
                )
                stored = await rt.store.get_models()
                if not stored and not rt.catalogue_confirmed:
                    # the store was down at start-up and is empty: seed it now
                    for price in rt.catalogue.values():
                        await rt.store.put_model(price)
                if stored and stored != rt.catalogue:
                    renamed = stored.keys() != rt.catalogue.keys()
                    rt.catalogue = dict(stored)  # new prices reach every worker too
                    if renamed:
                        for serving in rt.policies.values():
                            serving.sync_models(rt.catalogue)
                rt.catalogue_confirmed = True
            for name, serving in rt.policies.items():
                seen = await rt.store.snapshot_version(name)
                serving.notice_version(rt.store, seen, rt.catalogue)
            rt.store_ok = True
        except StoreUnavailable:
            rt.store_ok = False
        except PolicyError as exc:  # never let a bad model change kill the refresher
            log.error("refresh: %s", exc)
        except Exception:  # nor anything else: a dead refresher would go unnoticed
            log.exception("refresh failed; retrying")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rt.stop.wait(), timeout=period)


async def _shutdown(rt: Runtime, *, close_store: bool) -> None:
    rt.stop.set()
    for t in rt.tasks:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(t, timeout=10)
    await rt.batcher.stop()
    if close_store:
        await rt.store.close()


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def _install_handlers(app: FastAPI, settings: Settings) -> None:
    body_limit = settings.max_query_chars * 4 + 65536

    def current_metrics() -> Metrics | None:
        rt: Runtime | None = getattr(app.state, "runtime", None)
        return None if rt is None else rt.metrics

    app.add_middleware(LimitsAndMetrics, body_limit=body_limit, metrics=current_metrics)

    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse(
                status_code=status.HTTP_400_BAD_REQUEST,
                content={"detail": "body: malformed JSON"},
            )
        messages = [f"{_field(tuple(e.get('loc', ())))}: {e.get('msg')}" for e in errors]
        return JSONResponse(
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
            content={
                "detail": "; ".join(messages),
                "errors": [
                    {"field": _field(tuple(e.get("loc", ()))), "message": e.get("msg")}
                    for e in errors
                ],
            },
        )

    @app.exception_handler(StoreUnavailable)
    async def store_down(request: Request, exc: StoreUnavailable) -> JSONResponse:
        return JSONResponse(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            content={"detail": "the store is unreachable; retry later"},
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(
            status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
            content={"detail": "internal error; it has been logged"},
        )
