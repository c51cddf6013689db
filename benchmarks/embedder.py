"""Embedding milliseconds per query at batch 1 and batch 32 (cache off: every text is
new), with the real all-MiniLM-L6-v2 on this machine's CPU, for three query sets:
short questions, medium (~55 word pieces) questions, and real prompts from the shared
llmrouter set (after question extraction).

Run: python -m benchmarks.embedder [--queries N] [--data PATH]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
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
_WORDS = "what why how explain compare summarise the a of in for with given between".split()


def short_queries(n: int) -> list[str]:
    return [f"How do I reset the password of account number {i} on the website?" for i in range(n)]


def medium_queries(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        filler = " ".join(rng.choice(_WORDS, size=int(rng.integers(30, 50))))
        out.append(f"Question {i} about {_TOPICS[i % len(_TOPICS)]}: {filler}?")
    return out


def real_queries(n: int, path: Path) -> list[str]:
    df = pd.read_parquet(path, columns=["prompt"])
    return list(df["prompt"].sample(n, random_state=0, replace=len(df) < n))


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
    parser.add_argument("--queries", type=int, default=320)
    parser.add_argument(
        "--data", type=Path, default=Path("data/llmrouter_14tasks.parquet")
    )
    args = parser.parse_args()
    embedder = Embedder(cache_size=0).load()
    embedder.embed(medium_queries(64, seed=99))  # warm-up: first calls allocate
    sets = {"short": short_queries(args.queries), "medium": medium_queries(args.queries)}
    if args.data.exists():
        sets["llmrouter prompts"] = real_queries(args.queries, args.data)
    table = Table(title="embedding latency, all-MiniLM-L6-v2 on CPU (ms per query, median)")
    for col in ("queries", "word pieces (mean)", "batch 1", "batch 32"):
        table.add_column(col, justify="right")
    for name, texts in sets.items():
        pieces = np.mean([min(embedder.num_tokens(t), embedder.max_seq_length) for t in texts])
        b1 = per_query_ms(embedder, texts[:64], 1)
        b32 = per_query_ms(embedder, texts, 32)
        table.add_row(name, f"{pieces:.0f}", f"{b1:.1f}", f"{b32:.1f}")
    cached = Embedder(cache_size=1000).load()
    texts = sets["short"][:32]
    cached.embed(texts)
    t0 = time.perf_counter()
    for t in texts:
        cached.embed([t])
    hit_ms = (time.perf_counter() - t0) / len(texts) * 1e3
    table.add_row("short, cache hit", "-", f"{hit_ms:.3f}", "-")
    Console().print(table)


if __name__ == "__main__":
    main()
