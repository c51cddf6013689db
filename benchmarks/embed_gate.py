"""Quality gate of the embedding backends: how close each one's vectors come to torch's
(the reference every stored policy and result was made with), and how fast it is.

For each of the three shared sets (llmrouter 14 tasks, RouterBench ARC/MBPP/Winogrande,
MMLU-Pro) it takes a seeded sample of the distinct prompts (all of them with
`--sample 0`), embeds them with every backend exactly as the service does (prepared
text, calls of 32, passes formed by length), and reports per set and backend the min,
1st percentile and mean cosine to torch's vector of the same prompt, the prompts below
the backend's threshold, and prompts per second (the median over calls of 32 on the
first `--timed` prompts of each sample, the same for every backend, each backend in a
process of its own). Torch's vectors are kept in the
simulator's embedding cache (`--cache-dir`), so a rerun pays only for the others. A
backend passes when its minimum over every set reaches its threshold
(`service.embedder.MIN_COSINE_TO_TORCH`); the service default must pass and be faster
than torch. Prints a markdown table.

Run: python -m benchmarks.embed_gate [--sample N] [--seed S] [--backends a,b]
     [--threads T] [--timed N] [--cache-dir DIR | --no-cache] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.embedder import BackendWorker
from service.embedder import (
    EMBED_BACKENDS,
    MIN_COSINE_TO_TORCH,
    EmbedBackend,
    Embedder,
    default_threads,
    prepare_text,
)
from simulator.embeddings import embed_texts

SETS = {
    "llmrouter_14tasks": Path("data/llmrouter_14tasks.parquet"),
    "routerbench_arc_mbpp_winogrande": Path("data/routerbench_arc_mbpp_winogrande.parquet"),
    "mmlu_pro_29models": Path("../shared/data/mmlu_pro_29models.parquet"),
}
# texts per embed() call: the size of a full micro-batch in the service
_CALL = 32


def sample_prompts(path: Path, n: int, seed: int) -> list[str]:
    """A seeded sample of `n` distinct prompts of the set at `path` (all when n <= 0 or
    n exceeds them), in a fixed order."""
    prompts = pd.read_parquet(path, columns=["prompt"])["prompt"].drop_duplicates()
    prompts = prompts.sort_values(kind="stable")
    if 0 < n < len(prompts):
        prompts = prompts.sample(n, random_state=seed)
    return [str(p) for p in prompts]


def embed_calls(embedder: Embedder, prepared: list[str]) -> np.ndarray:
    """Vectors of `prepared`, in calls of _CALL texts as the service's micro-batches."""
    out = np.empty((len(prepared), embedder.dim), dtype=np.float32)
    for s in range(0, len(prepared), _CALL):
        out[s : s + _CALL] = embedder.embed_prepared(prepared[s : s + _CALL])
    return out


def gate(
    sets: dict[str, list[str]],
    backends: list[EmbedBackend],
    threads: int | None,
    cache_dir: Path | None,
    timed: int,
) -> list[dict[str, Any]]:
    """One row per (set, backend): cosine to torch over the set's sample, and prompts
    per second on its first `timed` prompts (the same ones for every backend, each
    backend timed in a process of its own: one that ran beside another is slowed by
    it). Torch's vectors come from the simulator's on-disk cache when `cache_dir` is
    given (computed and stored there on a miss), so a rerun costs only the others."""
    order: list[EmbedBackend] = ["torch", *[b for b in backends if b != "torch"]]
    per_second: dict[tuple[str, EmbedBackend], float] = {}
    for b in order:
        worker = BackendWorker(b, {"threads": threads})
        try:
            for name, texts in sets.items():
                ms = worker.ask("time", texts[:timed], _CALL)
                per_second[(name, b)] = 1e3 / ms
                print(f"{name}: {b} {1e3 / ms:.0f} prompts/s", flush=True)
        finally:
            worker.close()
    embedders: dict[EmbedBackend, Embedder] = {
        b: Embedder(cache_size=0, backend=b, threads=threads).load() for b in order
    }
    rows: list[dict[str, Any]] = []
    for name, texts in sets.items():
        prepared = [prepare_text(t) for t in texts]
        vectors: dict[EmbedBackend, np.ndarray] = {}
        for b, emb in embedders.items():
            if b == "torch" and cache_dir is not None:
                # keyed by the raw prompt, as the simulator keys it
                vectors[b] = embed_texts(texts, emb, cache_dir=cache_dir, progress=False)
            else:
                vectors[b] = embed_calls(emb, prepared)
        for b in embedders:
            cos = np.sum(vectors[b].astype(np.float64) * vectors["torch"], axis=1)
            threshold = MIN_COSINE_TO_TORCH[b]
            rows.append(
                {
                    "set": name,
                    "prompts": len(prepared),
                    "backend": b,
                    "min": float(cos.min()),
                    "p01": float(np.quantile(cos, 0.01)),
                    "mean": float(cos.mean()),
                    "threshold": threshold,
                    "below": int(np.sum(cos < threshold)),
                    "prompts_per_s": per_second[(name, b)],
                    "speedup": per_second[(name, b)] / per_second[(name, "torch")],
                }
            )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| set | prompts | backend | min cos | p01 cos | mean cos | threshold | below "
        "| prompts/s | vs torch |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    body = "".join(
        f"| {r['set']} | {r['prompts']} | {r['backend']} | {r['min']:.5f} | {r['p01']:.5f} "
        f"| {r['mean']:.6f} | {r['threshold']} | {r['below']} | {r['prompts_per_s']:.0f} "
        f"| {r['speedup']:.2f}x |\n"
        for r in rows
    )
    return head + body


def verdict(rows: list[dict[str, Any]]) -> dict[str, bool]:
    """Per backend: its minimum cosine over every set reaches its threshold."""
    out: dict[str, bool] = {}
    for r in rows:
        out[r["backend"]] = out.get(r["backend"], True) and r["min"] >= r["threshold"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sample", type=int, default=2000, help="prompts per set; 0: all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backends", default=",".join(EMBED_BACKENDS))
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    parser.add_argument(
        "--timed", type=int, default=256, help="prompts per set timed for prompts/s"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(".cache/embeddings"),
        help="torch's vectors are read from / added to the simulator's embedding cache here",
    )
    parser.add_argument("--no-cache", action="store_true", help="recompute torch's vectors")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    backends: list[EmbedBackend] = []
    for b in args.backends.split(","):
        if b not in EMBED_BACKENDS:
            parser.error(f"--backends: {b!r} is not one of {list(EMBED_BACKENDS)}")
        backends.append(b)  # type: ignore[arg-type]
    sets = {
        name: sample_prompts(path, args.sample, args.seed)
        for name, path in SETS.items()
        if path.exists()
    }
    missing = sorted(set(SETS) - set(sets))
    cache_dir = None if args.no_cache else args.cache_dir
    rows = gate(sets, backends, args.threads, cache_dir, args.timed)
    what = "all distinct prompts" if args.sample <= 0 else f"seeded sample (seed {args.seed})"
    print(
        f"\nEmbedding quality gate: cosine to torch per prompt, {what}; "
        f"{os.cpu_count()} cores, ONNX Runtime {args.threads or default_threads()} threads\n"
    )
    print(markdown(rows))
    thresholds = {r["backend"]: r["threshold"] for r in rows}
    for b, ok in verdict(rows).items():
        print(f"{b}: {'passes' if ok else 'FAILS'} (min cosine >= {thresholds[b]})")
    if missing:
        print(f"not found, skipped: {', '.join(missing)}")
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
