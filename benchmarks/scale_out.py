"""Scale-out load test (issue 14): 2 API workers + a standalone learner, first on a single
Redis, then on a Redis Cluster: route+feedback throughput, and the learner's lag under it.

Per backend (a fresh key prefix each): two `banditroute serve` processes (one uvicorn
worker each, `run_learner = false`) and one `banditroute learner`, all on one config: a
3-model catalogue and one policy, `default`, the hybrid learner at the sample config's
params (alpha 0.15, epsilon 0.02, cold_cap 0.2, cold_pulls 20) with the service's default
settings otherwise: `projection_dim` unset (all 384 dimensions, as benchmarks/load.py
runs), snapshot_every_n = 200, snapshot_every_ms = 1000, lease_ttl_ms = 5000.

Each worker is sent every cached query once (its embedding cache is its own), then a
short unmeasured warm-up of pairs; then one client process runs `--concurrency` loops,
split evenly over the two workers, for `--duration` seconds: each loop POSTs /v1/route
with a cached query and then /v1/feedback for the decision it got (a random quality and
a cost), on one keep-alive connection. Meanwhile the parent samples
GET /v1/policies/default every `--sample-ms`: `learner_lag_s` is the published
snapshot's age while feedback waits for the learner (0 when none waits) and
`feedback_waiting` the feedback appended but not yet in a snapshot
(service/routes/policies.py). After the load it waits for the learner to drain and
checks exactly-once: updates_applied == feedback accepted (202 "accepted") by the client.

Exit status 1 on any non-2xx answer (client or sampler), or applied != accepted.

Run: python -m benchmarks.scale_out [--quick] [--duration S] [--concurrency N]
     [--redis-url URL] [--cluster-url URL] [--backends single,cluster] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from benchmarks.load import (
    HOST,
    REPO,
    Server,
    bodies,
    free_port,
    machine_busy_s,
    prime,
    short_questions,
    start_server,
    tree_cpu_s,
)

POLICY = "default"
TARGET_LAG_P99_S = 1.0
MODELS = (  # a small catalogue: three of the sample config's models, its prices
    ("gemma-2-9b-it", 0.1, 0.1),
    ("llama-3.1-8b-instruct", 0.2, 0.2),
    ("llama-3.1-nemotron-51b-instruct", 0.9, 0.9),
)


# ---------------------------------------------------------------- config and processes


def write_config(tmp: Path, redis_url: str, prefix: str) -> Path:
    lines = [
        f"state_dir = {json.dumps(str(tmp / 'state'))}",
        f"redis_url = {json.dumps(redis_url)}",
        f"key_prefix = {json.dumps(prefix)}",
        "run_learner = false",
        f'default_policy = "{POLICY}"',
        'fallback_model = "llama-3.1-8b-instruct"',
        "decision_ttl_s = 86400",
        "",
    ]
    for name, inp, out in MODELS:
        lines += ["[[models]]", f'name = "{name}"', f"input_per_m = {inp}"]
        lines += [f"output_per_m = {out}", ""]
    lines += [
        f"[policies.{POLICY}]",
        'kind = "hybrid"',
        "cost_weight = 0.2",
        "params = { alpha = 0.15, epsilon = 0.02, cold_cap = 0.2, cold_pulls = 20 }",
    ]
    path = tmp / "banditroute.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def exe() -> str:
    return str(Path(sys.executable).parent / "banditroute")


def start_worker(i: int, config: Path, tmp: Path, log_level: str) -> Server:
    argv = [exe(), "serve", "--config", str(config), "--host", HOST, "--port", str(free_port())]
    argv += ["--workers", "1", "--log-level", log_level]
    return start_server(f"worker{i}", argv, tmp)


def start_learner(config: Path, tmp: Path) -> Server:
    log = tmp / "learner.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [exe(), "learner", "--config", str(config)],
            cwd=REPO,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return Server("learner", proc, "", log)


def stop_learner(s: Server) -> None:
    if s.proc.poll() is None:
        s.proc.send_signal(signal.SIGTERM)  # leaves the pool, publishes, releases
        try:
            s.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait()


def clean_redis(url: str, prefix: str) -> int:
    """Delete every key under `prefix` (on a cluster, on each master, one key at a time:
    the keys of different policies live in different slots)."""
    import redis

    if "+cluster" in url:
        from redis.cluster import RedisCluster

        cluster = RedisCluster.from_url(url.replace("+cluster", ""))
        try:
            nodes = [(n.host, n.port) for n in cluster.get_primaries()]
        finally:
            cluster.close()
    else:
        nodes = [("", 0)]
    removed = 0
    for host, port in nodes:
        client = redis.Redis.from_url(url) if not port else redis.Redis(host=host, port=port)
        try:
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            pipe = client.pipeline(transaction=False)
            for k in keys:
                pipe.unlink(k)
            pipe.execute()
            removed += len(keys)
        finally:
            client.close()
    return removed


# ---------------------------------------------------------------- the load client


class Conn:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads status and body
    (the cheap client of benchmarks/load.py, which needs no body)."""

    def __init__(self, url: str) -> None:
        u = httpx.URL(url)
        self.host, self.port = u.host, u.port or 80
        self._r: asyncio.StreamReader | None = None
        self._w: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        try:
            if self._w is None:
                self._r, self._w = await asyncio.open_connection(self.host, self.port)
            assert self._r is not None
            self._w.write(
                b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s"
                % (path.encode(), self.host.encode(), self.port, len(body), body)
            )
            head = (await self._r.readuntil(b"\r\n\r\n")).lower()
            at = head.index(b"\r\ncontent-length:") + 17
            data = await self._r.readexactly(int(head[at : head.index(b"\r", at)]))
            if b"\r\nconnection: close" in head:
                await self.aclose()
            return int(head[9:12]), data
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await self.aclose()
            return 0, b""

    async def aclose(self) -> None:
        if self._w is not None:
            self._w.close()
            with contextlib.suppress(OSError):
                await self._w.wait_closed()
        self._r = self._w = None


