"""The hard cap under load: 200 concurrent chat completions through two service
workers on one Redis never spend more than the cap plus one request's cost.

Processes, all real: three scripted upstreams (`python -m simulator.upstream`), one a
catalogue model, each at its own price and latency; and `banditroute serve` started
twice, on two ports, with one config (the same Redis and key prefix): two workers
sharing one ledger. The router is a weighted random one (small 0.4, medium 0.35,
large 0.25): the claim is the gate's and the ledger's, whatever the policy chooses.

Every round is a fresh tenant (a fresh budget window), made through the admin API of
worker A and waited for on worker B; then `--requests` chat completions (`model:
"auto"`, `max_tokens`, the tenant in `x-banditroute-tenant`) are released together,
alternately to the two workers (each question embedded on its worker beforehand and
the connections open, so that the requests reach the gate together). Each upstream
answers with a scripted step per call:
a completion of 1..max_tokens words (one token a word, drawn per call) after a drawn
delay, so the actual costs differ from the gate's estimates (prompt + max_tokens) yet
stay within them, and calls overlap so that reservations race settlements.

Round 0 has a cap no burst can reach: its settled spend is the demand. The capped
rounds then allow a fraction of it (default 20%, 50%, 100%). Per round: the cap, the
settled spend (GET /v1/tenants/{name}, the ledger), overshoot = max(0, spent - cap),
the largest single request's cost, the goal (overshoot <= that cost), the 200s and
429s, the model mix, and p50/p99 latency of the 200s and of the 429s. Checks beside
it: the ledger's spend equals the sum of the costs the clients were told
(x-banditroute-cost-usd), nothing is left reserved, every 429 is the budget's with a
Retry-After. The exit status is 1 if the goal or a check fails in any round.

`--unbounded` sends no `max_tokens` (the upstream still answers up to --max-tokens):
the gate then estimates with the catalogue's expected output (256 tokens), which a
call may exceed, so the cap holds only as far as the estimates do.

Run: python -m benchmarks.budget_cap [--quick] [--requests N] [--fractions 0.2,0.5,1]
     [--max-tokens N] [--unbounded] [--seed S] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis

from benchmarks.gateway import Proc, Procs, _toml, machine, pct, service, upstream
from benchmarks.load import clean_redis, short_questions, tree_cpu_s
from service.store.base import DEFAULT_OUTPUT_TOKENS

# catalogue name -> (USD per 1M input tokens, per 1M output tokens)
MODELS = {"small": (0.15, 0.6), "medium": (1.0, 4.0), "large": (5.0, 15.0)}
WEIGHTS = {"small": 0.4, "medium": 0.35, "large": 0.25}
# each upstream's answer delay, drawn uniformly per call (ms)
DELAY_MS = {"small": (20.0, 120.0), "medium": (50.0, 250.0), "large": (100.0, 500.0)}
UNCAPPED_USD = 1e6
# the longest window a cap takes (aligned to the epoch): no round straddles two
WINDOW_S = 366 * 86400.0
RESERVATION_TTL_S = 300.0
TENANT_HEADER = "x-banditroute-tenant"
TOL_USD = 1e-9  # the ledger's own slack (service.budgets.ledger.EPS_USD)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- set-up


def write_config(
    path: Path, state_dir: Path, ups: dict[str, Proc], redis_url: str, prefix: str
) -> Path:
    """Three models, each on its own upstream; Redis under `prefix`; the weighted
    random router; no tenants (each round's is made through the admin API)."""
    lines = [
        f"state_dir = {_toml(str(state_dir))}",
        f"redis_url = {_toml(redis_url)}",
        f"key_prefix = {_toml(prefix)}",
        'default_policy = "default"',
        'fallback_model = "small"',
        "",
    ]
    for name, (inp, out) in MODELS.items():
        lines += [
            "[[models]]",
            f"name = {_toml(name)}",
            f"input_per_m = {inp!r}",
            f"output_per_m = {out!r}",
            "[models.upstream]",
            f"base_url = {_toml(ups[name].url + '/v1')}",
            f"model = {_toml(name + '-up')}",
            "max_connections = 256",
            "",
        ]
    lines += [
        "[policies.default]",
        'kind = "random"',
        f"params = {_toml({'weights': WEIGHTS})}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def script_upstreams(
    ups: dict[str, Proc], n: int, max_tokens: int, rng: np.random.Generator
) -> None:
    """`n` steps on each upstream (enough should every call go to one model): a
    completion of 1..max_tokens words after a drawn delay; earlier steps dropped."""
    for name, up in ups.items():
        lo, hi = DELAY_MS[name]
        steps = [
            {"words": int(rng.integers(1, max_tokens + 1)), "delay_ms": float(rng.uniform(lo, hi))}
            for _ in range(n)
        ]
        with httpx.Client(base_url=up.url, timeout=10) as c:
            c.delete("/_script").raise_for_status()
            c.delete("/_calls").raise_for_status()
            c.post("/_script", json=steps).raise_for_status()


def make_tenant(workers: Sequence[Proc], name: str, cap_usd: float) -> dict[str, Any]:
    """Create the tenant through worker A's admin API; wait until every worker serves
    it (each re-reads the store's tenants every second). Its window's state."""
    cap = {"usd": cap_usd, "window": WINDOW_S, "reservation_ttl_s": RESERVATION_TTL_S}
    r = httpx.put(f"{workers[0].url}/v1/tenants/{name}", json={"cap": cap}, timeout=10)
    r.raise_for_status()
    deadline = time.monotonic() + 15
    for w in workers:
        while True:
            got = httpx.get(f"{w.url}/v1/tenants/{name}", timeout=10)
            if got.status_code == 200 and (got.json()["cap"] or {}).get("usd") == cap_usd:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{w.name} never saw tenant {name}: {got.status_code} {got.text}"
                )
            time.sleep(0.1)
    return tenant_cap(workers[0], name)


