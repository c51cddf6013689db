"""Requests per second and latency of `banditroute serve` on loopback, against a trivial
FastAPI app (benchmarks/trivial_app.py) run by uvicorn with the same settings.

Both servers run as real subprocesses; the load comes from `--clients` processes, each
an asyncio (uvloop) loop over its share of `--concurrency` keep-alive connections, one
request in flight per connection. The default client is a minimal HTTP/1.1 one: httpx
cost 1-2 ms of client CPU per request, ten times what the trivial server spends, so
with it the client sets the pace (`--client httpx` shows this). On this 2-core machine
client and server share the CPU, so every row also says how much CPU the server, the
clients and everything else on the machine used: read throughput with that column.

Scenarios: (a) the trivial endpoint; (b) POST /v1/route with a small set of repeated
queries (embedding-cache hits); (c) /v1/route with every query new (embedded in
batches by the FeatureBatcher): short generated questions, and real llmrouter prompts;
then concurrency 1 (sequential) for (a) and (b).

`--py-spy FILE` also records the server with py-spy (sampling, non-blocking: the server
is not paused) while it answers `--sequential-requests` cached queries one at a time,
after the measured runs, and prints where that time went (collapsed stacks in FILE).

Run: python -m benchmarks.load [--requests N] [--concurrency C] [--clients K]
     [--workers W] [--redis-url URL] [--client raw|httpx] [--scenarios a,b] [--out FILE]
     [--py-spy FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import uuid
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
SAMPLE_CONFIG = REPO / "deploy" / "banditroute.toml"
HOST = "127.0.0.1"

# the targets of issue 16 (the fast path), reported (not asserted): the cached route's
# throughput against the trivial endpoint's in the same run, its one-at-a-time p50 by
# store, and new queries per second on this 2-core machine with one worker
TARGET_CACHED_OVER_TRIVIAL = 0.3
TARGET_SEQUENTIAL_P50_MS = {"in-process": 0.4, "redis": 0.7}
TARGET_NEW_RPS = 300.0
TARGET_PROMPTS_RPS = 100.0

SCENARIOS = ("trivial", "cached", "new", "prompts", "sequential")

_SUBJECTS = (
    "my laptop battery",
    "a python list comprehension",
    "the French revolution",
    "compound interest",
    "a sourdough starter",
    "the quarterly sales report",
    "a haiku about rain",
    "my GPU driver",
    "photosynthesis",
    "a SQL join",
    "the tax return form",
    "a cover letter",
)
_ASKS = (
    "How do I fix",
    "Can you explain",
    "Write a short summary of",
    "What is wrong with",
    "Give me three tips about",
    "Compare two ways to handle",
)
_DETAILS = (
    "for a beginner",
    "in simple words",
    "step by step",
    "before Friday",
    "for my team",
    "with an example",
)


# ---------------------------------------------------------------- query texts


def short_questions(n: int, seed: int) -> list[str]:
    """`n` distinct short questions (about 20 word pieces, like a chat query)."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        text = (
            f"{rng.choice(_ASKS)} {rng.choice(_SUBJECTS)} {rng.choice(_DETAILS)}, "
            f"case {int(rng.integers(100_000, 1_000_000))}?"
        )
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def real_prompts(path: Path, n: int, seed: int) -> list[str]:
    """Up to `n` distinct prompts of the shared llmrouter data, shuffled."""
    import pandas as pd  # only this scenario needs it

    texts = pd.read_parquet(path, columns=["prompt"])["prompt"].drop_duplicates()
    return list(texts.sample(min(n, len(texts)), random_state=seed))


def bodies(texts: Sequence[str]) -> list[bytes]:
    return [json.dumps({"query": t}).encode() for t in texts]


# ---------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _toml_value(v: Any) -> str:
    # top-level scalars only; JSON string escapes are valid TOML basic strings
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v) if isinstance(v, str) else repr(v)