@dataclass
class LoadJob:
    urls: list[str]
    queries: list[bytes]
    concurrency: int
    duration_s: float
    seed: int


@dataclass
class LoadResult:
    route_ms: bytes  # array('d')
    feedback_ms: bytes
    pairs: int  # route 200 and feedback 202
    accepted: int  # feedback answered "accepted"
    errors: dict[str, int]  # "route 503", "feedback 0" (0: no answer), ...
    start: float
    end: float
    cpu_s: float


async def _load(job: LoadJob, go: Any, done: Any) -> LoadResult:
    rng = random.Random(job.seed)
    route_ms: array[float] = array("d")
    fb_ms: array[float] = array("d")
    errors: Counter[str] = Counter()
    counts = {"pairs": 0, "accepted": 0}
    conns = [Conn(job.urls[i % len(job.urls)]) for i in range(job.concurrency)]
    go.wait()
    cpu0, t0 = time.process_time(), time.monotonic()
    end = t0 + job.duration_s

    async def loop(conn: Conn) -> None:
        pending = 0
        while time.monotonic() < end:
            q = job.queries[rng.randrange(len(job.queries))]
            a = time.perf_counter()
            st, data = await conn.post("/v1/route", q)
            b = time.perf_counter()
            if st != 200:
                errors[f"route {st}"] += 1
                continue
            route_ms.append((b - a) * 1e3)
            event_id = json.loads(data).get("event_id")
            if not event_id:
                errors["route without event_id"] += 1
                continue
            fb = json.dumps(
                {
                    "event_id": event_id,
                    "quality": round(rng.random(), 4),
                    "cost_usd": round(rng.uniform(1e-5, 1e-3), 7),
                }
            ).encode()
            st, data = await conn.post("/v1/feedback", fb)
            c = time.perf_counter()
            if st != 202:
                errors[f"feedback {st}"] += 1
                continue
            fb_ms.append((c - b) * 1e3)
            counts["pairs"] += 1
            if json.loads(data).get("status") == "accepted":
                counts["accepted"] += 1
            pending += 1
            if pending == 16:
                with done.get_lock():
                    done.value += pending
                pending = 0
        if pending:
            with done.get_lock():
                done.value += pending

    await asyncio.gather(*(loop(c) for c in conns))
    t1, cpu1 = time.monotonic(), time.process_time()
    for c in conns:
        await c.aclose()
    return LoadResult(
        route_ms.tobytes(),
        fb_ms.tobytes(),
        counts["pairs"],
        counts["accepted"],
        dict(errors),
        t0,
        t1,
        cpu1 - cpu0,
    )


