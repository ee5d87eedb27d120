"""NumPy work in threads: the usable CPUs, and an in-order map with few items in flight.

NumPy releases the GIL inside most array operations (ufuncs, sorts, gathers), so blocks of
array work run side by side in threads without copying their inputs to other processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["map_in_order", "usable_cpus"]

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def map_in_order(
    function: Callable[[_Item], _Result], items: Iterable[_Item], threads: int
) -> Iterator[_Result]:
    """``function(item)`` for every item, in order, at most ``threads`` items at a time.

    Items are handed out ``threads`` at a time and each group is finished before the next
    starts, so no more than ``threads`` results wait in memory; with ``threads <= 1`` it is
    the plain ``map``. The results do not depend on the thread count.
    """
    items = list(items)
    if threads <= 1 or len(items) <= 1:
        yield from map(function, items)
        return
    with ThreadPoolExecutor(min(threads, len(items))) as pool:
        for first in range(0, len(items), threads):
            yield from pool.map(function, items[first : first + threads])
