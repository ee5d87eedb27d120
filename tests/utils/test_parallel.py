import threading
import time

import pytest

from crossreid.utils.parallel import map_in_order, usable_cpus


def test_usable_cpus_is_positive():
    assert usable_cpus() >= 1


@pytest.mark.parametrize("threads", [0, 1, 2, 3, 8])
def test_map_in_order_keeps_the_order_whatever_the_thread_count(threads):
    def slow_square(x):
        time.sleep(0.002 * (7 - x % 7))  # later items finish first within a group
        return x * x

    assert list(map_in_order(slow_square, range(20), threads)) == [x * x for x in range(20)]


def test_map_in_order_holds_at_most_threads_items_in_flight():
    lock, running, most = threading.Lock(), [0], [0]
    started = []

    def work(x):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            started.append(x)
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        return x

    results = map_in_order(work, range(9), 3)
    assert next(results) == 0
    # No item of the second group has started when the first result is read.
    assert set(started) <= {0, 1, 2}
    assert list(results) == list(range(1, 9))
    assert most[0] <= 3


def test_map_in_order_with_one_thread_is_the_plain_map():
    threads_seen = set()

    def work(x):
        threads_seen.add(threading.get_ident())
        return -x

    assert list(map_in_order(work, [1, 2, 3], 1)) == [-1, -2, -3]
    assert threads_seen == {threading.get_ident()}