def _load_main(job: LoadJob, go: Any, done: Any, out: Any) -> None:
    try:
        import uvloop

        out.put(asdict(uvloop.run(_load(job, go, done))))
    except Exception as exc:  # noqa: BLE001 - reported by the parent
        out.put(repr(exc))


# ---------------------------------------------------------------- the lag sampler


@dataclass
class Sample:
    t: float
    lag_s: float | None
    waiting: int
    applied: int
    total: int
    version: int


class Sampler(threading.Thread):
    """GET /v1/policies/default every `every_s` while running."""

    def __init__(self, url: str, every_s: float) -> None:
        super().__init__(daemon=True)
        self.url, self.every_s = f"{url}/v1/policies/{POLICY}", every_s
        self.samples: list[Sample] = []
        self.errors: Counter[str] = Counter()
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            nxt = time.monotonic()
            while not self.halt.is_set():
                s = read_status(client, self.url, self.errors)
                if s is not None:
                    self.samples.append(s)
                nxt += self.every_s
                self.halt.wait(max(0.0, nxt - time.monotonic()))


def read_status(client: httpx.Client, url: str, errors: Counter[str]) -> Sample | None:
    try:
        r = client.get(url)
    except httpx.HTTPError as exc:
        errors[f"status {type(exc).__name__}"] += 1
        return None
    if r.status_code != 200:
        errors[f"status {r.status_code}"] += 1
        return None
    d = r.json()
    return Sample(
        time.monotonic(),
        d["learner_lag_s"],
        d["feedback_waiting"],
        d["updates_applied"],
        d["feedback_total"],
        d["version"],
    )


# ---------------------------------------------------------------- one backend


@dataclass
class Figures:
    backend: str
    redis_url: str
    concurrency: int
    duration_s: float
    pairs: int
    pairs_per_s: float
    route_p50_ms: float
    route_p99_ms: float
    feedback_p50_ms: float
    feedback_p99_ms: float
    lag_samples: int
    lag_none: int  # samples before the first snapshot (no lag to report)
    lag_p50_s: float
    lag_p99_s: float
    lag_max_s: float
    waiting_p99: float
    waiting_max: int
    accepted: int  # warm-up and measured, by the client
    applied: int  # updates_applied after draining
    feedback_total: int
    drain_s: float
    errors: dict[str, int]
    workers_cpu_cores: float
    learner_cpu_cores: float
    client_cpu_cores: float
    machine_busy_cores: float
    loadavg_before: tuple[float, float, float]
    loadavg_after: tuple[float, float, float]
    snapshots: int = 0
    notes: list[str] = field(default_factory=list)


def pct(xs: np.ndarray, q: float) -> float:
    return float(np.percentile(xs, q)) if len(xs) else float("nan")


def run_load(
    job: LoadJob, progress: Progress, label: str, on_start: Any = None
) -> tuple[LoadResult, float]:
    """One client process running `job`; its result and the seconds of its run."""
    ctx = mp.get_context("spawn")
    go, done, out = ctx.Event(), ctx.Value("q", 0), ctx.Queue()
    proc = ctx.Process(target=_load_main, args=(job, go, done, out), daemon=True)
    proc.start()
    time.sleep(0.5)  # the interpreter starts (spawn) before the clock does
    task = progress.add_task(label, total=job.duration_s, pairs=0)
    if on_start is not None:
        on_start()
    t0 = time.monotonic()
    go.set()
    result: dict[str, Any] | str | None = None
    while result is None:
        el = time.monotonic() - t0
        progress.update(task, completed=min(el, job.duration_s), pairs=done.value)
        try:
            result = out.get(timeout=0.2)
        except queue.Empty:
            if not proc.is_alive() and out.empty():
                raise RuntimeError(f"{label}: the client process died") from None
    proc.join()
    progress.update(task, completed=job.duration_s, pairs=done.value)
    if isinstance(result, str):
        raise RuntimeError(f"{label}: client failed: {result}")
    return LoadResult(**result), time.monotonic() - t0


