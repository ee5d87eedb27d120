"""The inter-process lock file: exclusive, waits, removed after use."""

from __future__ import annotations

import threading

from crossreid.utils.locks import file_lock


def test_the_lock_file_exists_while_held_and_is_removed_after(tmp_path) -> None:
    lock = tmp_path / "cache" / ".domain.lock"
    with file_lock(lock):
        assert lock.is_file()
    assert list(lock.parent.iterdir()) == []


def test_a_second_holder_waits_until_the_first_releases(tmp_path) -> None:
    # flock locks belong to an open file, so two threads opening the lock file contend
    # like two processes do.
    lock = tmp_path / ".domain.lock"
    events: list[str] = []
    waiting = threading.Event()

    def second() -> None:
        with file_lock(lock, on_wait=waiting.set):
            events.append("second holds")

    with file_lock(lock):
        thread = threading.Thread(target=second)
        thread.start()
        assert waiting.wait(timeout=30)  # it found the lock taken
        events.append("first releases")
    thread.join(timeout=30)
    # The second had opened the file the first removed on release: it started over on a
    # new one, and that one is gone too.
    assert events == ["first releases", "second holds"]
    assert list(tmp_path.iterdir()) == []


def test_a_lock_file_left_by_a_dead_process_does_not_block(tmp_path) -> None:
    lock = tmp_path / ".domain.lock"
    lock.write_text("")  # a killed holder leaves the file but not the lock

    def must_not_wait() -> None:
        raise AssertionError("waited for a lock nobody holds")

    with file_lock(lock, on_wait=must_not_wait):
        pass
    assert not lock.exists()