def write_config(tmp: Path, redis_url: str | None, prefix: str) -> Path:
    """The sample config with its state under `tmp` and, if given, Redis at `prefix`."""
    sample = SAMPLE_CONFIG.read_text()
    top = {k: v for k, v in tomllib.loads(sample).items() if not isinstance(v, dict | list)}
    top["state_dir"] = str(tmp / "state")
    if redis_url:
        top["redis_url"] = redis_url
        top["key_prefix"] = prefix
    lines = sample.splitlines()
    first_table = next(i for i, line in enumerate(lines) if line.startswith("["))
    head = [f"{k} = {_toml_value(v)}" for k, v in top.items()]
    path = tmp / "banditroute.toml"
    path.write_text("\n".join(head + [""] + lines[first_table:]) + "\n")
    return path


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(name: str, argv: list[str], tmp: Path, timeout_s: float = 180.0) -> Server:
    """Start `argv` (a uvicorn server) and wait until GET /readyz answers 200."""
    log = tmp / f"{name}.log"
    port = argv[argv.index("--port") + 1]
    url = f"http://{HOST}:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as fh:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env)
    server = Server(name, proc, url, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return server
        time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"{name} not ready after {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def route_server(config: Path, port: int, workers: int, log_level: str, tmp: Path) -> Server:
    exe = Path(sys.executable).parent / "banditroute"
    argv = [str(exe), "serve", "--config", str(config), "--host", HOST, "--port", str(port)]
    argv += ["--workers", str(workers), "--log-level", log_level]
    return start_server("banditroute", argv, tmp)


def trivial_server(port: int, workers: int, log_level: str, tmp: Path) -> Server:
    # the same uvicorn settings as `banditroute serve`: auto loop and http (uvloop,
    # httptools), `workers` processes, the same log level
    argv = [sys.executable, "-m", "uvicorn", "benchmarks.trivial_app:app", "--host", HOST]
    argv += ["--port", str(port), "--workers", str(workers), "--log-level", log_level]
    return start_server("trivial", argv, tmp)


def clean_redis(url: str, prefix: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for s in range(0, len(keys), 500):
            client.delete(*keys[s : s + 500])
        return len(keys)
    finally:
        client.close()


# ---------------------------------------------------------------- CPU accounting


_TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(root: int) -> float:
    """User + system CPU seconds of `root` and its live descendants (uvicorn workers)."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces
        parent[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / _TICK
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo += [p for p, pp in parent.items() if pp == pid]
    return total


def machine_busy_s() -> float:
    """CPU seconds all cores spent outside idle and iowait since boot."""
    parts = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(parts) - parts[3] - parts[4]) / _TICK


# ---------------------------------------------------------------- load clients


@dataclass
class ClientJob:
    url: str
    bodies: list[bytes]  # the measured requests, sent once each, in order
    warmup: list[bytes]
    connections: int
    kind: str  # "raw" or "httpx"


@dataclass
class ClientResult:
    latencies_ms: bytes  # array('d') of successful requests
    errors: dict[int, int]  # status -> count, for every status but 200 (0: no answer)
    start: float  # time.monotonic(): one clock for every process on the machine
    end: float
    cpu_s: float


class RawConnection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads the whole answer.

    It exists because the load shares 2 cores with the server: httpx spent 1-2 ms of
    client CPU per request here (more than the server it measures), this under 0.1 ms.
    It expects what uvicorn sends: a Content-Length, no chunked bodies.
    """

    def __init__(self, url: str, path: str) -> None:
        u = httpx.URL(url)
        self.host, self.port = u.host, u.port or 80
        self.head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> int:
        try:
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            assert self._reader is not None
            self._writer.write(b"%s%d\r\n\r\n%s" % (self.head, len(body), body))
            head = (await self._reader.readuntil(b"\r\n\r\n")).lower()
            at = head.index(b"\r\ncontent-length:") + 17
            await self._reader.readexactly(int(head[at : head.index(b"\r", at)]))
            if b"\r\nconnection: close" in head:
                await self.aclose()
            return int(head[9:12])
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await self.aclose()
            return 0

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


class HttpxConnection:
    """A share of one httpx.AsyncClient (which pools the real connections)."""

    headers = {"content-type": "application/json"}

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client, self.url = client, url

    async def post(self, body: bytes) -> int:
        try:
            r = await self.client.post(self.url, content=body, headers=self.headers)
        except httpx.HTTPError:
            return 0
        return r.status_code

    async def aclose(self) -> None:
        pass


Connection = RawConnection | HttpxConnection


async def _drive(
    conns: list[Connection], items: list[bytes], lat: array[float] | None, done: Any
) -> Counter[int]:
    """Send every body of `items`, one in flight per connection; returns the count of
    each status other than 200 (0: no answer)."""
    it: Iterator[bytes] = iter(items)
    errors: Counter[int] = Counter()

    async def loop(conn: Connection) -> None:
        pending = 0
        for body in it:
            t0 = time.perf_counter()
            status = await conn.post(body)
            if status == 200:
                if lat is not None:
                    lat.append((time.perf_counter() - t0) * 1e3)
            else:
                errors[status] += 1
            pending += 1
            if done is not None and pending == 16:  # a lock per request would cost more
                with done.get_lock():
                    done.value += pending
                pending = 0
        if done is not None and pending:
            with done.get_lock():
                done.value += pending

    await asyncio.gather(*(loop(c) for c in conns))
    return errors


async def _client(job: ClientJob, barrier: Barrier, done: Any) -> ClientResult:
    limits = httpx.Limits(max_connections=job.connections, max_keepalive_connections=None)
    url = f"{job.url}/v1/route"
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        conns: list[Connection] = [
            RawConnection(job.url, "/v1/route")
            if job.kind == "raw"
            else HttpxConnection(client, url)
            for _ in range(job.connections)
        ]
        await _drive(conns, job.warmup, None, None)
        barrier.wait()  # blocking is fine: nothing else runs on this loop meanwhile
        lat: array[float] = array("d")
        cpu0, t0 = time.process_time(), time.monotonic()
        errors = await _drive(conns, job.bodies, lat, done)
        t1, cpu1 = time.monotonic(), time.process_time()
        for c in conns:
            await c.aclose()
    return ClientResult(lat.tobytes(), dict(errors), t0, t1, cpu1 - cpu0)


def _client_main(job: ClientJob, barrier: Barrier, done: Any, out: Any) -> None:
    try:
        import uvloop  # the client is CPU-bound too; give it the faster loop

        result = uvloop.run(_client(job, barrier, done))
    except Exception as exc:  # noqa: BLE001 - reported by the parent
        barrier.abort()
        out.put(repr(exc))
        return
    out.put(asdict(result))


def _split(items: list[bytes], k: int) -> list[list[bytes]]:
    return [items[i::k] for i in range(k)]


# ---------------------------------------------------------------- one scenario


@dataclass
class Figures:
    scenario: str
    clients: int
    concurrency: int
    requests: int
    errors: dict[int, int]  # status -> count (0: no answer)
    rps: float
    p50_ms: float
    p99_ms: float
    server_cpu_ms: float  # per request
    client_cpu_ms: float  # per request
    other_cores: float  # mean cores busy outside server and clients during the run
    wall_s: float


def run_scenario(
    name: str,
    server: Server,
    measured: list[bytes],
    warmup: list[bytes],
    concurrency: int,
    clients: int,
    kind: str,
    progress: Progress,
) -> Figures:
    ctx = mp.get_context("spawn")  # fresh interpreters: no inherited loop, threads or locks
    clients = max(1, min(clients, concurrency))
    conns = [concurrency // clients + (i < concurrency % clients) for i in range(clients)]
    barrier = ctx.Barrier(clients + 1)
    done = ctx.Value("q", 0)
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=_client_main,
            args=(ClientJob(server.url, b, w, c, kind), barrier, done, out),
            daemon=True,
        )
        for b, w, c in zip(_split(measured, clients), _split(warmup, clients), conns, strict=True)
    ]
    task = progress.add_task(name, total=len(measured))
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=600)
    except threading.BrokenBarrierError:
        raise RuntimeError(f"{name}: client failed: {out.get(timeout=5)}") from None
    cpu0, busy0 = tree_cpu_s(server.proc.pid), machine_busy_s()
    results: list[dict[str, Any] | str] = []
    while len(results) < clients:
        progress.update(task, completed=done.value)
        try:
            results.append(out.get(timeout=0.2))
        except queue.Empty:
            if not any(p.is_alive() for p in procs) and out.empty():
                raise RuntimeError(f"{name}: a client process died") from None
    cpu1, busy1 = tree_cpu_s(server.proc.pid), machine_busy_s()
    progress.update(task, completed=len(measured))
    for p in procs:
        p.join()
    failures = [r for r in results if isinstance(r, str)]
    if failures:
        raise RuntimeError(f"{name}: client failed: {failures[0]}")
    res = [ClientResult(**r) for r in results if isinstance(r, dict)]
    lat = np.concatenate([np.frombuffer(r.latencies_ms, dtype=np.float64) for r in res])
    wall = max(r.end for r in res) - min(r.start for r in res)
    n = len(measured)
    server_cpu = cpu1 - cpu0
    client_cpu = sum(r.cpu_s for r in res)
    return Figures(
        scenario=name,
        clients=clients,
        concurrency=concurrency,
        requests=n,
        errors=dict(sum((Counter(r.errors) for r in res), Counter())),
        rps=len(lat) / wall,
        p50_ms=float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        p99_ms=float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        server_cpu_ms=server_cpu / n * 1e3,
        client_cpu_ms=client_cpu / n * 1e3,
        other_cores=max(0.0, (busy1 - busy0) - server_cpu - client_cpu) / wall,
        wall_s=wall,
    )