def run_backend(
    backend: str, redis_url: str, args: argparse.Namespace, console: Console
) -> Figures:
    prefix = f"brscale-{uuid.uuid4().hex[:10]}"
    queries = bodies(short_questions(args.cached_texts, seed=1))
    servers: list[Server] = []
    learner: Server | None = None
    errors: Counter[str] = Counter()
    la0 = os.getloadavg()
    console.rule(f"{backend}: {redis_url}, key prefix {prefix}")
    console.print(f"load average before: {la0[0]:.2f} {la0[1]:.2f} {la0[2]:.2f}")
    with tempfile.TemporaryDirectory(prefix="brscale-") as d:
        tmp = Path(d)
        config = write_config(tmp, redis_url, prefix)
        try:
            console.print("starting 2 workers (run_learner = false) and 1 learner ...")
            for i in range(2):
                servers.append(start_worker(i, config, tmp, args.log_level))
            learner = start_learner(config, tmp)
            urls = [s.url for s in servers]
            console.print("warming each worker's embedding cache ...")
            for url in urls:
                prime(url, queries)
            status_url = f"{urls[0]}/v1/policies/{POLICY}"
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
                TextColumn("{task.fields[pairs]} pairs"),
                TimeElapsedColumn(),
                console=console,
            ) as progress:
                warm, _ = run_load(
                    LoadJob(urls, queries, args.concurrency, args.warmup_s, seed=7),
                    progress,
                    f"{backend}: warm-up",
                )
                errors.update(warm.errors)
                with httpx.Client(timeout=10) as client:
                    first = drain(client, status_url, warm.accepted, args.drain_timeout_s, errors)
                if learner.proc.poll() is not None:
                    raise RuntimeError(f"learner exited:\n{learner.log.read_text()[-3000:]}")
                sampler = Sampler(urls[0], args.sample_ms / 1e3)
                pids = [s.proc.pid for s in servers]
                marks: dict[str, float] = {}

                def begin() -> None:
                    marks["workers"] = sum(tree_cpu_s(p) for p in pids)
                    marks["learner"] = tree_cpu_s(learner.proc.pid) if learner else 0.0
                    marks["busy"] = machine_busy_s()
                    sampler.start()

                res, _ = run_load(
                    LoadJob(urls, queries, args.concurrency, args.duration_s, seed=11),
                    progress,
                    f"{backend}: {args.concurrency} loops over 2 workers",
                    on_start=begin,
                )
                workers_cpu = sum(tree_cpu_s(p) for p in pids) - marks["workers"]
                learner_cpu = tree_cpu_s(learner.proc.pid) - marks["learner"]
                busy = machine_busy_s() - marks["busy"]
            sampler.halt.set()
            sampler.join()
            errors.update(res.errors)
            errors.update(sampler.errors)
            accepted = warm.accepted + res.accepted
            console.print(f"load done; draining the learner (accepted {accepted}) ...")
            t_drain = time.monotonic()
            with httpx.Client(timeout=10) as client:
                last = drain(client, status_url, accepted, args.drain_timeout_s, errors)
            drain_s = time.monotonic() - t_drain
            if learner.proc.poll() is not None:
                errors["learner exited"] += 1
        finally:
            for s in servers:
                s.stop()
            if learner is not None:
                stop_learner(learner)
            if errors:
                for s in [*servers, *([learner] if learner else [])]:
                    tail = s.log.read_text(errors="replace").splitlines()[-20:]
                    console.print(f"[bold]{s.name} log, last lines:[/bold]", *tail, sep="\n")
            removed = clean_redis(redis_url, prefix)
            console.print(f"removed {removed} keys under {prefix}:")
    la1 = os.getloadavg()
    wall = res.end - res.start
    route = np.frombuffer(res.route_ms, dtype=np.float64)
    fb = np.frombuffer(res.feedback_ms, dtype=np.float64)
    lags = np.array([s.lag_s for s in sampler.samples if s.lag_s is not None], dtype=np.float64)
    waiting = np.array([s.waiting for s in sampler.samples], dtype=np.float64)
    versions = [s.version for s in sampler.samples]
    return Figures(
        backend=backend,
        redis_url=redis_url,
        concurrency=args.concurrency,
        duration_s=wall,
        pairs=res.pairs,
        pairs_per_s=res.pairs / wall,
        route_p50_ms=pct(route, 50),
        route_p99_ms=pct(route, 99),
        feedback_p50_ms=pct(fb, 50),
        feedback_p99_ms=pct(fb, 99),
        lag_samples=len(sampler.samples),
        lag_none=sum(s.lag_s is None for s in sampler.samples),
        lag_p50_s=pct(lags, 50),
        lag_p99_s=pct(lags, 99),
        lag_max_s=float(lags.max()) if len(lags) else float("nan"),
        waiting_p99=pct(waiting, 99),
        waiting_max=int(waiting.max()) if len(waiting) else 0,
        accepted=accepted,
        applied=last.applied if last else -1,
        feedback_total=last.total if last else -1,
        drain_s=drain_s,
        errors=dict(errors),
        workers_cpu_cores=workers_cpu / wall,
        learner_cpu_cores=learner_cpu / wall,
        client_cpu_cores=res.cpu_s / wall,
        machine_busy_cores=busy / wall,
        loadavg_before=la0,
        loadavg_after=la1,
        snapshots=(max(versions) - min(versions)) if versions else 0,
        notes=[f"first snapshot after warm-up: version {first.version if first else '?'}"],
    )


