"""Embedding milliseconds per query at batch 1 and batch 32 (cache disabled: every
text is new), with the real all-MiniLM-L6-v2 on this machine's CPU.

Run: python -m benchmarks.embedder [--queries N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from service.embedder import Embedder

_TOPICS = [
    "tax law",
    "a python error",
    "the French revolution",
    "protein folding",
    "a cooking recipe",
    "quarterly sales figures",
    "a poem about rain",
    "GPU drivers",
]


def queries(n: int, seed: int = 0) -> list[str]:
    """Distinct realistic-length questions (20-60 words)."""
    rng = np.random.default_rng(seed)
    words = "what why how explain compare summarise the a of in for with given between".split()
    out = []
    for i in range(n):
        topic = _TOPICS[i % len(_TOPICS)]
        filler = " ".join(rng.choice(words, size=int(rng.integers(20, 60))))
        out.append(f"Question {i} about {topic}: {filler}?")
    return out


def per_query_ms(embedder: Embedder, texts: list[str], batch: int) -> float:
    """Median over batches of (batch wall time / batch size), in milliseconds."""
    times = []
    for s in range(0, len(texts) - batch + 1, batch):
        chunk = texts[s : s + batch]
        t0 = time.perf_counter()
        embedder.embed(chunk)
        times.append((time.perf_counter() - t0) / len(chunk) * 1e3)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=640)
    args = parser.parse_args()
    embedder = Embedder(cache_size=0).load()
    embedder.embed(queries(64, seed=99))  # warm-up: first calls allocate
    texts = queries(args.queries)
    table = Table(title="embedding latency, all-MiniLM-L6-v2, CPU (ms per query)")
    table.add_column("batch", justify="right")
    table.add_column("ms / query", justify="right")
    for batch in (1, 32):
        table.add_row(str(batch), f"{per_query_ms(embedder, texts, batch):.2f}")
    cached = Embedder(cache_size=1000).load()
    cached.embed(texts[:32])
    t0 = time.perf_counter()
    for t in texts[:32]:
        cached.embed([t])
    table.add_row("1 (cache hit)", f"{(time.perf_counter() - t0) / 32 * 1e3:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
