"""run_shared: the caller and helper threads share a task list; each task once, results in order."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import faiss
import pytest

from metriclearn.indexes._work_sharing import one_faiss_thread, run_shared


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


def test_one_faiss_thread_restores_the_callers_setting_after_an_error() -> None:
    with pytest.raises(RuntimeError), one_faiss_thread():
        assert faiss.omp_get_max_threads() == 1
        raise RuntimeError
    assert faiss.omp_get_max_threads() == 2
