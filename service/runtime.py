"""Process-wide numeric settings applied by every entry point (CLI, service, benchmarks)."""

from __future__ import annotations

from threadpoolctl import threadpool_limits


def single_threaded_blas() -> None:
    """Pin BLAS to one thread.

    The policies' hot path is matrix-vector work on small matrices; on this 2-core
    machine a two-thread OpenBLAS dgemv over 11 stacked 385 x 385 inverses took 8 ms
    against 0.65 ms single-threaded (the threads fight over a memory-bound loop). The
    parallelism we want is across requests, not inside one.
    """
    threadpool_limits(limits=1, user_api="blas")
