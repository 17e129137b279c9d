"""Run a list of tasks in the calling thread, helped by worker threads that join if and when they get a CPU.

A small exact search is 10–30 ms of work cut into a few tasks. Handing them all to worker threads and
waiting costs two thread wake-ups per call (the workers', then the caller's), and on a loaded
machine each wake-up can wait for a scheduler tick (4 ms at HZ = 250) behind other processes; a
worker may also share its core with OpenMP threads still spinning after someone else's parallel
region (libgomp spins for a few ms by default). So the caller pulls tasks from the shared list
itself, from the first instant, and the helpers pull from the same list once they run: a helper
that starts late finds the list empty and returns. The caller then waits only for tasks a helper
has already taken; if no helper ever gets a core the caller has done everything, as fast as one
thread can. Work sharing with the caller participating is how OpenMP's ``parallel for
schedule(dynamic)`` runs too, minus its closing barrier over every thread of the team. (When every
CPU is busy with other processes a woken helper tends to share the caller's CPU and adds little, but
costs little too; measured in BENCHMARKS.md, issue 23.)

faiss's OpenMP is limited to one thread in the helpers (set once per worker) and in the caller
while it runs tasks (``omp_set_num_threads`` is per thread; the caller's value is restored).

>>> run_shared([lambda: 1 + 1, lambda: 2 * 3], helpers=1)
[2, 6]
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import faiss

T = TypeVar("T")

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_pid = -1


def run_shared(tasks: Sequence[Callable[[], T]], helpers: int) -> list[T]:
    """Results of ``tasks`` in order, run by the calling thread and up to ``helpers`` worker threads.

    Each task runs exactly once; the first exception raised by a task is re-raised here (after every
    task that was started has finished).
    """
    results: list[object] = [None] * len(tasks)
    done = [threading.Event() for _ in tasks]
    claim, claim_lock = itertools.count(), threading.Lock()
    errors: list[BaseException] = []

    def pull() -> None:
        while True:
            with claim_lock:
                i = next(claim)
            if i >= len(tasks):
                return
            try:
                results[i] = tasks[i]()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                errors.append(exc)
            finally:
                done[i].set()

    if len(tasks) > 1:
        pool = _workers()
        for _ in range(min(helpers, len(tasks) - 1)):
            pool.submit(pull)
    with one_faiss_thread():
        pull()
    for event in done:  # only tasks a helper took can still be running
        event.wait()
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]


@contextlib.contextmanager
def one_faiss_thread() -> Iterator[None]:
    """faiss's OpenMP at 1 thread in the calling thread (``omp_set_num_threads`` is per thread), then restored.

    Even a tiny faiss call opens parallel regions (``ResultHeap`` opens two): on a busy machine each
    waits for the team's other threads to be woken and scheduled, often a tick (4 ms) or more.
    """
    saved = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(saved)


def _workers() -> ThreadPoolExecutor:
    """The helper threads (one per CPU, OpenMP limited to 1 thread in each); re-made after a fork."""
    global _pool, _pool_pid
    with _lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(
                max_workers=os.cpu_count() or 1,
                thread_name_prefix="metriclearn-flat",
                initializer=faiss.omp_set_num_threads,
                initargs=(1,),
            )
            _pool_pid = os.getpid()
        return _pool
