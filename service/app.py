"""The FastAPI app, assembled in `create_app(settings)`; nothing connects or loads at
import time. The lifespan opens the store, loads the embedding model, restores each
policy from its newest snapshot, and starts the learners and background refreshers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials
from starlette.exceptions import HTTPException as StarletteHTTPException

from policies import Policy, PolicyError, load_policy
from service.abreport import collect, cost_scale, guardrail_stops
from service.batcher import FeatureBatcher, Overloaded
from service.budgets import registry
from service.deps import DocsAuth, _role, require_admin
from service.embedder import Embedder, batch_for, resolve_device, tokens_for
from service.experiments import ExperimentConfig
from service.features import Featurizer
from service.gateway.cascade import cascade_prices
from service.gateway.config import UpstreamConfig
from service.gateway.service import Gateway
from service.gateway.upstreams import MissingKey, check_keys
from service.learner_pool import LearnerPool, learner_factories, pool_connections
from service.metrics import Metrics
from service.middleware import LimitsAndMetrics
from service.routes import (
    chat,
    experiments,
    feedback,
    health,
    models,
    policies,
    route,
    tenants,
)
from service.runtime import single_threaded_blas
from service.runtime_state import Runtime
from service.schemas import ErrorOut, ValidationErrorOut
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
_ROUTERS = (
    route.router,
    chat.router,
    feedback.router,
    models.router,
    policies.router,
    experiments.router,
    tenants.router,
    health.router,
)


class StartupError(RuntimeError):
    """The service cannot start as configured; the message says what to fix."""


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
        # served below, behind the keys unless `public_docs`
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    for r in _ROUTERS:
        app.include_router(r)
    _install_handlers(app, settings)
    _install_docs(app)
    return app


async def _start(settings: Settings, embedder: Embedder | None, store: Store | None) -> Runtime:
    upstreams: dict[str, UpstreamConfig] = {
        m.name: m.upstream for m in settings.models if m.upstream is not None
    }
    try:
        check_keys(upstreams, os.environ)
    except MissingKey as exc:
        raise StartupError(str(exc)) from None
    st = store or await open_store(
        settings.redis_url,
        settings.state_dir,
        prefix=settings.key_prefix,
        log_max=settings.decision_log_max,
        grace_s=settings.decision_grace_s,
        max_decisions=settings.decision_max_in_memory,
        max_connections=pool_connections(settings) if settings.run_learner else 64,
    )
    try:
        device = resolve_device(settings.embed_device, settings.embed_backend)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    emb = embedder or Embedder(
        cache_size=settings.embed_cache_size,
        cache_max_bytes=settings.embed_cache_max_bytes,
        backend=settings.embed_backend,
        onnx_dir=settings.embed_onnx_dir,
        device=device,
        batch_tokens=tokens_for(device),
    )
    log.info("embedding on %s (%s backend)", emb.device, emb.backend)
    if not emb.loaded:
        await asyncio.to_thread(emb.load)
    featurizer = Featurizer(emb, projection_dim=settings.projection_dim)
    batcher = FeatureBatcher(
        emb,
        featurizer,
        max_batch=settings.embed_batch_max or batch_for(emb.device),
        max_wait_ms=settings.embed_batch_wait_ms,
        max_queue=settings.embed_queue_max,
    )
    catalogue, catalogue_confirmed = await _catalogue(settings, st)
    if not catalogue:
        raise StartupError(
            "models: the catalogue is empty; configure at least one model "
            "(e.g. --config deploy/banditroute.toml)"
        )
    if not settings.auth_enabled:
        log.warning(
            "no API keys configured (client_keys, admin_key): every caller is admin, "
            "including model and experiment changes and the decision log"
        )
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
    registry.install(rt, await registry.load(settings, st))
    for own, (base, tenant) in registry.own_state_policies(settings).items():
        rt.policies[own] = await _restore(
            own,
            st,
            functools.partial(_tenant_prior, rt, base, tenant),
            featurizer.dim,
            features_json(featurizer),
        )
        rt.policies[own].sync_models(catalogue)
    rt.gateway = Gateway(settings.gateway, upstreams, rt, privacy=settings.privacy)
    if rt.gateway.judge is not None:
        rt.tasks.append(asyncio.create_task(rt.gateway.judge.run(rt.stop), name="judge"))
    batcher.start()
    if settings.run_learner:
        # a member of the learner pool: it learns its share of the policies (all of
        # them while it is alone, as on the in-process store)
        rt.pool = LearnerPool(
            st,
            learner_factories(
                settings,
                st,
                fresh=lambda n, c: functools.partial(_fresh, n, c, rt, featurizer.dim),
                models=rt.confirmed_catalogue,
                features=features_json(featurizer),
                tenants=lambda: rt.tenants,
            ),
            lease_ttl_ms=settings.lease_ttl_ms,
            settle=bool(settings.redis_url),
        )
        rt.tasks.append(asyncio.create_task(rt.pool.run(rt.stop), name="learners"))
    rt.tasks.append(asyncio.create_task(_refresh(rt), name="refresh"))
    return rt


def _fresh(name: str, cfg: PolicyConfig, rt: Runtime, dim: int) -> Policy:
    """A cold-start policy over the current catalogue (the learner's first state)."""
    return build_policy(name, cfg, rt.catalogue, dim)


def _tenant_cfg(settings: Settings, base: str, tenant: str) -> PolicyConfig:
    """The global policy's config with the tenant's λ."""
    cfg, lam = settings.policies[base], settings.tenants[tenant].cost_weight
    return cfg if lam is None else cfg.model_copy(update={"cost_weight": lam})


def _tenant_prior(rt: Runtime, base: str, tenant: str) -> Policy:
    """What a worker serves for a tenant's own policy before its learner published:
    the global policy it serves, discounted as the learner's cold start will be."""
    policy = load_policy(rt.policies[base].policy.to_bytes())
    policy.discount(rt.settings.tenants[tenant].prior_weight)
    policy.cost_weight = _tenant_cfg(rt.settings, base, tenant).cost_weight
    return policy


async def _catalogue(settings: Settings, st: Store) -> tuple[dict[str, ModelPrice], bool]:
    """The model catalogue, and whether it was read from the store (False: the
    configured one, as a stand-in while the store is down)."""
    configured = {m.name: m.price() for m in settings.models}
    # cascade arms are models of the catalogue too (the policy chooses among them)
    cascades = cascade_prices(settings.gateway.cascades, configured)
    configured.update(cascades)
    try:
        stored = await st.get_models()
        if not stored:
            # the config seeds an empty catalogue; after that the API owns it, so a
            # model deleted through the API does not come back with the next restart
            for price in configured.values():
                await st.put_model(price)
            stored = dict(configured)
        for name, price in cascades.items():
            if stored.get(name) != price:  # added or changed in the config since
                await st.put_model(price)
                stored[name] = price
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


async def _restore(name: str, st: Store, fresh: Any, dim: int, features: str = "") -> ServingPolicy:
    try:
        snap = await st.load_snapshot(name)
    except StoreUnavailable:
        snap = None
    if snap is None:
        return ServingPolicy(name, fresh(), 0, features)
    check_features(name, snap, features)
    policy = await asyncio.to_thread(load_policy, snap.state)
    check_dim(name, policy, dim)
    return ServingPolicy(name, policy, snap.version, features, snap.pacers)


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
                await registry.refresh(rt)
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


# how long the shutdown waits for the background tasks (the learner pool's drain and
# last publish above all) before it cancels them: a policy whose last snapshot did
# not make it loses nothing on Redis (its stream keeps what the snapshot lacks)
SHUTDOWN_WAIT_S = 10.0


async def _shutdown(rt: Runtime, *, close_store: bool) -> None:
    # uvicorn has stopped accepting and drained the requests in flight by now; the
    # learner pool leaves (the others take its policies at once) and every learner of
    # it stops taking leases, drains, publishes and releases, all together
    rt.stop.set()
    if rt.tasks:
        _, pending = await asyncio.wait(rt.tasks, timeout=SHUTDOWN_WAIT_S)
        for t in pending:
            log.warning(
                "shutdown: %s still running after %.0f s; cancelled", t.get_name(), SHUTDOWN_WAIT_S
            )
            t.cancel()
    await rt.batcher.stop()
    if rt.gateway is not None:
        await rt.gateway.close()
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
            # the body is read before the auth dependencies run: a caller without a
            # valid key learns that first, as with any other body
            refused = _auth_refusal(request)
            if refused is not None:
                return refused
            return _error(request, status.HTTP_400_BAD_REQUEST, {"detail": "body: malformed JSON"})
        messages = [f"{_field(tuple(e.get('loc', ())))}: {e.get('msg')}" for e in errors]
        return _error(
            request,
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            {
                "detail": "; ".join(messages),
                "errors": [
                    {"field": _field(tuple(e.get("loc", ()))), "message": e.get("msg")}
                    for e in errors
                ],
            },
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = exc.headers
        if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
            # Starlette names the methods of the first route matching the path only
            headers = {**(headers or {}), "Allow": ", ".join(_allowed(request.scope))}
        return _error(request, exc.status_code, {"detail": exc.detail}, headers=headers)

    @app.exception_handler(StoreUnavailable)
    async def store_down(request: Request, exc: StoreUnavailable) -> JSONResponse:
        return _error(
            request,
            status.HTTP_503_SERVICE_UNAVAILABLE,
            {"detail": "the store is unreachable; retry later"},
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        return _error(
            request,
            status.HTTP_503_SERVICE_UNAVAILABLE,
            {"detail": str(exc)},
            headers={"Retry-After": str(exc.retry_after_s)},
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return ErrorResponse(
            status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
            content={"detail": "internal error; it has been logged"},
        )


class ErrorResponse(JSONResponse):
    """An error body, ASCII-escaped: a detail that echoes client input (a name, a
    JSON key) can never fail to encode, whatever characters it holds."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


_OPENAI_PATHS = ("/v1/chat/completions",)


def _error(request: Request, status_code: int, content: dict[str, Any], **kw: Any) -> ErrorResponse:
    """An error answer; on the OpenAI-compatible paths also in OpenAI's shape
    (`error.message`), which is what OpenAI clients show."""
    if request.url.path in _OPENAI_PATHS:
        kind = "invalid_request_error" if status_code < 500 else "server_error"
        content = {
            **content,
            "error": {"message": content.get("detail"), "type": kind, "code": status_code},
        }
    return ErrorResponse(status_code=status_code, content=content, **kw)


def _allowed(scope: Any) -> list[str]:
    """Every method some route serves at this request's path."""
    methods: set[str] = set()
    for router in _ROUTERS:
        for r in router.routes:
            if isinstance(r, APIRoute) and r.path_regex.match(scope.get("path", "")):
                methods |= r.methods or set()
    return sorted(methods)


def _needs_admin(route: Any) -> bool:
    dependant = getattr(route, "dependant", None)
    return dependant is not None and any(d.call is require_admin for d in dependant.dependencies)


def _auth_refusal(request: Request) -> JSONResponse | None:
    """The 401 / 403 the auth dependencies of the matched route would give, or None."""
    rt: Runtime | None = getattr(request.app.state, "runtime", None)
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if rt is None or dependant is None or not dependant.dependencies:
        return None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    creds = (
        HTTPAuthorizationCredentials(scheme=scheme, credentials=token.strip())
        if scheme and token.strip()
        else None
    )
    try:
        if _role(rt, creds) != "admin" and _needs_admin(route):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "this endpoint needs the admin key")
    except HTTPException as exc:
        return ErrorResponse(
            status_code=exc.status_code, content={"detail": exc.detail}, headers=exc.headers
        )
    return None


# --- the OpenAPI document ------------------------------------------------------------

_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}}
_MEANING = {
    400: "malformed JSON",
    401: "no API key, or a wrong one",
    403: "a client key on an admin endpoint",
    404: "no such resource",
    409: "a conflict with the current state",
    413: "the body or the query exceeds its limit",
    503: "the store is unreachable or the service is overloaded; see Retry-After",
}
_ROLES = {"require_client", "require_admin", "require_metrics", "require_docs"}
# answers of other modules' routes that no rule below finds
_ALSO = {("/v1/experiments/{name}", "delete"): {409}}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, corrected to what the server sends: our 422 body, and the
    400/401/403/404/413/503 answers each operation can give."""
    if app.openapi_schema:
        return app.openapi_schema
    spec = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    routes = {
        (r.path, m.lower()): r
        for router in _ROUTERS
        for r in router.routes
        if isinstance(r, APIRoute)
        for m in r.methods or ()
    }
    for path, ops in spec.get("paths", {}).items():
        for method, op in ops.items():
            route = routes.get((path, method))
            calls = {
                getattr(d.call, "__name__", "")
                for d in getattr(getattr(route, "dependant", None), "dependencies", ())
            }
            responses: dict[str, Any] = op.setdefault("responses", {})
            has_body = "requestBody" in op
            codes = {400, 413} if has_body else set()
            if any(p.get("in") == "path" for p in op.get("parameters", ())):
                codes.add(404)
            if calls & _ROLES:
                codes.add(401)
            if "require_admin" in calls:
                codes.add(403)
            if path != "/healthz":
                codes.add(503)
            codes |= _ALSO.get((path, method), set())
            for c in codes:
                responses.setdefault(str(c), {"description": _MEANING[c]})
            if has_body or op.get("parameters"):
                responses["422"] = {
                    "description": "a field failed validation (`detail` names it)",
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/ValidationErrorOut"}
                        }
                    },
                }
            else:
                responses.pop("422", None)
            for code, resp in responses.items():
                if code[0] in "45" and not resp.get("content"):
                    resp.update(_ERROR)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for model in (ErrorOut, ValidationErrorOut):
        doc = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(doc.pop("$defs", {}))
        schemas[model.__name__] = doc
    app.openapi_schema = spec
    return spec


def _install_docs(app: FastAPI) -> None:
    app.openapi = functools.partial(_openapi, app)  # type: ignore[method-assign]

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_json(_auth: DocsAuth) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(_auth: DocsAuth) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} API")
