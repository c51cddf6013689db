"""Featurizer: text -> the plain float vector a routing policy sees.

Layout of one feature vector, shape (dim,):
    [ embedding block (k) | log-length (1, optional) | bias 1.0 (1, optional) ]
where k = projection_dim (a seeded Gaussian random projection of the 384-d sentence
embedding, re-normalised to unit length) or 384 without projection.

A policy's learned state is only meaningful for the featurizer that produced its
training contexts; `describe()` gives what a service must compare before serving a
stored policy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

# log1p(chars) / 10 lies in [0, ~1.4] for texts up to a million characters: the same
# order as the unit-norm embedding block, so a ridge prior treats it like the rest.
_LOG_LENGTH_SCALE = 10.0
_EPS = 1e-12


class TextEmbedder(Protocol):
    """What the featurizer needs from an embedder (`service.embedder.Embedder`)."""

    @property
    def model_name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def truncation_side(self) -> str: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of `texts`, shape (n, dim)."""
        ...


class Featurizer:
    """Turns query text into policy contexts of shape (dim,).

    projection_dim: if set, project the embedding to this many dimensions (1..embedder.dim)
    with a fixed Gaussian matrix drawn from `seed`; smaller contexts make linear
    policies cheaper (their per-model matrices are dim x dim) at some loss of detail.
    bias: append a constant 1.0 so linear policies learn a per-model intercept.
    log_length: append log1p(len(original text)) / 10; length predicts both cost
    (tokens) and difficulty, and the embedding is length-blind by construction.
    """

    def __init__(
        self,
        embedder: TextEmbedder,
        *,
        projection_dim: int | None = None,
        seed: int = 0,
        bias: bool = True,
        log_length: bool = True,
    ) -> None:
        emb_dim = int(embedder.dim)
        if projection_dim is not None and (
            isinstance(projection_dim, bool)
            or not isinstance(projection_dim, int | np.integer)
            or not 1 <= projection_dim <= emb_dim
        ):
            raise ValueError(
                f"projection_dim must be None or an int in [1, {emb_dim}], got {projection_dim!r}"
            )
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        if not isinstance(bias, bool):
            raise ValueError(f"bias must be a bool, got {bias!r}")
        if not isinstance(log_length, bool):
            raise ValueError(f"log_length must be a bool, got {log_length!r}")
        self.embedder = embedder
        self.projection_dim = None if projection_dim is None else int(projection_dim)
        self.seed = int(seed)
        self.bias = bias
        self.log_length = log_length
        self._emb_dim = emb_dim
        self._projection: np.ndarray | None = None
        if self.projection_dim is not None:
            # Johnson-Lindenstrauss: R ~ N(0, 1/k) roughly preserves inner products.
            rng = np.random.default_rng(self.seed)
            k = self.projection_dim
            self._projection = rng.standard_normal((emb_dim, k)) / np.sqrt(k)

    @property
    def dim(self) -> int:
        """Length of one feature vector."""
        k = self.projection_dim if self.projection_dim is not None else self._emb_dim
        return k + int(self.log_length) + int(self.bias)

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """Feature vectors for `texts`: shape (n, dim), float64."""
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError("texts must be a sequence of str (use transform_one for a single text)")
        emb = self.embedder.embed(texts)
        lengths = np.fromiter((len(t) for t in texts), dtype=np.float64, count=len(texts))
        return self.transform_embeddings(emb, lengths)

    def transform_one(self, text: str) -> np.ndarray:
        """Feature vector for one text: shape (dim,), float64."""
        return self.transform([text])[0]

    def transform_embeddings(self, emb: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Feature vectors from precomputed embeddings (e.g. the simulator's cache).

        emb: shape (n, embedder.dim), the embedder's output for n texts.
        lengths: shape (n,), character counts of the ORIGINAL texts (before
        `prepare_text`), so a long chat history counts as long.
        Returns shape (n, dim), float64.
        """
        emb = np.asarray(emb, dtype=np.float64)
        lengths = np.asarray(lengths, dtype=np.float64)
        if emb.ndim != 2 or emb.shape[1] != self._emb_dim:
            raise ValueError(f"emb must have shape (n, {self._emb_dim}), got {emb.shape}")
        if lengths.shape != (emb.shape[0],):
            raise ValueError(f"lengths must have shape ({emb.shape[0]},), got {lengths.shape}")
        if not np.all(np.isfinite(emb)):
            raise ValueError("emb must be finite")
        if not np.all(np.isfinite(lengths)) or np.any(lengths < 0):
            raise ValueError("lengths must be finite and >= 0")
        block = emb if self._projection is None else emb @ self._projection
        # Re-normalise so every context has the same embedding-block norm whatever k is.
        block = block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), _EPS)
        columns = [block]
        if self.log_length:
            columns.append((np.log1p(lengths) / _LOG_LENGTH_SCALE)[:, None])
        if self.bias:
            columns.append(np.ones((emb.shape[0], 1)))
        return np.hstack(columns)

    def transform_embedding(self, emb: np.ndarray, length: float) -> np.ndarray:
        """`transform_embeddings` of one embedding (shape (embedder.dim,)) and the length
        of its original text: the same vector, bit for bit, without the batch path's
        checks and stacking of 2-d arrays (every cache hit of the service pays them)."""
        v = np.asarray(emb, dtype=np.float64)
        if v.shape != (self._emb_dim,):
            raise ValueError(f"emb must have shape ({self._emb_dim},), got {v.shape}")
        if not np.isfinite(v).all():
            raise ValueError("emb must be finite")
        if not (math.isfinite(length) and length >= 0):
            raise ValueError("lengths must be finite and >= 0")
        block = v if self._projection is None else v @ self._projection
        out = np.empty(self.dim)
        k = block.shape[0]
        # the batch path's own operations (a reduce of the squares, one log1p over an
        # array), so each element comes out identical
        norm = np.sqrt(np.add.reduce(block * block))
        np.divide(block, max(norm, _EPS), out=out[:k])
        if self.log_length:
            out[k] = np.log1p(np.array([length]))[0] / _LOG_LENGTH_SCALE
        if self.bias:
            out[-1] = 1.0
        return out

    def describe(self) -> dict[str, Any]:
        """Everything that determines the features; compare before reusing a stored policy.

        The embedder's backend is named unless it is torch (the backend of every
        description made before backends existed, which so stay valid): a policy
        learned on torch's vectors is refused beside ONNX ones, and the reverse.
        """
        out: dict[str, Any] = {
            "model": self.embedder.model_name,
            "embedding_dim": self._emb_dim,
            "truncation_side": self.embedder.truncation_side,
            "projection_dim": self.projection_dim,
            "seed": self.seed,
            "bias": self.bias,
            "log_length": self.log_length,
            "dim": self.dim,
        }
        backend = getattr(self.embedder, "backend", "torch")
        if backend != "torch":
            out["embed_backend"] = backend
        return out
