"""Shared set-up for tests of the real FastAPI app (real embedder, real stores)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, cast

import pytest
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
# the 3-master cluster `deploy/redis-cluster.sh start` makes (CI starts it); any one
# node's address is enough
CLUSTER_URL = "redis+cluster://127.0.0.1:7101"
CLUSTER_START = "deploy/redis-cluster.sh start /tmp/banditroute-cluster"

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


def sync_client(url: str, **kw: Any) -> redis.Redis:
    """A blocking client for a store URL: a cluster client for redis+cluster://
    (typed as the single-node one: the tests call commands both answer)."""
    scheme, sep, rest = url.partition("://")
    if scheme.endswith("+cluster"):
        plain = scheme.removesuffix("+cluster") + sep + rest
        return cast(redis.Redis, redis.RedisCluster.from_url(plain, **kw))
    return redis.Redis.from_url(url, **kw)


def redis_up(url: str = REDIS_URL) -> bool:
    try:
        with sync_client(url, socket_timeout=1) as r:
            return bool(r.ping())
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException):
        return False


def cluster_up(url: str = CLUSTER_URL) -> bool:
    """Whether a Redis Cluster answers at `url` with every slot served."""
    try:
        with sync_client(url, socket_timeout=1) as r:
            return bool(r.cluster_info().get("cluster_state") == "ok")  # type: ignore[attr-defined]
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException):
        return False


def require_redis(kind: str) -> str:
    """The URL of a live Redis of `kind` ("redis" or "cluster"); fails the test when
    none answers, since CI starts both."""
    if kind == "cluster":
        if not cluster_up():
            pytest.fail(f"no Redis Cluster answers at {CLUSTER_URL}; run {CLUSTER_START}")
        return CLUSTER_URL
    if not redis_up():
        pytest.fail(f"no Redis answers at {REDIS_URL}; CI starts one")
    return REDIS_URL


def scan_keys(r: redis.Redis, match: str) -> list[bytes]:
    """Every key matching `match`, on one node or on every primary of a cluster."""
    if not isinstance(r, redis.RedisCluster):
        return list(r.scan_iter(match=match, count=1000))
    # node by node through plain clients: the cluster client's scan_iter over its
    # primaries leaves a connection open (a ResourceWarning, an error under pytest)
    keys: list[bytes] = []
    for node in r.get_primaries():
        with redis.Redis(host=node.host, port=node.port) as one:
            keys += one.scan_iter(match=match, count=1000)
    return keys


def drop_prefix(prefix: str, url: str = REDIS_URL) -> None:
    """Delete every key a test run wrote under `prefix`."""
    with sync_client(url) as r:
        keys = scan_keys(r, f"{prefix}:*")
        if isinstance(r, redis.RedisCluster):
            for key in keys:  # each in its own slot
                r.delete(key)
            return
        for i in range(0, len(keys), 500):
            r.delete(*keys[i : i + 500])
