"""The ``--jobs`` worker threads of a tenant run, and the ranges of large tables they share.

Work items (a tenant's steps, or a batch of tenants) are taken in the order given, the largest first.
A step working on a large table shares its ranges (:meth:`WorkPool.share`): a worker that is free
takes a shared range before any new work item, so every connection helps with a table that would
otherwise hold one connection for as long as all the other tenants together. The thread that shared
the ranges works on them too, and waits for the ones others took before it goes on with its step
(rebuilding the table's indexes once every range is in).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger("migrator.runner")

Task = Callable[[], None]


@dataclass
class _Shared:
    """The ranges one step shared: how many are still to be done, and the first error among them."""

    owner: int  # thread ident of the step's thread
    waiting: int
    error: BaseException | None = None


@dataclass(order=True)
class _Range:
    priority: int  # larger ranges first (negated size)
    sequence: int
    task: Task = field(compare=False)
    group: _Shared = field(compare=False)


class WorkPool:
    """``jobs`` threads over ``items`` and whatever ranges the items' steps share while they run."""

    def __init__(self, jobs: int, on_thread_exit: Callable[[], None] = lambda: None) -> None:
        self.jobs = jobs
        self.on_thread_exit = on_thread_exit  # e.g. close the thread's database connection
        self._lock = threading.Condition()
        self._items: list[Task] = []
        self._ranges: list[_Range] = []
        self._busy = 0  # items being worked on: each may still share ranges
        self._sequence = 0
        self._errors: list[BaseException] = []

    def run(self, items: list[Task]) -> None:
        """Every item, ``jobs`` at a time; the first exception an item raised is raised once all threads
        stopped (after one, no new item starts)."""
        self._items = list(reversed(items))
        threads = [threading.Thread(target=self._worker, name=f"tenant_{n}") for n in range(self.jobs)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self._errors:
            raise self._errors[0]

    def _next(self) -> Task | _Range | None:
        with self._lock:
            while True:
                if self._ranges:
                    self._ranges.sort()
                    return self._ranges.pop(0)
                if self._items and not self._errors:
                    self._busy += 1
                    return self._items.pop()
                if self._busy == 0:  # nothing runs that could still share ranges
                    return None
                self._lock.wait()

    def _worker(self) -> None:
        try:
            while (work := self._next()) is not None:
                if isinstance(work, _Range):
                    self._run_range(work)
                    continue
                try:
                    work()
                except BaseException as exc:  # noqa: BLE001 (kept and raised by run())
                    with self._lock:
                        self._errors.append(exc)
                finally:
                    with self._lock:
                        self._busy -= 1
                        self._lock.notify_all()
        finally:
            self.on_thread_exit()

    def _run_range(self, item: _Range) -> None:
        try:
            if item.group.error is None:  # a range of a step that already failed is not started
                item.task()
        except BaseException as exc:  # noqa: BLE001 (the step's thread raises it)
            with self._lock:
                if item.group.error is None:
                    item.group.error = exc
        finally:
            with self._lock:
                item.group.waiting -= 1
                self._lock.notify_all()

    def share(self, tasks: list[tuple[int, Task]]) -> None:
        """Run ``tasks`` ((size, task)) on this thread and on any free worker; return once all of them
        ended, raising the first error one raised (the others still queued are then not started)."""
        group = _Shared(threading.get_ident(), len(tasks))
        with self._lock:
            for size, task in tasks:
                self._sequence += 1
                self._ranges.append(_Range(-size, self._sequence, task, group))
            self._lock.notify_all()
        while True:
            with self._lock:
                mine = [r for r in self._ranges if r.group is group]
                if mine:
                    item = min(mine)
                    self._ranges.remove(item)
                elif group.waiting == 0:
                    break
                else:
                    self._lock.wait()
                    continue
            self._run_range(item)
        if group.error is not None:
            raise group.error


def run_in_order(tasks: list[tuple[int, Task]]) -> None:
    """:meth:`WorkPool.share` without a pool (one connection): the tasks one after the other."""
    for _size, task in tasks:
        task()
