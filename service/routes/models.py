"""The model catalogue: list, register (with prices), delete.

Each change checks and acts under the runtime's catalogue lock, so two concurrent
requests never interleave across the store's await (two deletes of one model, or of
the last two); the last model can never be deleted."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response, status

from service.deps import AdminAuth, ClientAuth, RuntimeDep
from service.gateway.request import router_names
from service.schemas import ErrorOut, ModelIn, ModelList, ModelListEntry, ModelOut
from service.store.base import LastModel, ModelPrice, StoreUnavailable

router = APIRouter(prefix="/v1/models", tags=["models"])


_PRIOR_FIELDS = (
    "expected_input_tokens",
    "expected_output_tokens",
    "prior_quality",
    "prior_strength",
)


def _out(m: ModelPrice) -> ModelOut:
    meta = {k: m.meta[k] for k in _PRIOR_FIELDS if m.meta.get(k) is not None}
    return ModelOut(name=m.name, input_per_m=m.input_per_m, output_per_m=m.output_per_m, **meta)


def _unavailable() -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "the store is unreachable; retry later",
        headers={"Retry-After": "1"},
    )


@router.get("", response_model=ModelList, response_model_exclude_none=True)
async def list_models(rt: RuntimeDep, _auth: ClientAuth) -> ModelList:
    """OpenAI's model list (so an OpenAI client can list them): the routers first
    (`auto`, `banditroute/<policy or experiment>`, `kind` "router"), then the
    catalogue's models with their prices (`kind` "model"; `upstream` says whether the
    gateway can call it)."""
    callable_ = set() if rt.gateway is None else set(rt.gateway.pool.models)
    data = [ModelListEntry(id=name, kind="router") for name in router_names(rt)]
    for m in rt.catalogue.values():
        out = _out(m)
        data.append(
            ModelListEntry(
                id=m.name, kind="model", upstream=m.name in callable_, **out.model_dump()
            )
        )
    return ModelList(data=data)


@router.post("", response_model=ModelOut, status_code=status.HTTP_201_CREATED)
async def register_model(body: ModelIn, rt: RuntimeDep, _auth: AdminAuth) -> ModelOut:
    """Register (or re-price) a model; it joins every policy with a cold-start prior."""
    meta = {k: getattr(body, k) for k in _PRIOR_FIELDS}
    price = ModelPrice(body.name, body.input_per_m, body.output_per_m, meta)
    async with rt.catalogue_lock:
        try:
            await rt.store.put_model(price)
        except StoreUnavailable as exc:
            raise _unavailable() from exc
        rt.catalogue[price.name] = price
        for serving in rt.policies.values():
            serving.sync_models(rt.catalogue)
    return _out(price)


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        404: {"model": ErrorOut, "description": "no model of that name"},
        409: {"model": ErrorOut, "description": "the last model cannot be deleted"},
    },
)
async def delete_model(name: str, rt: RuntimeDep, _auth: AdminAuth) -> Response:
    """Delete a model from the catalogue and every policy; the last one stays."""
    async with rt.catalogue_lock:
        if name not in rt.catalogue:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"name: unknown model {name!r}")
        if len(rt.catalogue) <= 1:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"name: {name!r} is the last model; register another before deleting it",
            )
        try:
            await rt.store.delete_model(name)
        except StoreUnavailable as exc:
            raise _unavailable() from exc
        except LastModel:  # another worker deleted the others meanwhile
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"name: {name!r} is the last model; register another before deleting it",
            ) from None
        rt.catalogue.pop(name, None)  # the refresher may have dropped it meanwhile
        for serving in rt.policies.values():
            serving.sync_models(rt.catalogue)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