def drain(
    client: httpx.Client, url: str, accepted: int, timeout_s: float, errors: Counter[str]
) -> Sample | None:
    """Poll the policy's status until nothing waits and `accepted` updates are applied
    (or until `timeout_s`); the last status read."""
    deadline = time.monotonic() + timeout_s
    last: Sample | None = None
    while time.monotonic() < deadline:
        s = read_status(client, url, errors)
        if s is not None:
            last = s
            if s.waiting == 0 and s.applied >= accepted:
                return s
        time.sleep(0.1)
    return last


# ---------------------------------------------------------------- report


def table(f: Figures) -> Table:
    t = Table(title=f"{f.backend} ({f.redis_url}): 2 workers + 1 learner, {f.concurrency} loops")
    t.add_column("figure")
    t.add_column("value", justify="right")
    rows = [
        ("measured run", f"{f.duration_s:.1f} s"),
        ("route+feedback pairs", str(f.pairs)),
        ("pairs/s sustained", f"{f.pairs_per_s:.0f}"),
        ("route p50 / p99", f"{f.route_p50_ms:.2f} / {f.route_p99_ms:.2f} ms"),
        ("feedback p50 / p99", f"{f.feedback_p50_ms:.2f} / {f.feedback_p99_ms:.2f} ms"),
        (
            "learner lag p50 / p99 / max",
            f"{f.lag_p50_s:.3f} / {f.lag_p99_s:.3f} / {f.lag_max_s:.3f} s",
        ),
        ("lag samples (none: no snapshot yet)", f"{f.lag_samples} ({f.lag_none})"),
        ("feedback waiting p99 / max", f"{f.waiting_p99:.0f} / {f.waiting_max}"),
        ("snapshots published during the run", str(f.snapshots)),
        (
            "accepted (client) / applied / feedback_total",
            f"{f.accepted} / {f.applied} / {f.feedback_total}",
        ),
        ("drain after the load", f"{f.drain_s:.2f} s"),
        ("errors", ", ".join(f"{n} x {k}" for k, n in sorted(f.errors.items())) or "0"),
        (
            "CPU cores: workers / learner / client / machine",
            f"{f.workers_cpu_cores:.2f} / {f.learner_cpu_cores:.2f} / "
            f"{f.client_cpu_cores:.2f} / {f.machine_busy_cores:.2f}",
        ),
        (
            "load average before -> after (1/5/15 min)",
            " ".join(f"{v:.2f}" for v in f.loadavg_before)
            + " -> "
            + " ".join(f"{v:.2f}" for v in f.loadavg_after),
        ),
    ]
    for r in rows:
        t.add_row(*r)
    return t


