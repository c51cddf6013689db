"""Shared test set-up."""

from __future__ import annotations

from service.runtime import single_threaded_blas

# the same numeric settings as every entry point, so tests run the shipped configuration
single_threaded_blas()
