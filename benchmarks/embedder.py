"""Embedding milliseconds per query at batch 1 and batch 32 (cache off: every text is
new), with the real all-MiniLM-L6-v2 on this machine's CPU, for each embedding backend
(torch, ONNX Runtime fp32, ONNX Runtime int8) and three query sets: short questions,
medium (~55 word pieces) questions, and real prompts from the shared llmrouter set
(after question extraction).

The backends are measured in the same run, interleaved round by round, so the ratios
to torch compare like with like on a machine whose load moves, each in a process of
its own (as in a service; one works at a time); each figure is the median over rounds
of the median over batches.

Run: python -m benchmarks.embedder [--backend all|torch|onnx|onnx-int8] [--queries N]
     [--rounds R] [--data PATH] [--threads T] [--batch-tokens B] [--batch-size N]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from service.embedder import EMBED_BACKENDS, EmbedBackend, Embedder, default_threads

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


def device_name(device: str) -> str:
    """The device, and for CUDA the card: every figure says what made it."""
    if not device.startswith("cuda"):
        return f"cpu ({os.cpu_count()} cores)"
    import torch

    index = int(device.partition(":")[2] or 0)
    return f"{device} ({torch.cuda.get_device_name(index)})"


def _worker(conn: Connection, backend: EmbedBackend, options: dict[str, Any]) -> None:
    """One backend in a process of its own, measuring on request: a backend that ran
    in the same process slows the next (measured: torch at batch 1 from 8.4 to 11-13 ms
    per short query after ONNX Runtime had run), and a service holds only one."""
    emb = Embedder(cache_size=0, backend=backend, **options).load()
    emb.embed(medium_queries(64, seed=99))  # warm-up: first calls allocate
    conn.send(f"ready on {device_name(emb.device)}")
    while (job := conn.recv()) is not None:
        kind, texts, batch = job
        if kind == "pieces":
            longest = emb.max_seq_length
            conn.send(float(np.mean([min(emb.num_tokens(t), longest) for t in texts])))
        elif kind == "hit":
            emb.cache_size = 1000  # a hit never reaches the backend
            emb.embed(texts)
            t0 = time.perf_counter()
            for t in texts:
                emb.embed([t])
            conn.send((time.perf_counter() - t0) / len(texts) * 1e3)
        else:
            conn.send(per_query_ms(emb, texts, batch))


class BackendWorker:
    """A backend loaded in a spawned process of its own (see `_worker`), measuring on
    request; idle while another works."""

    def __init__(self, backend: EmbedBackend, options: dict[str, Any]) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc: BaseProcess = ctx.Process(
            target=_worker, args=(child, backend, options), daemon=True
        )
        self.proc.start()
        self.ready = str(self.conn.recv())
        if not self.ready.startswith("ready"):
            raise RuntimeError(f"{backend}: the worker did not start")

    def ask(self, kind: str, texts: list[str], batch: int = 0) -> float:
        """ "time": median ms per query in calls of `batch`; "pieces": mean word pieces
        read; "hit": ms per cache hit."""
        self.conn.send((kind, texts, batch))
        return float(self.conn.recv())

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["all", *EMBED_BACKENDS], default="all")
    parser.add_argument("--queries", type=int, default=320)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path("data/llmrouter_14tasks.parquet"))
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    parser.add_argument(
        "--batch-tokens", type=int, default=512, help="padded word pieces per forward pass"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass at most")
    parser.add_argument(
        "--device", default="cpu", help="cpu, cuda[:N] or auto (CUDA where the backend sees one)"
    )
    args = parser.parse_args()
    backends: list[EmbedBackend] = list(EMBED_BACKENDS) if args.backend == "all" else [args.backend]
    options = {
        "threads": args.threads,
        "batch_size": args.batch_size,
        "batch_tokens": args.batch_tokens,
        "device": args.device,
    }
    workers: dict[str, BackendWorker] = {}
    for b in backends:
        t0 = time.perf_counter()
        workers[b] = BackendWorker(b, options)
        print(
            f"{b}: loaded and warmed in {time.perf_counter() - t0:.1f} s, {workers[b].ready}",
            flush=True,
        )

    def ask(backend: str, kind: str, texts: list[str], batch: int = 0) -> float:
        return workers[backend].ask(kind, texts, batch)

    try:
        sets = {"short": short_queries(args.queries), "medium": medium_queries(args.queries)}
        if args.data.exists():
            sets["llmrouter prompts"] = real_queries(args.queries, args.data)
        pieces = {name: ask(backends[0], "pieces", texts) for name, texts in sets.items()}
        # figures[(set, batch, backend)] = per-round medians; one process works at a time
        figures: dict[tuple[str, int, str], list[float]] = {}
        for _ in range(args.rounds):
            for name, texts in sets.items():
                for batch, sample in ((1, texts[:64]), (32, texts)):
                    for backend in backends:
                        figures.setdefault((name, batch, backend), []).append(
                            ask(backend, "time", sample, batch)
                        )
        hit_ms = ask(backends[0], "hit", sets["short"][:32])
    finally:
        for worker in workers.values():
            worker.close()

    threads = args.threads or default_threads()
    table = Table(
        title=(
            f"embedding latency, all-MiniLM-L6-v2 on CPU ({os.cpu_count()} cores, ONNX "
            f"Runtime {threads} threads, each backend in its own process; ms per query, "
            f"median of {args.rounds} rounds)"
        )
    )
    for col in ("queries", "word pieces (mean)", "backend", "batch 1", "batch 32"):
        table.add_column(col, justify="right")
    for name in sets:
        for b in backends:
            cells = []
            for batch in (1, 32):
                ms = float(np.median(figures[(name, batch, b)]))
                cell = f"{ms:.2f}"
                if b != "torch" and "torch" in workers:
                    torch_ms = float(np.median(figures[(name, batch, "torch")]))
                    cell += f" ({torch_ms / ms:.1f}x)"
                cells.append(cell)
            table.add_row(name, f"{pieces[name]:.0f}", b, *cells)
    table.add_row("short, cache hit", "-", "any", f"{hit_ms:.3f}", "-")
    Console().print(table)
    if "torch" in workers and len(backends) > 1:
        print("(Nx): torch's time over this backend's, same run")


if __name__ == "__main__":
    main()
