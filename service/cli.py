"""The `banditroute` command: service commands live here; the simulator adds its own
(see `simulator.cli`, the console entry point) so that service never imports simulator."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

app = typer.Typer(
    name="banditroute",
    help="Online LLM routing with contextual bandits.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Online LLM routing with contextual bandits: route, learn from feedback, measure."""


ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", exists=True, dir_okay=False, help="TOML config file"),
]


def _settings(config: Path | None) -> Any:
    """The settings, or a clean CLI error naming what is wrong in the config."""
    import yaml
    from pydantic import ValidationError

    from service.settings import load_settings

    try:
        return load_settings(config)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise typer.BadParameter(problems, param_hint="--config") from None
    except (OSError, ValueError, yaml.YAMLError) as exc:  # unreadable, bad TOML or YAML
        raise typer.BadParameter(f"{config}: {exc}", param_hint="--config") from None


def _fail(command: str, message: str, code: int = 2) -> NoReturn:
    """One line on stderr naming what to fix, and a non-zero exit; no traceback."""
    typer.echo(f"banditroute {command}: error: {message}", err=True)
    raise typer.Exit(code)


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any interface


def _port_free(host: str, port: int) -> str | None:
    """None if (host, port) can be bound now, else why not (as uvicorn would bind)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return f"cannot resolve {host!r}: {exc}"
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


async def _check_store(settings: Any) -> str | None:
    """Why the service could not start on this store and catalogue, or None."""
    from service.store import open_store
    from service.store.base import StoreUnavailable

    try:
        store = await open_store(settings.redis_url, settings.state_dir, prefix=settings.key_prefix)
    except (OSError, ValueError) as exc:
        where = "redis_url" if settings.redis_url else f"state_dir {settings.state_dir}"
        return f"{where}: {exc}"
    try:
        if settings.redis_url and not await store.ping():
            return (
                f"redis_url: no Redis answers at {settings.redis_url}; start it, or fix "
                "redis_url (BANDITROUTE_REDIS_URL), or unset it for the in-process store"
            )
        if not settings.models:
            try:
                stored = await store.get_models()
            except StoreUnavailable:
                stored = {}
            if not stored:
                return (
                    "models: the catalogue is empty; configure at least one model, "
                    "e.g. --config deploy/banditroute.toml"
                )
    finally:
        await store.close()
    return None


@app.command()
def serve(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", dir_okay=False, help="TOML config file")
    ] = None,
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    keep_alive: Annotated[
        int,
        typer.Option(
            min=1,
            help="seconds an idle connection is kept open; set it above the idle timeout "
            "of clients and load balancers, or a request may race the server's close",
        ),
    ] = 75,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="serve a non-loopback --host without API keys (every caller is admin)",
        ),
    ] = False,
) -> None:
    """Run the HTTP service (uvicorn). Without a Redis URL it runs on the in-process
    store, with its learner in the same process (one worker only). A start-up problem
    is one line on stderr naming what to fix, and exit status 2 (1: Redis down)."""
    import asyncio

    import uvicorn

    from service.asgi import CONFIG_ENV

    try:
        settings = _settings(config)
    except typer.BadParameter as exc:
        _fail("serve", f"--config: {exc.message}")
    from service.gateway.upstreams import MissingKey, check_keys

    try:
        check_keys({m.name: m.upstream for m in settings.models if m.upstream}, os.environ)
    except MissingKey as exc:
        _fail("serve", str(exc))
    if workers > 1 and not settings.redis_url:
        _fail(
            "serve",
            "--workers: several workers need a shared store: set redis_url "
            "(or BANDITROUTE_REDIS_URL)",
        )
    if not settings.auth_enabled and not _loopback(host):
        if not insecure:
            _fail(
                "serve",
                f"--host {host}: no API keys are configured (client_keys, admin_key), so "
                "every caller would be admin; set keys, bind 127.0.0.1, or pass --insecure",
            )
        typer.echo(
            f"banditroute serve: warning: serving {host} without API keys (--insecure): "
            "every caller is admin",
            err=True,
        )
    busy = _port_free(host, port)
    if busy is not None:
        _fail("serve", f"--port {port}: cannot bind {host}:{port} ({busy}); choose another port")
    logging.disable(logging.WARNING)  # the store's own retry lines: the one line is ours
    try:
        problem = asyncio.run(_check_store(settings))
    finally:
        logging.disable(logging.NOTSET)
    if problem is not None:
        _fail("serve", problem, code=1 if problem.startswith("redis_url") else 2)
    if config is not None:
        os.environ[CONFIG_ENV] = str(config.resolve())
    uvicorn.run(
        "service.asgi:app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        timeout_keep_alive=keep_alive,
    )


LogJsonOpt = Annotated[
    bool,
    typer.Option("--log-json", help="log one JSON object a line (as log_format = \"json\")"),
]


@app.command()
def learner(config: ConfigOpt = None, log_json: LogJsonOpt = False) -> None:
    """Run a standalone learner process, one member of the learner pool: it learns its
    share of the policies (the configured ones and tenants' own states), hands a share
    over when another learner joins and takes over a dead one's. Running several, or
    beside the service, is safe: each policy's lease admits one learner at a time.
    SIGTERM stops it gracefully: it leaves the pool, and each of its learners drains
    the stream, publishes a last snapshot and releases its lease."""
    import asyncio
    import signal

    from service import logs
    from service.runtime import single_threaded_blas

    settings = _settings(config)
    if not settings.redis_url:
        raise typer.BadParameter(
            "a standalone learner needs the shared store: set redis_url", param_hint="--config"
        )
    single_threaded_blas()
    logs.configure("json" if log_json else settings.log_format)
    asyncio.run(_run_learners(settings, signal))


async def _run_learners(settings: Any, signal: Any) -> None:
    import asyncio

    from policies import Policy
    from service.budgets import registry
    from service.budgets.config import TenantConfig
    from service.embedder import Embedder
    from service.features import Featurizer
    from service.learner_pool import LearnerPool, learner_factories
    from service.serving import build_policy, features_json
    from service.settings import PolicyConfig
    from service.store import open_store
    from service.store.base import ModelPrice, StoreUnavailable

    # the same store options as the service: its writes (default rewards) trim the
    # decision log at decision_log_max, and its sweep keeps the same grace
    store = await open_store(
        settings.redis_url,
        settings.state_dir,
        prefix=settings.key_prefix,
        log_max=settings.decision_log_max,
        grace_s=settings.decision_grace_s,
    )
    # the workers' backend: the features the learner publishes must be theirs
    embedder = Embedder(backend=settings.embed_backend, onnx_dir=settings.embed_onnx_dir)
    featurizer = Featurizer(embedder, projection_dim=settings.projection_dim)
    dim = featurizer.dim
    configured = {m.name: m.price() for m in settings.models}
    # None until the store has answered: a learner must not drop models on a guess
    catalogue: dict[str, ModelPrice] | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    # the tenants' pacer targets, as the store has them (the admin API changes them)
    tenants: dict[str, TenantConfig] = await registry.load(settings, store)

    async def refresh() -> None:
        nonlocal catalogue, tenants
        while not stop.is_set():
            try:
                found = await store.get_models()
                catalogue = found if found else catalogue or configured
                tenants = registry.parse(await store.get_tenants(), tenants)
            except StoreUnavailable:
                pass  # the learners report the outage
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                pass

    def fresh(n: str, c: PolicyConfig) -> Callable[[], Policy]:
        # reads `catalogue` when called: the newest one the refresher has seen
        return lambda: build_policy(n, c, catalogue or configured, dim)

    pool = LearnerPool(
        store,
        learner_factories(
            settings,
            store,
            fresh=fresh,
            models=lambda: catalogue,
            features=features_json(featurizer),
            tenants=lambda: tenants,
        ),
        lease_ttl_ms=settings.lease_ttl_ms,
    )
    await asyncio.gather(refresh(), pool.run(stop))
    await store.close()


@app.command()
def models(config: ConfigOpt = None) -> None:
    """List the model catalogue with prices (from the store, else the config)."""
    import asyncio

    from rich.console import Console
    from rich.table import Table

    from service.store import open_store
    from service.store.base import ModelPrice, StoreUnavailable

    settings = _settings(config)

    async def fetch() -> dict[str, ModelPrice]:
        found: dict[str, ModelPrice] = {}
        if settings.redis_url:
            store = await open_store(settings.redis_url, None, prefix=settings.key_prefix)
            try:
                found = await store.get_models()
            except StoreUnavailable:
                pass
            await store.close()
        return found or {
            m.name: m.price() for m in settings.models
        }

    table = Table(title="model catalogue (USD per 1M tokens)")
    for col in ("model", "input", "output"):
        table.add_column(col, justify="right")
    for m in asyncio.run(fetch()).values():
        table.add_row(m.name, f"{m.input_per_m:g}", f"{m.output_per_m:g}")
    Console().print(table)
