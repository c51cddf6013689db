"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import RuntimeDep
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
    detail = {"store": store_ok, "embedding_model": model_ok}
    if store_ok and model_ok:
        return Health(status="ready", detail=detail)
    return JSONResponse(
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        content=Health(status="degraded", detail=detail).model_dump(),
    )


@router.get("/metrics")
async def metrics(rt: RuntimeDep) -> Response:
    for name, serving in rt.policies.items():
        rt.metrics.policy_version.labels(name).set(serving.version)
        with contextlib.suppress(StoreUnavailable):  # the gauges keep their last value
            await progress(rt, name)
    return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)