def tenant_cap(worker: Proc, name: str) -> dict[str, Any]:
    r = httpx.get(f"{worker.url}/v1/tenants/{name}", timeout=10)
    r.raise_for_status()
    return dict(r.json()["cap"])


def warm_up(workers: Sequence[Proc], questions: Sequence[str]) -> None:
    """A few untenanted requests on each worker: connections, first-call paths."""
    for w in workers:
        with httpx.Client(base_url=w.url, timeout=60) as c:
            for q in questions:
                body = {"model": "auto", "messages": [{"role": "user", "content": q}]}
                c.post("/v1/chat/completions", json=body).raise_for_status()


# ---------------------------------------------------------------- a burst


@dataclass(frozen=True)
class Answer:
    worker: int
    status: int
    ms: float
    model: str | None = None
    cost: float | None = None  # USD, the gateway's x-banditroute-cost-usd
    retry_after: str | None = None
    budget: bool = False  # a 429 whose detail is the cap's
    error: str | None = None


async def burst(
    urls: Sequence[str],
    pids: Sequence[int],
    tenant: str,
    questions: Sequence[str],
    max_tokens: int | None,
) -> tuple[list[Answer], float, float]:
    """One request a question, all released at once, alternately to each worker (its
    embedding cached there beforehand, by an untenanted /v1/route). The answers, and
    the wall and the workers' CPU seconds from the release to the last answer."""
    n = len(questions)
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    clients = [httpx.AsyncClient(base_url=u, limits=limits, timeout=120) for u in urls]
    go = asyncio.Event()

    async def one(i: int, q: str) -> Answer:
        w = i % len(clients)
        body: dict[str, Any] = {"model": "auto", "messages": [{"role": "user", "content": q}]}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        await go.wait()
        t0 = time.perf_counter()
        try:
            r = await clients[w].post(
                "/v1/chat/completions", json=body, headers={TENANT_HEADER: tenant}
            )
        except httpx.HTTPError as exc:
            return Answer(w, 0, (time.perf_counter() - t0) * 1e3, error=repr(exc))
        ms = (time.perf_counter() - t0) * 1e3
        if r.status_code == 200:
            cost = r.headers.get("x-banditroute-cost-usd")
            return Answer(
                w,
                200,
                ms,
                model=r.headers.get("x-banditroute-model"),
                cost=None if cost is None else float(cost),
            )
        detail = r.text[:300]
        return Answer(
            w,
            r.status_code,
            ms,
            retry_after=r.headers.get("retry-after"),
            budget=r.status_code == 429 and "budget" in detail,
            error=detail,
        )

    async def warm(i: int, q: str) -> None:
        r = await clients[i % len(clients)].post("/v1/route", json={"query": q})
        r.raise_for_status()

    try:
        # each worker embeds its questions beforehand and the clients open their
        # connections, so the burst reaches the gate together: the harshest race
        await asyncio.gather(*(warm(i, q) for i, q in enumerate(questions)))
        tasks = [asyncio.create_task(one(i, q)) for i, q in enumerate(questions)]
        await asyncio.sleep(0.05)  # every task waits at the gate
        cpu0, t0 = sum(tree_cpu_s(p) for p in pids), time.perf_counter()
        go.set()
        answers = list(await asyncio.gather(*tasks))
        wall = time.perf_counter() - t0
        return answers, wall, sum(tree_cpu_s(p) for p in pids) - cpu0
    finally:
        for c in clients:
            await c.aclose()


# ---------------------------------------------------------------- a round