def prime(url: str, measured: Sequence[bytes]) -> None:
    """Send each distinct body once, so that its embedding is cached before a run."""
    with httpx.Client(timeout=120) as client:
        for body in dict.fromkeys(measured):
            r = client.post(
                f"{url}/v1/route", content=body, headers={"content-type": "application/json"}
            )
            r.raise_for_status()


# ---------------------------------------------------------------- report


def table(figures: list[Figures], title: str) -> Table:
    t = Table(title=title)
    cols = (
        "scenario",
        "clients x conns",
        "requests",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "server CPU\nms/req",
        "client CPU\nms/req",
        "others' load\n(cores)",
    )
    for col in cols:
        t.add_column(col, justify="left" if col == "scenario" else "right")
    for f in figures:
        t.add_row(
            f.scenario,
            f"{f.clients} x {f.concurrency // f.clients}"
            + ("+" if f.concurrency % f.clients else ""),
            str(f.requests),
            f"{f.rps:.0f}",
            f"{f.p50_ms:.2f}",
            f"{f.p99_ms:.2f}",
            ", ".join(f"{n} x {s or 'none'}" for s, n in sorted(f.errors.items())) or "0",
            f"{f.server_cpu_ms:.2f}",
            f"{f.client_cpu_ms:.2f}",
            # /proc counts in 10 ms ticks: too coarse for a run shorter than a second
            f"{f.other_cores:.2f}" if f.wall_s >= 1.0 else "-",
        )
    return t


