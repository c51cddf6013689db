"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import MetricsAuth, RuntimeDep
from service.routes.policies import progress
from service.schemas import Health
from service.store.base import StoreUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(rt: RuntimeDep) -> Health | JSONResponse:
    store_ok = await rt.store.ping()
    model_ok = rt.batcher.embedder.loaded
    # a route needs at least one model to choose from
    catalogue_ok = bool(rt.catalogue)
    detail = {"store": store_ok, "embedding_model": model_ok, "catalogue": catalogue_ok}
    if store_ok and model_ok and catalogue_ok:
        return Health(status="ready", detail=detail)
    return JSONResponse(
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        content=Health(status="degraded", detail=detail).model_dump(),
    )


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(rt: RuntimeDep, _auth: MetricsAuth) -> Response:
    """Prometheus metrics; with API keys set, a key is needed unless `public_metrics`."""
    for name, serving in rt.policies.items():
        rt.metrics.policy_version.labels(name).set(serving.version)
        with contextlib.suppress(StoreUnavailable):  # the gauges keep their last value
            await progress(rt, name)
    return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)
