"""Shared set-up for tests of the real FastAPI app (real embedder, real stores)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import redis

from service.settings import ModelConfig, PolicyConfig, Settings

# the routing data shipped in the repository (data/README.md)
DATA_DIR = Path(__file__).resolve().parents[1] / "data"
SHARED = DATA_DIR  # the name the tests used while the data lived beside the repository


def data_file(name: str) -> Path:
    """A shipped data file; a missing one is an error, never a reason to skip."""
    path = DATA_DIR / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: it ships with the repository (git checkout -- data/)"
        )
    return path
REDIS_URL = "redis://127.0.0.1:6379/0"

MODELS = [
    ModelConfig(name="small", input_per_m=0.1, output_per_m=0.1),
    ModelConfig(name="medium", input_per_m=0.5, output_per_m=0.5),
    ModelConfig(name="large", input_per_m=2.0, output_per_m=2.0),
]


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "state_dir": tmp_path / "state",
        "models": MODELS,
        "policies": {"default": PolicyConfig(kind="linucb", params={"epsilon": 0.05})},
        "fallback_model": "small",
        "projection_dim": 32,
        "snapshot_every_n": 20,
        "snapshot_every_ms": 100,
        "reload_poll_ms": 50,
        "lease_ttl_ms": 1000,
        "key_prefix": f"brtest-{uuid.uuid4().hex[:8]}",
    }
    base.update(overrides)
    return Settings(**base)


def redis_up(url: str = REDIS_URL) -> bool:
    try:
        with redis.Redis.from_url(url, socket_timeout=1) as r:
            return bool(r.ping())
    except redis.exceptions.RedisError:
        return False


def drop_prefix(prefix: str, url: str = REDIS_URL) -> None:
    """Delete every key a test run wrote under `prefix`."""
    with redis.Redis.from_url(url) as r:
        keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i : i + 500])
