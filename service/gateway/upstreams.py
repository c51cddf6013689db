"""One pooled async HTTP client per upstream, built in the app's lifespan.

A key is read from its environment variable once, at start-up; a model whose
variable is unset is a start-up error naming the model (never a first request that
fails). Keys live only in the clients' default headers, never in a log line."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from service.gateway.config import UpstreamConfig


class MissingKey(ValueError):
    """An upstream's API key variable is not set."""


@dataclass
class Upstream:
    """A model's upstream: its client and the name it knows the model by."""

    model: str  # the catalogue name
    upstream_model: str
    client: httpx.AsyncClient

    def request(self, body: dict[str, Any], *, stream: bool) -> httpx.Request:
        headers = {"accept": "text/event-stream"} if stream else None
        return self.client.build_request("POST", "chat/completions", json=body, headers=headers)


def check_keys(upstreams: Mapping[str, UpstreamConfig], environ: Mapping[str, str]) -> None:
    """Raise MissingKey naming the first model whose key variable is unset or empty."""
    for model, cfg in upstreams.items():
        if cfg.api_key_env is not None and not environ.get(cfg.api_key_env):
            raise MissingKey(
                f"models.{model}.upstream.api_key_env: the environment variable "
                f"{cfg.api_key_env} (the API key of model {model!r}) is not set"
            )


class UpstreamPool:
    """The clients of every configured upstream."""

    def __init__(
        self,
        upstreams: Mapping[str, UpstreamConfig],
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        check_keys(upstreams, env)
        self._by_model: dict[str, Upstream] = {}
        for model, cfg in upstreams.items():
            headers = {}
            if cfg.api_key_env is not None:
                headers["authorization"] = f"Bearer {env[cfg.api_key_env]}"
            client = httpx.AsyncClient(
                base_url=cfg.base_url.rstrip("/") + "/",
                headers=headers,
                timeout=httpx.Timeout(
                    cfg.read_timeout_s, connect=cfg.connect_timeout_s, pool=cfg.connect_timeout_s
                ),
                limits=httpx.Limits(
                    max_connections=cfg.max_connections,
                    max_keepalive_connections=cfg.max_keepalive,
                ),
            )
            self._by_model[model] = Upstream(model, cfg.model or model, client)

    def get(self, model: str) -> Upstream | None:
        return self._by_model.get(model)

    @property
    def models(self) -> list[str]:
        return list(self._by_model)

    async def close(self) -> None:
        for u in self._by_model.values():
            await u.client.aclose()
