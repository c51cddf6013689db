"""The OpenAI-compatible gateway (`POST /v1/chat/completions`) against calling its
upstream directly, on loopback, with every process real.

Processes: a fast scripted upstream (`python -m simulator.upstream`, no latency), a
slow one (a chunk every `--slow-chunk-ms`), and `banditroute serve` (1 uvicorn worker,
the in-process store, three models small / medium / large on the upstream, the
shipped default policy: hybrid) started twice: once on the fast upstream, once on the
slow one (`max_connections = 256` there, so 200 streams do not queue in its pool).

(1) Overhead, non-streaming: one request at a time over one keep-alive httpx.Client
each, interleaved (direct, gateway, gateway, direct, ...) so that noise hits both
alike; the same bodies, `model: "auto"` through the gateway. The questions are a fixed
pool, routed once before the run so that every embedding is a cache hit. The figure
is the paired difference gateway - direct of each pair.
(2) Time to first token: `stream: true`, the upstream sending a word every
`--chunk-ms`; time from sending to the first content chunk, both ways, interleaved.
Streams are read to their end (the client does not leave early).
(3) 200 concurrent streams through the gateway against the slow upstream (~2 s each),
in rounds: streams lost (not ending in `data: [DONE]` with every content chunk) and
the service's resident memory (VmRSS) after each round.

Run: python -m benchmarks.gateway [--quick] [--requests N] [--stream-requests N]
     [--streams N] [--rounds R] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import numpy as np

from benchmarks.load import free_port, short_questions, tree_cpu_s

REPO = Path(__file__).resolve().parent.parent
SAMPLE_CONFIG = REPO / "deploy" / "banditroute.toml"
HOST = "127.0.0.1"
MODELS = {"small": (0.1, 0.2), "medium": (1.0, 2.0), "large": (5.0, 15.0)}
DIRECT_MODEL = "small"
JSON = {"content-type": "application/json"}
SLOW_MAX_CONNECTIONS = 256

# the targets, reported (not asserted)
TARGET_OVERHEAD_P50_MS = 1.5


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    url: str  # the server's root
    log: Path
    # uvicorn re-raises a SIGTERM after its shutdown (the process dies of it); a SIGINT
    # surfaces as KeyboardInterrupt instead, which lets cProfile write its file
    stop_signal: signal.Signals = signal.SIGTERM

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def problems(self) -> list[str]:
        """Its log's warning, error and traceback lines."""
        marks = ("WARNING", "ERROR", "CRITICAL", "Traceback")
        lines = self.log.read_text(errors="replace").splitlines()
        return [line for line in lines if any(m in line for m in marks)]

    def stop(self, timeout: float = 15.0) -> None:
        """`stop_signal` (uvicorn's graceful shutdown), SIGKILL of its group if slow."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own group: start_new_session
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


@dataclass
class Procs:
    """Every process this benchmark started, stopped in reverse order on exit."""

    tmp: Path
    started: list[Proc] = field(default_factory=list)
    problems: dict[str, list[str]] = field(default_factory=dict)  # of those stopped

    def start(self, name: str, argv: list[str], ready: str, timeout_s: float = 180.0) -> Proc:
        """Start `argv` and wait until GET `ready` (a path) answers 200."""
        path = self.tmp / f"{name}-{len(self.started)}.log"
        port = argv[argv.index("--port") + 1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BANDITROUTE_")}
        env["PYTHONUNBUFFERED"] = "1"
        with path.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us; we stop it in order
            )
        p = Proc(name, proc, f"http://{HOST}:{port}", path)
        self.started.append(p)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{p.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(p.url + ready, timeout=2).status_code == 200:
                    return p
            time.sleep(0.1)
        raise RuntimeError(f"{name} not ready after {timeout_s:.0f} s:\n{p.tail()}")

    def stop(self, p: Proc) -> None:
        p.stop()
        self.problems[p.name] = p.problems()
        if p in self.started:
            self.started.remove(p)

    def stop_all(self) -> None:
        for p in list(reversed(self.started)):
            self.stop(p)


def upstream(procs: Procs, name: str, *, chunk_ms: float, words: int) -> Proc:
    argv = [sys.executable, "-m", "simulator.upstream", "--host", HOST]
    argv += ["--port", str(free_port()), "--latency-ms", "0"]
    argv += ["--chunk-ms", f"{chunk_ms:g}", "--words", str(words)]
    return procs.start(name, argv, "/_health", timeout_s=30)


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic strings
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {v!r}")


def write_config(path: Path, state_dir: Path, upstream_url: str, max_connections: int) -> Path:
    """Three models on one upstream, the in-process store, and the shipped default
    policy (deploy/banditroute.toml's, hybrid)."""
    sample = tomllib.loads(SAMPLE_CONFIG.read_text())
    default = sample.get("default_policy", "default")
    policy = sample["policies"][default]
    lines = [
        f"state_dir = {_toml(str(state_dir))}",
        f"default_policy = {_toml(default)}",
        f"fallback_model = {_toml(DIRECT_MODEL)}",
        "",
    ]
    for name, (inp, out) in MODELS.items():
        lines += [
            "[[models]]",
            f"name = {_toml(name)}",
            f"input_per_m = {inp!r}",
            f"output_per_m = {out!r}",
            "[models.upstream]",
            f"base_url = {_toml(upstream_url + '/v1')}",
            f"max_connections = {max_connections}",
            "",
        ]
    lines.append(f"[policies.{json.dumps(default)}]")
    lines += [f"{json.dumps(k)} = {_toml(v)}" for k, v in policy.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def service(procs: Procs, name: str, config: Path, profile: Path | None) -> Proc:
    exe = str(Path(sys.executable).parent / "banditroute")
    argv = [exe]
    if profile is not None:  # cProfile writes its file when uvicorn returns (SIGTERM)
        argv = [sys.executable, "-m", "cProfile", "-o", str(profile), exe]
    argv += ["serve", "--config", str(config), "--host", HOST, "--port", str(free_port())]
    argv += ["--log-level", "warning"]
    p = procs.start(name, argv, "/readyz")
    if profile is not None:
        p.stop_signal = signal.SIGINT
    return p


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# ---------------------------------------------------------------- requests


def chat_body(model: str, question: str, stream: bool = False) -> bytes:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": question}]}
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


def warm_up(gateway: str, questions: Sequence[str], times: int = 2) -> None:
    """Route every question (so its embedding is cached), non-streaming."""
    with httpx.Client(base_url=gateway, timeout=60) as c:
        for _ in range(times):
            for q in questions:
                r = c.post("/v1/chat/completions", content=chat_body("auto", q), headers=JSON)
                r.raise_for_status()


def pct(a: Sequence[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(a, dtype=np.float64), q)) if len(a) else float("nan")


@dataclass
class Overhead:
    n: int
    direct_ms: list[float]
    gateway_ms: list[float]
    errors: Counter[str]
    models: Counter[str]
    # per gateway request (the service's whole CPU over the run, its idle learner too)
    service_cpu_ms: float
    wall_s: float

    @property
    def diff_ms(self) -> np.ndarray:
        return np.asarray(self.gateway_ms) - np.asarray(self.direct_ms)


def overhead(
    svc: Proc, up: Proc, questions: Sequence[str], n: int, warm: int, budget_s: float
) -> Overhead:
    """`n` pairs of one non-streaming request direct and one through the gateway."""
    direct_bodies = [chat_body(DIRECT_MODEL, q) for q in questions]
    gateway_bodies = [chat_body("auto", q) for q in questions]
    direct_ms: list[float] = []
    gateway_ms: list[float] = []
    errors: Counter[str] = Counter()
    models: Counter[str] = Counter()
    path = "/v1/chat/completions"
    with (
        httpx.Client(base_url=up.url, timeout=30) as dc,
        httpx.Client(base_url=svc.url, timeout=30) as gc,
    ):

        def direct(i: int) -> float | None:
            t0 = time.perf_counter()
            r = dc.post(path, content=direct_bodies[i % len(questions)], headers=JSON)
            t = (time.perf_counter() - t0) * 1e3
            if r.status_code != 200 or not r.json()["choices"][0]["message"]["content"]:
                errors[f"direct {r.status_code}"] += 1
                return None
            return t

        def gateway(i: int) -> float | None:
            t0 = time.perf_counter()
            r = gc.post(path, content=gateway_bodies[i % len(questions)], headers=JSON)
            t = (time.perf_counter() - t0) * 1e3
            if r.status_code != 200 or not r.json()["choices"][0]["message"]["content"]:
                errors[f"gateway {r.status_code}"] += 1
                return None
            models[r.headers.get("x-banditroute-model", "?")] += 1
            return t

        for i in range(warm):  # connections, caches, first-call paths
            direct(i)
            gateway(i)
        errors.clear()
        models.clear()
        cpu0, t0 = tree_cpu_s(svc.pid), time.monotonic()
        deadline = t0 + budget_s
        done = 0
        for i in range(n):
            if time.monotonic() > deadline:
                log(f"  overhead: time budget of {budget_s:.0f} s spent after {i} pairs")
                break
            # alternate which goes first, so neither always follows the other
            a, b = (direct, gateway) if i % 2 == 0 else (gateway, direct)
            ta, tb = a(i), b(i)
            done += 1
            if (i + 1) % 500 == 0:
                log(f"  overhead: {i + 1}/{n} pairs")
            if ta is None or tb is None:
                continue
            td, tg = (ta, tb) if a is direct else (tb, ta)
            direct_ms.append(td)
            gateway_ms.append(tg)
        wall = time.monotonic() - t0
        cpu = tree_cpu_s(svc.pid) - cpu0
    return Overhead(done, direct_ms, gateway_ms, errors, models, cpu / max(1, done) * 1e3, wall)


@dataclass
class StreamResult:
    ttft_ms: float | None  # to the first content chunk
    total_ms: float
    content_chunks: int
    done: bool  # ended with data: [DONE]
    meta: bool  # a chunk carried banditroute's metadata (the gateway's final chunk)
    error: str | None = None


def _chunk_info(payload: str) -> tuple[int, bool]:
    """(content deltas in the chunk, whether it carries banditroute's metadata)."""
    chunk = json.loads(payload)
    n = sum(1 for c in chunk.get("choices") or () if ((c or {}).get("delta") or {}).get("content"))
    return n, "banditroute" in chunk


def stream_sync(client: httpx.Client, body: bytes) -> StreamResult:
    t0 = time.perf_counter()
    ttft: float | None = None
    chunks, done, meta = 0, False, False
    try:
        with client.stream("POST", "/v1/chat/completions", content=body, headers=JSON) as r:
            if r.status_code != 200:
                r.read()
                return StreamResult(None, 0.0, 0, False, False, f"status {r.status_code}")
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    done = True
                    break
                n, m = _chunk_info(payload)
                if n and ttft is None:
                    ttft = (time.perf_counter() - t0) * 1e3
                chunks += n
                meta = meta or m
    except (httpx.HTTPError, ValueError) as exc:
        return StreamResult(ttft, 0.0, chunks, False, meta, type(exc).__name__)
    return StreamResult(ttft, (time.perf_counter() - t0) * 1e3, chunks, done, meta)


@dataclass
class Ttft:
    n: int
    direct_ms: list[float]
    gateway_ms: list[float]
    direct_total_ms: list[float]
    gateway_total_ms: list[float]
    errors: Counter[str]

    @property
    def diff_ms(self) -> np.ndarray:
        return np.asarray(self.gateway_ms) - np.asarray(self.direct_ms)

    @property
    def total_diff_ms(self) -> np.ndarray:
        return np.asarray(self.gateway_total_ms) - np.asarray(self.direct_total_ms)


def ttft(
    svc: Proc,
    up: Proc,
    questions: Sequence[str],
    n: int,
    words: int,
    warm: int,
    budget_s: float,
) -> Ttft:
    """`n` pairs of one streamed request direct and one through the gateway."""
    direct_bodies = [chat_body(DIRECT_MODEL, q, stream=True) for q in questions]
    gateway_bodies = [chat_body("auto", q, stream=True) for q in questions]
    out = Ttft(0, [], [], [], [], Counter())
    with (
        httpx.Client(base_url=up.url, timeout=30) as dc,
        httpx.Client(base_url=svc.url, timeout=30) as gc,
    ):

        def check(kind: str, r: StreamResult) -> bool:
            if r.error or not r.done or r.ttft_ms is None or r.content_chunks != words:
                out.errors[f"{kind} {r.error or 'incomplete'}"] += 1
                return False
            if kind == "gateway" and not r.meta:
                out.errors["gateway: no banditroute metadata"] += 1
            return True

        for i in range(warm):
            stream_sync(dc, direct_bodies[i % len(questions)])
            stream_sync(gc, gateway_bodies[i % len(questions)])
        deadline = time.monotonic() + budget_s
        for i in range(n):
            if time.monotonic() > deadline:
                log(f"  ttft: time budget of {budget_s:.0f} s spent after {i} pairs")
                break
            q = i % len(questions)
            if i % 2 == 0:
                d = stream_sync(dc, direct_bodies[q])
                g = stream_sync(gc, gateway_bodies[q])
            else:
                g = stream_sync(gc, gateway_bodies[q])
                d = stream_sync(dc, direct_bodies[q])
            out.n += 1
            if check("direct", d) & check("gateway", g):  # both checked, both counted
                assert d.ttft_ms is not None and g.ttft_ms is not None
                out.direct_ms.append(d.ttft_ms)
                out.gateway_ms.append(g.ttft_ms)
                out.direct_total_ms.append(d.total_ms)
                out.gateway_total_ms.append(g.total_ms)
            if (i + 1) % 100 == 0:
                log(f"  ttft: {i + 1}/{n} pairs")
    return out


@dataclass
class Round:
    streams: int
    complete: int
    lost: Counter[str]
    wall_s: float
    ttft_p50_ms: float
    duration_p50_ms: float
    duration_max_ms: float
    rss_mib: float
    upstream_completed: int
    upstream_disconnected: int


async def _one_stream(client: httpx.AsyncClient, body: bytes, words: int) -> StreamResult:
    t0 = time.perf_counter()
    ttft_ms: float | None = None
    chunks, done, meta = 0, False, False
    try:
        async with client.stream("POST", "/v1/chat/completions", content=body, headers=JSON) as r:
            if r.status_code != 200:
                await r.aread()
                return StreamResult(None, 0.0, 0, False, False, f"status {r.status_code}")
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    done = True
                    break
                n, m = _chunk_info(payload)
                if n and ttft_ms is None:
                    ttft_ms = (time.perf_counter() - t0) * 1e3
                chunks += n
                meta = meta or m
    except (httpx.HTTPError, ValueError) as exc:
        return StreamResult(ttft_ms, 0.0, chunks, False, meta, type(exc).__name__)
    total = (time.perf_counter() - t0) * 1e3
    error = None if done and chunks == words else f"{chunks}/{words} chunks, done={done}"
    return StreamResult(ttft_ms, total, chunks, done, meta, error)


async def _rounds(
    svc: Proc,
    slow: Proc,
    questions: Sequence[str],
    streams: int,
    rounds: int,
    words: int,
    round_timeout_s: float,
) -> tuple[float, list[Round]]:
    """The service's RSS before the first round, and the rounds."""
    limits = httpx.Limits(max_connections=streams + 16, max_keepalive_connections=streams + 16)
    timeout = httpx.Timeout(60.0, connect=30.0, pool=60.0)
    out: list[Round] = []
    before = rss_mib(svc.pid)
    async with (
        httpx.AsyncClient(base_url=svc.url, limits=limits, timeout=timeout) as client,
        httpx.AsyncClient(base_url=slow.url, timeout=30) as control,
    ):
        await control.delete("/_calls")
        for k in range(rounds):
            bodies = [
                chat_body("auto", questions[(k * streams + i) % len(questions)], True)
                for i in range(streams)
            ]
            t0 = time.monotonic()
            tasks = [asyncio.create_task(_one_stream(client, b, words)) for b in bodies]
            finished, pending = await asyncio.wait(tasks, timeout=round_timeout_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            wall = time.monotonic() - t0
            results = [t.result() for t in finished if not t.cancelled()]
            lost: Counter[str] = Counter(r.error for r in results if r.error)
            if pending:
                lost[f"cut at the round's {round_timeout_s:.0f} s limit"] += len(pending)
            missing_meta = sum(1 for r in results if not r.error and not r.meta)
            if missing_meta:
                lost["no banditroute metadata"] += missing_meta
            ok = [r for r in results if not r.error]
            await asyncio.sleep(0.5)  # let the service settle (costs, closes)
            rss = rss_mib(svc.pid)
            calls = (await control.get("/_calls")).json()
            await control.delete("/_calls")
            rnd = Round(
                streams=streams,
                complete=len(ok),
                lost=lost,
                wall_s=wall,
                ttft_p50_ms=pct([r.ttft_ms for r in ok if r.ttft_ms is not None], 50),
                duration_p50_ms=pct([r.total_ms for r in ok], 50),
                duration_max_ms=max((r.total_ms for r in ok), default=float("nan")),
                rss_mib=rss,
                upstream_completed=sum(1 for c in calls if c["completed"]),
                upstream_disconnected=sum(1 for c in calls if c["disconnected"]),
            )
            out.append(rnd)
            log(
                f"  round {k + 1}/{rounds}: {rnd.complete}/{streams} complete in {wall:.1f} s, "
                f"RSS {rss:.1f} MiB" + (f", lost {dict(lost)}" if lost else "")
            )
    return before, out


def concurrent_rounds(
    svc: Proc,
    slow: Proc,
    questions: Sequence[str],
    streams: int,
    rounds: int,
    words: int,
    round_timeout_s: float,
) -> tuple[float, list[Round]]:
    run: Callable[..., tuple[float, list[Round]]] = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop  # the client shares 2 cores with the servers: the faster loop

        run = uvloop.run
    return run(_rounds(svc, slow, questions, streams, rounds, words, round_timeout_s))


# ---------------------------------------------------------------- report


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0))
    return f"{cores} cores (nproc), {model}, Python {platform.python_version()}"


def ms(v: float) -> str:
    return f"{v:.2f}"


def report(
    args: argparse.Namespace,
    oh: Overhead | None,
    tt: Ttft | None,
    rounds: list[Round],
    rss_before: float,
    problems: dict[str, list[str]],
) -> str:
    rows: list[tuple[str, str]] = []
    if oh is not None:
        n = len(oh.diff_ms)
        d, g, diff = oh.direct_ms, oh.gateway_ms, oh.diff_ms
        rows += [
            (
                f"non-streaming, direct to upstream p50 / p99 (N={n})",
                f"{ms(pct(d, 50))} / {ms(pct(d, 99))} ms",
            ),
            (
                f"non-streaming, through gateway p50 / p99 (N={n})",
                f"{ms(pct(g, 50))} / {ms(pct(g, 99))} ms",
            ),
            (
                "**gateway overhead (paired gateway − direct) p50 / p99**",
                f"**{ms(pct(diff, 50))} / {ms(pct(diff, 99))} ms**",
            ),
            ("ratio gateway / direct (p50)", f"{pct(g, 50) / pct(d, 50):.2f}"),
            ("service CPU per gateway request", f"{oh.service_cpu_ms:.2f} ms"),
            ("models chosen (auto)", ", ".join(f"{m} {c}" for m, c in oh.models.most_common())),
            ("errors (overhead run)", _errors(oh.errors)),
        ]
    if tt is not None:
        n = len(tt.diff_ms)
        rows += [
            (
                f"TTFT, direct p50 / p99 (N={n}, chunk {args.chunk_ms:g} ms, "
                f"{args.stream_words} words)",
                f"{ms(pct(tt.direct_ms, 50))} / {ms(pct(tt.direct_ms, 99))} ms",
            ),
            (
                "TTFT, through gateway p50 / p99",
                f"{ms(pct(tt.gateway_ms, 50))} / {ms(pct(tt.gateway_ms, 99))} ms",
            ),
            (
                "**TTFT added by the gateway (paired) p50 / p99**",
                f"**{ms(pct(tt.diff_ms, 50))} / {ms(pct(tt.diff_ms, 99))} ms**",
            ),
            (
                "whole stream added by the gateway (paired) p50",
                f"{ms(pct(tt.total_diff_ms, 50))} ms (direct p50 "
                f"{ms(pct(tt.direct_total_ms, 50))} ms)",
            ),
            ("errors (TTFT run)", _errors(tt.errors)),
        ]
    if rounds:
        s = rounds[0].streams
        lost = sum(r.streams - r.complete for r in rounds)
        rss = f"before {rss_before:.0f}; " + " → ".join(f"{r.rss_mib:.0f}" for r in rounds)
        rows.append(
            (
                f"{s} concurrent streams × {len(rounds)} rounds (chunk {args.slow_chunk_ms:g} ms, "
                f"{args.slow_words} words): **lost streams**",
                f"**{lost}** of {s * len(rounds)}",
            )
        )
        if len(rounds) >= 3:
            growth = (rounds[-1].rss_mib - rounds[1].rss_mib) / rounds[1].rss_mib * 100
            rows.append(
                ("service RSS after each round (MiB)", f"{rss}; round 2 → last **{growth:+.1f}%**")
            )
        else:
            rows.append(("service RSS after each round (MiB)", rss))
        rows += [
            ("round wall time (s)", ", ".join(f"{r.wall_s:.1f}" for r in rounds)),
            (
                "stream duration p50 / max, last round",
                f"{rounds[-1].duration_p50_ms / 1e3:.2f} / {rounds[-1].duration_max_ms / 1e3:.2f} s"
                f" (upstream alone: {(args.slow_words + 1) * args.slow_chunk_ms / 1e3:.2f} s)",
            ),
            (
                f"TTFT p50 per round (ms; upstream alone: {args.slow_chunk_ms:g})",
                ", ".join(f"{r.ttft_p50_ms:.0f}" for r in rounds),
            ),
            (
                "upstream calls completed / disconnected (all rounds)",
                f"{sum(r.upstream_completed for r in rounds)} / "
                f"{sum(r.upstream_disconnected for r in rounds)}",
            ),
        ]
        losses = sum((r.lost for r in rounds), Counter[str]())
        if losses:
            rows.append(("stream problems, by reason", _errors(losses)))
    for name, found in problems.items():
        if name.startswith("banditroute"):
            first = f" (first: `{found[0][:120]}`)" if found else ""
            rows.append((f"{name} log: warning / error lines", f"{len(found)}{first}"))
    lines = [
        f"### Gateway vs direct upstream: `python -m benchmarks.gateway"
        f"{' --quick' if args.quick else ''}`",
        "",
        f"Machine: {machine()}; loopback; 1 uvicorn worker, in-process store, "
        f"hybrid default policy, 3 models.",
        "",
        "| figure | value |",
        "| --- | --- |",
    ]
    lines += [f"| {a} | {b} |" for a, b in rows]
    if oh is not None and len(oh.diff_ms):
        p50 = pct(oh.diff_ms, 50)
        met = "met" if p50 <= TARGET_OVERHEAD_P50_MS else "MISSED"
        lines += ["", f"{met}: gateway overhead p50 ≤ {TARGET_OVERHEAD_P50_MS:g} ms ({ms(p50)} ms)"]
    if args.profile:
        lines += ["", f"(the service ran under cProfile: {args.profile}; figures inflated)"]
    return "\n".join(lines)


def _errors(c: Counter[str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in c.most_common()) or "0"


# ---------------------------------------------------------------- main


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM (and SIGHUP) unwind like Ctrl-C, so every child is stopped; SIGINT
    raises KeyboardInterrupt even where the shell started us with it ignored."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gateway",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a short run (~1 minute)")
    parser.add_argument("--requests", type=int, default=None, help="non-streaming pairs (2000)")
    parser.add_argument("--stream-requests", type=int, default=None, help="TTFT pairs (500)")
    parser.add_argument("--streams", type=int, default=200, help="concurrent streams a round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of streams (5)")
    parser.add_argument("--questions", type=int, default=50, help="distinct cached questions")
    parser.add_argument("--words", type=int, default=12, help="words of a non-streamed answer")
    parser.add_argument("--chunk-ms", type=float, default=5.0, help="TTFT run: ms a chunk")
    parser.add_argument("--stream-words", type=int, default=20, help="TTFT run: words")
    parser.add_argument("--slow-chunk-ms", type=float, default=50.0, help="streams: ms a chunk")
    parser.add_argument("--slow-words", type=int, default=40, help="streams: words")
    parser.add_argument(
        "--scenarios", default="overhead,ttft,streams", help="comma-separated subset"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="run the fast-upstream service under cProfile, writing its stats here",
    )
    args = parser.parse_args(argv)
    scenarios = set(args.scenarios.split(","))
    if not scenarios <= {"overhead", "ttft", "streams"}:
        parser.error(f"--scenarios: unknown {sorted(scenarios - {'overhead', 'ttft', 'streams'})}")
    n = args.requests if args.requests is not None else (300 if args.quick else 2000)
    n_stream = (
        args.stream_requests if args.stream_requests is not None else (100 if args.quick else 500)
    )
    rounds = args.rounds if args.rounds is not None else (3 if args.quick else 5)
    warm = 50 if args.quick else 200
    questions = short_questions(args.questions, seed=7)

    oh: Overhead | None = None
    tt: Ttft | None = None
    rs: list[Round] = []
    rss_before = float("nan")
    with _terminate_as_exit(), tempfile.TemporaryDirectory(prefix="brgw-") as d:
        tmp = Path(d)
        procs = Procs(tmp)
        try:
            if scenarios & {"overhead", "ttft"}:
                log("starting the fast upstream and banditroute on it ...")
                fast = upstream(procs, "upstream-fast", chunk_ms=args.chunk_ms, words=args.words)
                cfg = write_config(tmp / "fast.toml", tmp / "state-fast", fast.url, 100)
                svc = service(procs, "banditroute-fast", cfg, args.profile)
                warm_up(svc.url, questions)
                if "overhead" in scenarios:
                    log(f"(1) overhead: {n} pairs, non-streaming ...")
                    oh = overhead(svc, fast, questions, n, warm, budget_s=300)
                if "ttft" in scenarios:
                    httpx.post(f"{fast.url}/_config", json={"words": args.stream_words})
                    httpx.delete(f"{fast.url}/_calls")
                    log(f"(2) time to first token: {n_stream} pairs, streaming ...")
                    tt = ttft(svc, fast, questions, n_stream, args.stream_words, warm // 4, 300)
                procs.stop(svc)
                procs.stop(fast)
            if "streams" in scenarios:
                log("starting the slow upstream and banditroute on it ...")
                slow = upstream(
                    procs, "upstream-slow", chunk_ms=args.slow_chunk_ms, words=args.slow_words
                )
                cfg = write_config(
                    tmp / "slow.toml", tmp / "state-slow", slow.url, SLOW_MAX_CONNECTIONS
                )
                svc = service(procs, "banditroute-slow", cfg, None)
                warm_up(svc.url, questions, times=1)
                log(f"(3) {args.streams} concurrent streams x {rounds} rounds ...")
                rss_before, rs = concurrent_rounds(
                    svc, slow, questions, args.streams, rounds, args.slow_words, 180
                )
        except KeyboardInterrupt:
            log("interrupted: stopping every process started")
            procs.stop_all()
            raise SystemExit(130) from None
        except BaseException:
            for p in procs.started:
                log(f"----- {p.name} log, last lines -----\n{p.tail()}")
            raise
        finally:
            procs.stop_all()
    print(report(args, oh, tt, rs, rss_before, procs.problems))


if __name__ == "__main__":
    main()
