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
    log_json: Annotated[
        bool,
        typer.Option("--log-json", help='log one JSON object a line (as log_format = "json")'),
    ] = False,
    graceful_timeout: Annotated[
        int,
        typer.Option(
            min=1,
            help="seconds SIGTERM waits for requests in flight before closing them; the "
            "learners then publish their last snapshots and release their leases",
        ),
    ] = 30,
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
    from service import logs

    fmt = "json" if log_json else settings.log_format
    extra: dict[str, Any] = {}
    if fmt == "json":
        extra["log_config"] = logs.uvicorn_config("json", log_level)
    uvicorn.run(
        "service.asgi:app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        timeout_keep_alive=keep_alive,
        timeout_graceful_shutdown=graceful_timeout,
        **extra,
    )


LogJsonOpt = Annotated[
    bool,
    typer.Option("--log-json", help="log one JSON object a line (as log_format = \"json\")"),
]


@app.command()
def learner(
    config: ConfigOpt = None,
    log_json: LogJsonOpt = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="serve Prometheus metrics on this port (any path)"),
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="the metrics server's address")] = "0.0.0.0",
) -> None:
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
    asyncio.run(_run_learners(settings, signal, metrics_port, metrics_host))


async def _run_learners(
    settings: Any, signal: Any, metrics_port: int | None = None, metrics_host: str = "0.0.0.0"
) -> None:
    import asyncio

    from policies import Policy
    from service.budgets import registry
    from service.budgets.config import TenantConfig
    from service.embedder import Embedder
    from service.features import Featurizer
    from service.learner_pool import LearnerPool, learner_factories, pool_connections
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
        max_connections=pool_connections(settings),
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
    if metrics_port is not None:
        from service.learner_metrics import serve_metrics

        serve_metrics(pool, metrics_port, metrics_host)
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


admin_app = typer.Typer(
    name="admin",
    help="Operate on a deployment's store: snapshot export and import, replay.",
    no_args_is_help=True,
)
app.add_typer(admin_app, name="admin")

PolicyOpt = Annotated[str, typer.Option("--policy", "-p", help="the policy's name")]
WaitOpt = Annotated[
    float,
    typer.Option(
        "--wait", min=0, help="seconds to wait for the policy's lease while a learner holds it"
    ),
]


async def _admin_store(settings: Any) -> Any:
    from service.store import open_store

    return await open_store(
        settings.redis_url,
        settings.state_dir,
        prefix=settings.key_prefix,
        log_max=settings.decision_log_max,
        grace_s=settings.decision_grace_s,
    )


def _admin(command: str, work: Callable[[Any], Any], config: Path | None) -> Any:
    """Run `work(store)` on the configured store; a known failure is one line and
    exit status 1."""
    import asyncio

    from service.admin import AdminError
    from service.store.base import StoreUnavailable

    settings = _settings(config)

    async def main() -> Any:
        store = await _admin_store(settings)
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except (AdminError, StoreUnavailable, OSError, ValueError) as exc:
        _fail(f"admin {command}", str(exc), code=1)


@admin_app.command("snapshot-export")
def snapshot_export(
    policy: PolicyOpt,
    out: Annotated[Path, typer.Option("--out", "-o", dir_okay=False, help="file to write")],
    config: ConfigOpt = None,
) -> None:
    """Write a policy's published snapshot (state bytes and metadata) to a file: a
    backup, or a move to another deployment (snapshot-import)."""
    from service.admin import export_snapshot

    snap = _admin("snapshot-export", lambda st: export_snapshot(st, policy, out), config)
    typer.echo(
        f"policy {policy}: v{snap.version}, {snap.applied} events applied, "
        f"{len(snap.state)} state bytes -> {out}"
    )


@admin_app.command("snapshot-import")
def snapshot_import(
    policy: PolicyOpt,
    src: Annotated[
        Path, typer.Option("--in", "-i", exists=True, dir_okay=False, help="file to read")
    ],
    config: ConfigOpt = None,
    wait: WaitOpt = 0.0,
) -> None:
    """Publish a snapshot file as a policy's next version, under its lease (a running
    learner of the policy must stop first, or be waited for with --wait)."""
    from service.admin import import_snapshot

    settings = _settings(config)
    snap = _admin(
        "snapshot-import",
        lambda st: import_snapshot(
            st, policy, src, lease_ttl_ms=settings.lease_ttl_ms, wait_s=wait
        ),
        config,
    )
    typer.echo(f"policy {policy}: published v{snap.version} from {src} at {snap.last_id}")


@admin_app.command("replay")
def replay_log(
    policy: PolicyOpt,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", dir_okay=False, help="write the rebuilt state to this file"),
    ] = None,
    publish: Annotated[
        bool, typer.Option("--publish", help="publish it as the policy's next version")
    ] = False,
    config: ConfigOpt = None,
    wait: WaitOpt = 0.0,
) -> None:
    """Rebuild a policy from its decision log (every answered decision the log keeps,
    oldest first, through a fresh policy of its configuration), into a snapshot file
    and/or published under the policy's lease."""
    if out is None and not publish:
        _fail("admin replay", "give --out FILE, --publish, or both")
    settings = _settings(config)

    async def work(store: Any) -> Any:
        from service.admin import encode_snapshot, publish_as_admin, replay

        fresh, catalogue, features = await _replay_fresh(settings, store, policy)
        res = await replay(store, policy, fresh, catalogue, features=features)
        if out is not None:
            out.write_bytes(encode_snapshot(policy, res.snapshot, source="replay"))
        if publish:
            res.snapshot = await publish_as_admin(
                store, policy, res.snapshot, lease_ttl_ms=settings.lease_ttl_ms, wait_s=wait
            )
        return res

    res = _admin("replay", work, config)
    where = [str(out)] if out is not None else []
    if publish:
        where.append(f"published v{res.snapshot.version}")
    typer.echo(
        f"policy {policy}: {res.replayed} events replayed, {res.skipped} skipped, "
        f"position {res.snapshot.last_id} -> {', '.join(where)}"
    )


async def _replay_fresh(settings: Any, store: Any, policy: str) -> tuple[Any, Any, str]:
    """What a replay of `policy` starts from: its learner's cold start (a tenant's own
    state: its policy's current snapshot, discounted), the catalogue, the features."""
    from policies import load_policy
    from service.admin import AdminError
    from service.budgets import registry
    from service.embedder import Embedder
    from service.features import Featurizer
    from service.serving import build_policy, features_json

    featurizer = Featurizer(
        Embedder(backend=settings.embed_backend, onnx_dir=settings.embed_onnx_dir),
        projection_dim=settings.projection_dim,
    )
    catalogue = await store.get_models() or {m.name: m.price() for m in settings.models}
    own = registry.own_state_policies(settings)
    if policy in settings.policies:
        cfg = settings.policies[policy]
        return (
            lambda: build_policy(policy, cfg, catalogue, featurizer.dim),
            catalogue,
            features_json(featurizer),
        )
    if policy not in own:
        raise AdminError(f"policy {policy!r} is not configured (nor a tenant's own state)")
    base, tenant = own[policy]
    t = settings.tenants[tenant]
    cfg = settings.policies[base]
    if t.cost_weight is not None:
        cfg = cfg.model_copy(update={"cost_weight": t.cost_weight})
    prior = await store.load_snapshot(base)

    def fresh() -> Any:
        built = build_policy(base, cfg, catalogue, featurizer.dim)
        if prior is None:
            return built
        seeded = load_policy(prior.state)
        seeded.discount(t.prior_weight)
        seeded.cost_weight = built.cost_weight
        return seeded

    return fresh, catalogue, features_json(featurizer)
