"""run_shared: the caller and helper threads share a task list; each task once, results in order."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import faiss
import pytest

from metriclearn.indexes._work_sharing import run_shared, spare, spare_cpus


@pytest.fixture(autouse=True)
def _two_faiss_threads() -> Iterator[None]:
    saved = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    yield
    faiss.omp_set_num_threads(saved)


def test_results_in_order_each_task_once_with_one_faiss_thread() -> None:
    runs: list[tuple[int, int]] = []

    def task(i: int) -> int:
        runs.append((i, faiss.omp_get_max_threads()))
        return i * i

    assert run_shared([lambda i=i: task(i) for i in range(7)], helpers=3) == [i * i for i in range(7)]
    assert sorted(runs) == [(i, 1) for i in range(7)]  # once each, faiss's OpenMP at 1 thread inside
    assert faiss.omp_get_max_threads() == 2  # the caller's setting is back


def test_the_caller_and_a_helper_run_tasks_at_the_same_time() -> None:
    both = threading.Barrier(2, timeout=30)  # tasks 0 and 1 each wait for the other: two threads must run them
    ran_on: dict[int, threading.Thread] = {}

    def task(i: int) -> None:
        ran_on[i] = threading.current_thread()
        if i < 2:
            both.wait()

    run_shared([lambda i=i: task(i) for i in range(6)], helpers=1)
    assert ran_on[0] is not ran_on[1]
    assert threading.current_thread() in (ran_on[0], ran_on[1])


def test_without_helpers_the_caller_runs_everything() -> None:
    threads = run_shared([threading.current_thread] * 3, helpers=0)
    assert threads == [threading.current_thread()] * 3
    assert run_shared([], helpers=2) == []


def test_the_first_error_is_raised_after_the_other_tasks_ran() -> None:
    ran: list[int] = []

    def task(i: int) -> int:
        ran.append(i)
        if i == 2:
            raise ValueError("task 2 failed")
        return i

    with pytest.raises(ValueError, match="task 2 failed"):
        run_shared([lambda i=i: task(i) for i in range(5)], helpers=1)
    assert sorted(ran) == [0, 1, 2, 3, 4]
    assert faiss.omp_get_max_threads() == 2


@pytest.mark.parametrize(
    ("usable", "runnable", "own", "expected"),
    [
        (2, 1, 1, 1),  # only the caller runs: one spare CPU
        (2, 2, 1, 0),  # another process's thread holds the other CPU
        (2, 4, 1, 0),  # more runnable threads than CPUs
        (2, 2, 2, 1),  # the second runnable thread is our own (an OpenMP thread still spinning)
        (8, 3, 1, 5),
        (1, 1, 1, 0),
        (4, 1, 0, 3),  # the caller was not seen as runnable: it still counts as one
    ],
)
def test_spare_cpus_arithmetic(usable: int, runnable: int, own: int, expected: int) -> None:
    assert spare(usable, runnable, own) == expected


def test_spare_cpus_reads_this_machine() -> None:
    assert 0 <= spare_cpus() < (os.cpu_count() or 1)