@dataclass
class Round:
    label: str
    tenant: str
    cap: float
    answers: list[Answer]
    after: list[dict[str, Any]]  # the tenant's cap state read from each worker
    window_before: float
    wall_s: float  # from the release to the last answer
    cpu_s: float  # both workers' CPU over that time
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def spent(self) -> float:
        return float(self.after[0]["spent_usd"])

    @property
    def overshoot(self) -> float:
        return max(0.0, self.spent - self.cap)

    @property
    def ok(self) -> list[Answer]:
        return [a for a in self.answers if a.status == 200]

    @property
    def refused(self) -> list[Answer]:
        return [a for a in self.answers if a.status == 429]

    @property
    def max_cost(self) -> float:
        return max((a.cost or 0.0 for a in self.ok), default=0.0)

    @property
    def client_sum(self) -> float:
        return sum(a.cost or 0.0 for a in self.ok)

    @property
    def goal(self) -> bool:
        return self.overshoot <= self.max_cost + TOL_USD

    def check(self) -> None:
        others = [a for a in self.answers if a.status not in (200, 429)]
        self.checks = {
            "only 200s and 429s": not others,
            "every 200 priced": all(a.cost is not None and a.model for a in self.ok),
            "every 429 the cap's, with Retry-After": all(
                a.budget and a.retry_after is not None and int(a.retry_after) >= 1
                for a in self.refused
            ),
            "ledger spend = sum of the clients' costs": abs(self.spent - self.client_sum)
            <= TOL_USD + 1e-9 * self.spent,
            "both workers read the same spend": all(
                abs(float(s["spent_usd"]) - self.spent) <= TOL_USD for s in self.after
            ),
            "nothing left reserved": all(
                s["open_reservations"] == 0 and abs(float(s["reserved_usd"])) <= TOL_USD
                for s in self.after
            ),
            "one budget window": all(s["window_start"] == self.window_before for s in self.after),
        }


def run_round(
    label: str,
    tenant: str,
    workers: Sequence[Proc],
    ups: dict[str, Proc],
    cap: float,
    questions: Sequence[str],
    max_tokens: int,
    bounded: bool,
    rng: np.random.Generator,
) -> Round:
    before = make_tenant(workers, tenant, cap)
    script_upstreams(ups, len(questions), max_tokens, rng)
    urls, pids = [w.url for w in workers], [w.pid for w in workers]
    answers, wall, cpu = asyncio.run(
        burst(urls, pids, tenant, questions, max_tokens if bounded else None)
    )
    after = [tenant_cap(w, tenant) for w in workers]
    r = Round(label, tenant, cap, answers, after, float(before["window_start"]), wall, cpu)
    r.check()
    return r


# ---------------------------------------------------------------- report


def _ms(xs: Sequence[float]) -> str:
    if not xs:
        return "-"
    return f"{pct(xs, 50):.0f} / {pct(xs, 99):.0f}"


