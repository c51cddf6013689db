"""Embeddings of a dataset's prompts, computed once and cached on disk.

The cache is one store per embedder configuration (model, truncation side), keyed by
the SHA-256 of each text, so slices and other datasets reuse what is already there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

DEFAULT_CACHE_DIR = Path(".cache/embeddings")


class BatchEmbedder(Protocol):
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


def text_key(text: str) -> str:
    # hex, not raw bytes: numpy's fixed-width bytes strip trailing NULs from digests
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _store_path(cache_dir: Path, embedder: BatchEmbedder) -> Path:
    tag = hashlib.sha256(json.dumps(embedder.describe(), sort_keys=True).encode()).hexdigest()
    return cache_dir / f"{tag[:16]}.npz"


def _read_store(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        return np.zeros(0, dtype="U64"), np.zeros((0, 0), dtype=np.float32)
    with np.load(path, allow_pickle=False) as npz:
        return npz["keys"], npz["vectors"]


def embed_texts(
    texts: Sequence[str],
    embedder: BatchEmbedder,
    *,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    batch_size: int = 64,
    progress: bool = True,
) -> np.ndarray:
    """Embeddings of `texts`, shape (n, embedder.dim), float32; misses are embedded in
    batches (with a progress bar) and added to the on-disk cache."""
    path = _store_path(cache_dir, embedder)
    keys, vectors = _read_store(path)
    index = {str(k): i for i, k in enumerate(keys)}
    wanted = [text_key(t) for t in texts]
    todo = list(dict.fromkeys(i for i, k in enumerate(wanted) if k not in index))
    # one representative text per missing key
    firsts: dict[str, int] = {}
    for i in todo:
        firsts.setdefault(wanted[i], i)
    miss = list(firsts.values())
    if miss:
        new = np.empty((len(miss), embedder.dim), dtype=np.float32)
        bar = tqdm(total=len(miss), desc="embedding prompts", unit="prompt", disable=not progress)
        for s in range(0, len(miss), batch_size):
            chunk = miss[s : s + batch_size]
            new[s : s + len(chunk)] = embedder.embed([texts[i] for i in chunk])
            bar.update(len(chunk))
        bar.close()
        new_keys = np.asarray([wanted[i] for i in miss], dtype="U64")
        vectors = new if vectors.size == 0 else np.vstack([vectors, new])
        keys = np.concatenate([keys, new_keys])
        index = {str(k): i for i, k in enumerate(keys)}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=keys, vectors=vectors)
        tmp.replace(path)  # atomic: a crash never leaves a half-written cache
    return vectors[[index[k] for k in wanted]]
