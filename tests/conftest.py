"""Shared test set-up."""

from __future__ import annotations

import pytest

from service.embedder import Embedder
from service.runtime import single_threaded_blas

# the same numeric settings as every entry point, so tests run the shipped configuration
single_threaded_blas()


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The real MiniLM model, loaded once for every test of the real app."""
    emb = Embedder()
    emb.load()
    return emb
