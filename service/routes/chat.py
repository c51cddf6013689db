"""The OpenAI-compatible front door: POST /v1/chat/completions (see service/gateway/)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import Response

from service.deps import ClientAuth, RuntimeDep
from service.gateway.proxy import chat
from service.gateway.request import ChatCompletionRequest
from service.schemas import ErrorOut

router = APIRouter(prefix="/v1", tags=["gateway"])


@router.post(
    "/chat/completions",
    responses={
        200: {"description": "the upstream's answer (JSON, or an SSE stream)"},
        403: {"model": ErrorOut, "description": "a tenant this key may not name"},
        404: {"model": ErrorOut, "description": "an unknown model, router, experiment or tenant"},
        429: {"description": "every candidate was rate-limited, or none fits the tenant's cap"},
        502: {"description": "every candidate failed (OpenAI-style error)"},
        504: {"description": "every candidate timed out (OpenAI-style error)"},
    },
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, rt: RuntimeDep, _auth: ClientAuth
) -> Response:
    """Route the conversation (`model`: `auto`, `banditroute/<policy or experiment>`,
    or a catalogue model to call directly), call the chosen model's upstream, and
    return its answer with `model` set to the catalogue model and the decision in
    the `x-banditroute-*` headers (a stream's cost in its final chunk)."""
    gw = rt.gateway
    if gw is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the gateway is not running")
    return await chat(rt, gw, body, request, _auth)
