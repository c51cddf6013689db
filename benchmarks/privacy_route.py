"""What sensitive-data detection adds to a route: `POST /v1/route` of 500-character
queries against two real `banditroute serve` processes, identical but for the
privacy rules (off; on, with every entity type detected), one request at a time,
interleaved so noise hits both alike. The figure is the paired difference on cached
queries (the embedding is a cache hit), half of them carrying an identifier.

    python -m benchmarks.privacy_route [--requests 2000]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks.gateway import HOST, JSON, Procs, machine, service
from service.privacy.synthetic import generate

TARGET_P50_MS = 0.2


def write_config(path: Path, state: Path, privacy: bool) -> Path:
    lines = [f'state_dir = "{state}"', 'fallback_model = "local"', ""]
    for name, tag, price in (
        ("local", "local", 0.1),
        ("cloud-a", "cloud", 1.0),
        ("cloud-b", "cloud", 5.0),
    ):
        lines += [
            "[[models]]",
            f'name = "{name}"',
            f"input_per_m = {price}",
            f"output_per_m = {price * 2}",
            f'tags = ["{tag}"]',
            "",
        ]
    if privacy:
        lines += [
            "[privacy]",
            "enabled = true",
            "[[privacy.rules]]",
            'entities = ["*"]',
            'allow_tags = ["local"]',
            "",
        ]
    path.write_text("\n".join(lines))
    return path


def queries(n: int, seed: int = 0) -> list[str]:
    """500-character texts, half with an identifier (from the labelled generator)."""
    rng = random.Random(seed)
    out: list[str] = []
    for item in generate(4 * n, seed):
        text = item.text
        if bool(item.spans) != (len(out) % 2 == 0):
            continue
        while len(text) < 500:
            text += " " + rng.choice(["Thanks.", "Regards.", "See below.", "Please advise."])
        out.append(text[:500])
        if len(out) == n:
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=50)
    args = ap.parse_args()
    qs = queries(args.queries)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        procs = Procs(t)
        try:
            off = service(procs, "off", write_config(t / "off.toml", t / "s-off", False), None)
            on = service(procs, "on", write_config(t / "on.toml", t / "s-on", True), None)
            a = httpx.Client(base_url=off.url, timeout=30)
            b = httpx.Client(base_url=on.url, timeout=30)
            bodies = [json.dumps({"query": q}).encode() for q in qs]
            for c in (a, b):  # every embedding a cache hit from here on
                for body in bodies:
                    c.post("/v1/route", content=body, headers=JSON).raise_for_status()
            t_off: list[float] = []
            t_on: list[float] = []
            for i in range(args.requests):
                body = bodies[i % len(bodies)]
                order = ((a, t_off), (b, t_on)) if i % 2 else ((b, t_on), (a, t_off))
                for client, sink in order:
                    start = time.perf_counter()
                    r = client.post("/v1/route", content=body, headers=JSON)
                    sink.append((time.perf_counter() - start) * 1000)
                    r.raise_for_status()
                if i % 500 == 0:
                    print(f"  {i}/{args.requests}", flush=True, file=sys.stderr)
            d = np.asarray(t_on) - np.asarray(t_off)
            print("### Detection on the route: `python -m benchmarks.privacy_route`\n")
            print(f"Machine: {machine()}; {HOST}; 1 uvicorn worker each, in-process store.\n")
            print("| figure | value |\n| --- | --- |")
            print(
                f"| route p50, privacy off / on (N={args.requests}) | "
                f"{np.percentile(t_off, 50):.3f} / {np.percentile(t_on, 50):.3f} ms |"
            )
            print(
                f"| **added by detection (paired) p50 / p99** | "
                f"**{np.percentile(d, 50):.3f} / {np.percentile(d, 99):.3f} ms** |"
            )
            ratio = np.percentile(t_on, 50) / np.percentile(t_off, 50)
            print(f"| ratio on / off (p50) | {ratio:.3f} |")
            verdict = "met" if np.percentile(d, 50) <= TARGET_P50_MS else "MISSED"
            goal = f"detection adds ≤ {TARGET_P50_MS} ms p50 to a route of a 500-character query"
            print(f"\n{verdict}: {goal}")
            a.close()
            b.close()
        finally:
            procs.stop_all()


if __name__ == "__main__":
    main()
