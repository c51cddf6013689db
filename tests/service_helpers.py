"""Shared set-up for tests of the real FastAPI app (real embedder, real stores)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from service.settings import ModelConfig, PolicyConfig, Settings

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
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