def verdicts(by: dict[str, Figures], store: str = "in-process") -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each target of the issue that was measured; `store`
    ("in-process" or "redis") picks the one-at-a-time latency target."""
    out = []
    trivial, cached = by.get("trivial"), by.get("route, cached")
    if trivial and cached:
        ratio = cached.rps / trivial.rps
        out.append(
            (
                f"cached route >= {TARGET_CACHED_OVER_TRIVIAL:.0%} of trivial throughput",
                f"{ratio:.2f} ({cached.rps:.0f} / {trivial.rps:.0f} req/s)",
                ratio >= TARGET_CACHED_OVER_TRIVIAL,
            )
        )
    seq = by.get("route, cached, sequential")
    if seq:
        target = TARGET_SEQUENTIAL_P50_MS[store]
        out.append(
            (
                f"route, cached, one at a time ({store}): p50 <= {target:g} ms",
                f"{seq.p50_ms:.2f} ms",
                seq.p50_ms <= target,
            )
        )
    for key, target, what in (
        ("route, new short questions", TARGET_NEW_RPS, "short generated questions"),
        ("route, new llmrouter prompts", TARGET_PROMPTS_RPS, "llmrouter prompts"),
    ):
        new = by.get(key)
        if new:
            out.append(
                (
                    f"new {what} >= {target:.0f} req/s",
                    f"{new.rps:.0f} req/s",
                    new.rps >= target,
                )
            )
    return out


def profile_summary(path: Path, top: int = 25) -> list[str]:
    """Where the recorded time went: from py-spy's collapsed stacks ("f1;f2;f3 n" per
    line), the share of samples under each frame of this repository (inclusive), then
    the frames that were themselves running (self), anywhere."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        total += count
        # "name (file:line)" -> "name (file)": one entry per function, not per line
        frames = [f.rsplit(":", 1)[0] + ")" if f.endswith(")") else f for f in stack.split(";")]
        own[frames[-1]] += count
        for f in set(frames):
            inclusive[f] += count
    if not total:
        return ["py-spy recorded no samples"]
    ours = [(f, c) for f, c in inclusive.most_common() if "(service/" in f or "(policies/" in f]
    lines = [f"{total} samples; inclusive, this repository's frames:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in ours[:top]]
    lines.append("self (the frame itself running), all frames:")
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    return lines


def py_spy_run(
    path: Path, server: Server, bodies_: list[bytes], progress: Progress, kind: str
) -> list[str]:
    """`bodies_` one at a time with py-spy recording the server; its summary."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        return ["--py-spy: py-spy is not installed (pip install py-spy)"]
    argv = [exe, "record", "--nonblocking", "-r", "1000", "-f", "raw", "-o", str(path)]
    spy = subprocess.Popen(
        [*argv, "--pid", str(server.proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        time.sleep(1.0)  # py-spy attaches
        run_scenario("profiled (py-spy)", server, bodies_, bodies_[:200], 1, 1, kind, progress)
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on an interrupt
        _, err = spy.communicate(timeout=60)
    if not path.exists():
        return [f"--py-spy: no profile written: {err.decode(errors='replace')[-500:]}"]
    return profile_summary(path)


def notes(by: dict[str, Figures], concurrency: int) -> list[str]:
    """Figures that read the same whatever else the machine was doing."""
    out = []
    trivial, cached = by.get("trivial"), by.get("route, cached")
    if trivial and cached:
        out.append(
            f"server CPU per request, trivial / cached route: {trivial.server_cpu_ms:.2f} / "
            f"{cached.server_cpu_ms:.2f} ms = "
            f"{trivial.server_cpu_ms / cached.server_cpu_ms:.2f} (throughput ratio if CPU-bound)"
        )
    if cached:
        # closed loop: every connection waits for its answer, so p50 is mostly queueing
        out.append(
            f"with {concurrency} connections, p50 is mostly queueing (Little's law: "
            f"{concurrency} / {cached.rps:.0f} req/s = {concurrency / cached.rps * 1e3:.1f} ms);"
            " the sequential p50 is the per-request latency"
        )
    return out


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000, help="per trivial/cached run")
    parser.add_argument(
        "--new-requests", type=int, default=2_000, help="per new-query run (they are slow)"
    )
    parser.add_argument(
        "--prompt-requests", type=int, default=500, help="per run of new llmrouter prompts"
    )
    parser.add_argument("--sequential-requests", type=int, default=2_000)
    parser.add_argument("--warmup", type=int, default=1_000, help="requests before each run")
    parser.add_argument("--concurrency", type=int, default=32, help="open connections")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="raw: a minimal keep-alive HTTP/1.1 client (cheap); httpx: httpx.AsyncClient",
    )
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers per server")
    parser.add_argument("--redis-url", default=None, help="run on Redis (default: in-process)")
    parser.add_argument("--log-level", default="warning", help="uvicorn log level, both servers")
    parser.add_argument("--cached-texts", type=int, default=32, help="distinct repeated queries")
    parser.add_argument("--data", type=Path, default=REPO / "data/llmrouter_14tasks.parquet")
    parser.add_argument(
        "--scenarios",
        type=lambda v: set(v.split(",")),
        default=set(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    parser.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        metavar="FILE",
        help="also profile the cached route one at a time with py-spy (collapsed stacks)",
    )
    args = parser.parse_args()
    if not args.scenarios <= set(SCENARIOS):
        parser.error(f"--scenarios: unknown {sorted(args.scenarios - set(SCENARIOS))}")
    if args.workers > 1 and not args.redis_url:
        parser.error("--workers > 1 needs --redis-url (the in-process store is one process)")
    console = Console(width=max(Console().width, 150))

    cached_texts = short_questions(args.cached_texts, seed=1)
    fresh = iter(short_questions(2 * args.warmup + args.new_requests + 64, seed=2))
    new_warmup = bodies([next(fresh) for _ in range(args.warmup)])
    prompts_warmup = bodies([next(fresh) for _ in range(args.warmup // 4)])
    new_short = bodies([next(fresh) for _ in range(args.new_requests)])
    prompts: list[bytes] = []
    if args.data.exists():
        prompts = bodies(real_prompts(args.data, args.prompt_requests, seed=0))
    cached = bodies(cached_texts)

    def repeat(items: list[bytes], n: int) -> list[bytes]:
        return [items[i % len(items)] for i in range(n)]

    prefix = f"brload-{uuid.uuid4().hex[:12]}"
    figures: list[Figures] = []
    profile: list[str] = []
    with tempfile.TemporaryDirectory(prefix="brload-") as d:
        tmp = Path(d)
        config = write_config(tmp, args.redis_url, prefix)
        servers: list[Server] = []
        try:
            console.print("starting banditroute and the trivial app ...")
            route = route_server(config, free_port(), args.workers, args.log_level, tmp)
            servers.append(route)
            trivial = trivial_server(free_port(), args.workers, args.log_level, tmp)
            servers.append(trivial)
            prime(route.url, cached)
            seq = repeat(cached, args.sequential_requests)
            everything = {
                "trivial": ("trivial", trivial, repeat(cached, args.requests), args.concurrency),
                "cached": ("route, cached", route, repeat(cached, args.requests), args.concurrency),
                "new": ("route, new short questions", route, new_short, args.concurrency),
                "prompts": ("route, new llmrouter prompts", route, prompts, args.concurrency),
                "sequential": ("trivial, sequential", trivial, seq, 1),
                "sequential-route": ("route, cached, sequential", route, seq, 1),
            }
            plan = [
                run
                for key, run in everything.items()
                if key.split("-")[0] in args.scenarios and run[2]
            ]
            with Progress(
                "{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            ) as progress:
                for name, server, measured, conc in plan:
                    if "new" in name:
                        # fresh texts for the warm-up too, so it exercises the batcher
                        warm = new_warmup if "short" in name else prompts_warmup
                    else:
                        warm = repeat(cached, args.warmup)
                    clients = 1 if conc == 1 else args.clients
                    figures.append(
                        run_scenario(
                            name, server, measured, warm, conc, clients, args.client, progress
                        )
                    )
                if args.py_spy is not None:
                    profile = py_spy_run(args.py_spy, route, seq, progress, args.client)
        finally:
            for s in servers:
                s.stop()
            if any(f.errors for f in figures):
                for s in servers:
                    tail = s.log.read_text(errors="replace").splitlines()[-30:]
                    console.print(f"[bold]{s.name} log, last lines:[/bold]", *tail, sep="\n")
            if args.redis_url:
                removed = clean_redis(args.redis_url, prefix)
                console.print(f"removed {removed} Redis keys under {prefix}:")

    store = f"Redis ({args.redis_url})" if args.redis_url else "in-process store"
    console.print(
        table(
            figures,
            f"banditroute serve vs trivial FastAPI, loopback, {os.cpu_count()} cores, "
            f"{args.workers} uvicorn worker(s), {store}, {args.client} clients",
        )
    )
    by = {f.scenario: f for f in figures}
    checks = verdicts(by, "redis" if args.redis_url else "in-process")
    for target, measured_text, met in checks:
        console.print(f"{'met   ' if met else 'MISSED'}  {target}: {measured_text}")
    for line in notes(by, args.concurrency):
        console.print(line)
    if args.py_spy is not None:
        console.print(f"py-spy, the cached route one at a time ({args.py_spy}):")
        for line in profile:
            console.print(line, markup=False, highlight=False)
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "settings": {k: str(v) for k, v in vars(args).items()},
                    "cores": os.cpu_count(),
                    "figures": [asdict(f) for f in figures],
                    "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in checks],
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