def ratio_table(single: Figures, cluster: Figures) -> Table:
    t = Table(title="cluster / single Redis")
    for c in ("figure", "single", "cluster", "ratio"):
        t.add_column(c, justify="left" if c == "figure" else "right")
    for name, attr, fmt in (
        ("pairs/s", "pairs_per_s", "{:.0f}"),
        ("route p50 ms", "route_p50_ms", "{:.2f}"),
        ("route p99 ms", "route_p99_ms", "{:.2f}"),
        ("feedback p50 ms", "feedback_p50_ms", "{:.2f}"),
        ("feedback p99 ms", "feedback_p99_ms", "{:.2f}"),
        ("lag p99 s", "lag_p99_s", "{:.3f}"),
        ("lag max s", "lag_max_s", "{:.3f}"),
    ):
        a, b = getattr(single, attr), getattr(cluster, attr)
        t.add_row(name, fmt.format(a), fmt.format(b), f"{b / a:.2f}" if a else "-")
    return t


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", dest="duration_s", type=float, default=20.0)
    parser.add_argument("--quick", action="store_true", help="8 s runs, 2 s warm-up")
    parser.add_argument("--warmup", dest="warmup_s", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16, help="client loops, in all")
    parser.add_argument("--sample-ms", type=float, default=100.0)
    parser.add_argument("--cached-texts", type=int, default=32)
    parser.add_argument("--drain-timeout", dest="drain_timeout_s", type=float, default=60.0)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--cluster-url", default="redis+cluster://127.0.0.1:7101")
    parser.add_argument("--backends", default="single,cluster")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args()
    if args.quick:
        args.duration_s, args.warmup_s = 8.0, 2.0
    chosen = args.backends.split(",")
    urls = {"single": args.redis_url, "cluster": args.cluster_url}
    if not set(chosen) <= set(urls):
        parser.error("--backends: a comma-separated subset of single,cluster")
    console = Console(width=max(Console().width, 120))
    console.print(
        f"{os.cpu_count()} cores; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
        f"{args.duration_s:g} s per backend, {args.concurrency} loops; policy {POLICY!r}: "
        "hybrid, projection_dim unset (384, as load.py), snapshot every 200 / 1000 ms"
    )
    figures: dict[str, Figures] = {}
    for b in chosen:
        figures[b] = run_backend(b, urls[b], args, console)
    failed = False
    for f in figures.values():
        console.print(table(f))
        met = f.lag_p99_s < TARGET_LAG_P99_S
        console.print(
            f"{'met   ' if met else 'MISSED'}  {f.backend}: learner lag p99 < "
            f"{TARGET_LAG_P99_S:g} s at {f.pairs_per_s:.0f} pairs/s: {f.lag_p99_s:.3f} s"
        )
        once = f.applied == f.accepted and f.feedback_total == f.accepted
        console.print(
            f"{'ok    ' if once else 'FAILED'}  {f.backend}: exactly-once, applied "
            f"{f.applied} = accepted {f.accepted} (feedback_total {f.feedback_total})"
        )
        failed |= bool(f.errors) or f.applied != f.accepted
    if "single" in figures and "cluster" in figures:
        console.print(ratio_table(figures["single"], figures["cluster"]))
    if args.out:
        args.out.write_text(json.dumps({k: asdict(v) for k, v in figures.items()}, indent=2))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
