"""Independent replays (one per router × seed, or router × λ × seed) in worker processes.

Each task builds its own policy from its own seed, so a task's result does not depend
on which process runs it or in what order: `--jobs N` gives exactly the serial results.
The routing table and its contexts are computed once in the parent and reach the
workers by fork (copy-on-write), never by pickling them into every task.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

import numpy as np

from service.runtime import single_threaded_blas
from simulator.data import RoutingData

T = TypeVar("T")
R = TypeVar("R")
Progress = Callable[[int], None]
#: fn(task, data, contexts, progress) -> result; a module-level function (workers find
#: it by name)
TaskFn = Callable[[T, RoutingData, np.ndarray, Progress | None], R]

# Set in the parent just before the pool forks; workers read their inherited copy.
_shared: dict[str, Any] = {}


def default_jobs() -> int:
    """CPUs this process may run on (a container's or taskset's limit, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_tasks(
    fn: TaskFn[T, R],
    tasks: Sequence[T],
    data: RoutingData,
    contexts: np.ndarray,
    *,
    jobs: int = 1,
    progress: Progress | None = None,
) -> list[R]:
    """fn over every task, results in task order.

    jobs=1 runs in this process and reports progress step by step; jobs > 1 forks that
    many workers and reports a task's steps when it finishes.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if jobs == 1 or len(tasks) <= 1:
        return [fn(t, data, contexts, progress) for t in tasks]
    # fork, not spawn: the parent may hold torch (the embedder) and the contexts; a
    # forked worker inherits both without re-importing or copying, and touches neither
    # torch nor its thread pool
    context = multiprocessing.get_context("fork")
    _shared.update(data=data, contexts=contexts)
    try:
        with ProcessPoolExecutor(
            max_workers=min(jobs, len(tasks)),
            mp_context=context,
            initializer=single_threaded_blas,
        ) as pool:
            futures = {pool.submit(_run_one, fn, t): i for i, t in enumerate(tasks)}
            results: list[Any] = [None] * len(tasks)
            for future in as_completed(futures):
                result, steps = future.result()
                results[futures[future]] = result
                if progress is not None:
                    progress(steps)
    finally:
        _shared.clear()
    return results


def _run_one(fn: TaskFn[T, R], task: T) -> tuple[R, int]:
    """In a worker: the task's result and how many progress steps it made."""
    steps = 0

    def count(n: int) -> None:
        nonlocal steps
        steps += n

    return fn(task, _shared["data"], _shared["contexts"], count), steps
