"""The baseline for `benchmarks.load`: a FastAPI app whose POST /v1/route returns a
constant JSON body without reading the request, so its throughput is what uvicorn and
FastAPI cost on their own on this machine.

Run: uvicorn benchmarks.trivial_app:app
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

app = FastAPI(title="trivial")

_ANSWER = {"event_id": "default.0", "model": "gemma-2-9b-it", "propensity": 1.0}


@app.post("/v1/route")
async def route() -> dict[str, Any]:
    return _ANSWER


@app.get("/readyz")
async def readyz() -> dict[str, str]:
    return {"status": "ready"}