def table(rounds: Sequence[Round], demand: float) -> str:
    head = (
        "round",
        "cap USD",
        "spent USD",
        "used",
        "overshoot",
        "max req USD",
        "goal",
        "200",
        "429",
        "mix s/m/l",
        "200 p50/p99 ms",
        "429 p50/p99 ms",
    )
    rows = [head]
    for r in rounds:
        mix = Counter(a.model for a in r.ok)
        capped = r.cap < UNCAPPED_USD
        rows.append(
            (
                r.label if capped else f"{r.label} (demand)",
                f"{r.cap:.6f}" if capped else "uncapped",
                f"{r.spent:.6f}",
                f"{r.spent / r.cap:.1%}" if capped else "-",
                f"{r.overshoot:.6f}",
                f"{r.max_cost:.6f}",
                ("met" if r.goal else "MISSED") if capped else "-",
                str(len(r.ok)),
                str(len(r.refused)),
                "/".join(str(mix.get(m, 0)) for m in MODELS),
                _ms([a.ms for a in r.ok]),
                _ms([a.ms for a in r.refused]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if demand > 0:
        lines.append(f"demand (round 0's settled spend): {demand:.6f} USD")
    return "\n".join(lines)


def estimates(questions: Sequence[str], output_tokens: int) -> dict[str, float]:
    """The gate's largest estimate a model (USD): its longest prompt + the output."""
    tokens = max(max(1, len(q) // 4) for q in questions)
    return {m: (tokens * i + output_tokens * o) / 1e6 for m, (i, o) in MODELS.items()}


# ---------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 requests, caps 20%% and 100%%")
    parser.add_argument("--requests", type=int, default=None, help="concurrent requests a round")
    parser.add_argument("--fractions", default=None, help="caps as fractions of the demand")
    parser.add_argument("--max-tokens", type=int, default=400)
    parser.add_argument(
        "--unbounded", action="store_true", help="send no max_tokens (estimates may fall short)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    n = args.requests or (50 if args.quick else 200)
    fractions = [
        float(f)
        for f in (args.fractions or ("0.2,1.0" if args.quick else "0.2,0.5,1.0")).split(",")
    ]
    with redis.Redis.from_url(args.redis_url, socket_timeout=2) as r:
        r.ping()
    rng = np.random.default_rng(args.seed)
    run_id = uuid.uuid4().hex[:8]
    prefix = f"brbench-cap-{run_id}"
    pool = short_questions(n * (len(fractions) + 1) + 10, args.seed)
    warm, pool = pool[:5], pool[5:]
    rounds: list[Round] = []
    used: list[str] = []
    with tempfile.TemporaryDirectory(prefix="budget-cap-") as d:
        tmp = Path(d)
        procs = Procs(tmp)
        try:
            ups = {m: upstream(procs, f"upstream-{m}", chunk_ms=0.0, words=12) for m in MODELS}
            config = write_config(
                tmp / "banditroute.toml", tmp / "state", ups, args.redis_url, prefix
            )
            log("starting two service workers (each loads the embedding model)")
            workers = [service(procs, f"worker-{w}", config, None) for w in ("a", "b")]
            warm_up(workers, warm)
            for k, frac in enumerate([0.0, *fractions]):
                qs, pool = pool[:n], pool[n:]
                used += qs
                # round 0 is uncapped: its settled spend is the demand the caps divide
                cap = UNCAPPED_USD if k == 0 else round(frac * rounds[0].spent, 9)
                label = "r0" if k == 0 else f"r{k} {frac:.0%}"
                log(f"round {label}: cap {cap:.6f} USD, {n} concurrent requests")
                tenant = f"capbench-{run_id}-r{k}"
                rounds.append(
                    run_round(
                        label,
                        tenant,
                        workers,
                        ups,
                        cap,
                        qs,
                        args.max_tokens,
                        not args.unbounded,
                        rng,
                    )
                )
        finally:
            procs.stop_all()
            removed = clean_redis(args.redis_url, prefix)
            log(f"removed {removed} Redis keys under {prefix}")
    demand = rounds[0].spent
    # unbounded: the gate's estimate is the catalogue's expected output (its default)
    est = estimates(used, DEFAULT_OUTPUT_TOKENS if args.unbounded else args.max_tokens)
    print(f"machine: {machine()}")
    print(
        f"2 service workers (2 processes, ports {workers[0].url.rsplit(':', 1)[1]} and "
        f"{workers[1].url.rsplit(':', 1)[1]}) on Redis {args.redis_url}, 3 upstream processes; "
        f"{n} concurrent chat completions a round, "
        + (
            f"no max_tokens sent (answers of 1..{args.max_tokens} tokens)"
            if args.unbounded
            else f"max_tokens {args.max_tokens} (answers of 1..{args.max_tokens} tokens)"
        )
        + f", seed {args.seed}; load average {os.getloadavg()[0]:.1f} at the end"
    )
    print(
        "prices USD/1M in/out: "
        + ", ".join(f"{m} {i:g}/{o:g}" for m, (i, o) in MODELS.items())
        + "; largest estimate a request: "
        + ", ".join(f"{m} {v:.6f}" for m, v in est.items())
    )
    print()
    print(table(rounds, demand))
    print()
    failed = False
    for r in rounds:
        bad = [name for name, ok in r.checks.items() if not ok]
        capped = r.cap < UNCAPPED_USD
        if bad or (capped and not r.goal):
            failed = True
        others = Counter(a.status for a in r.answers if a.status not in (200, 429))
        note = f" other statuses {dict(others)}" if others else ""
        print(
            f"{r.label}: {len(r.checks) - len(bad)}/{len(r.checks)} checks hold"
            + (f"; FAILED: {', '.join(bad)}" if bad else "")
            + f"; burst {r.wall_s:.1f} s wall, workers' CPU {r.cpu_s * 1e3 / len(r.answers):.1f}"
            + f" ms a request{note}"
        )
        for a in [a for a in r.answers if a.status not in (200, 429)][:3]:
            print(f"    e.g. {a.status}: {a.error}")
    for name, lines in procs.problems.items():
        if lines:
            print(f"{name}: {len(lines)} warning/error line(s), e.g. {lines[0][:200]}")
    goal = all(r.goal for r in rounds if r.cap < UNCAPPED_USD)
    print(
        "goal (a hard cap is never exceeded by more than one request's cost, "
        f"{n} concurrent requests across 2 workers): {'met' if goal else 'MISSED'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
