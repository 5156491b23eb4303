"""The bounded cache: never more than its bound, the least recently written forgotten."""

from __future__ import annotations

import threading

import pytest

from opsgate.cache import BoundedCache


def test_holds_at_most_its_bound_and_forgets_the_oldest_first() -> None:
    cache: BoundedCache[str, int] = BoundedCache(3)
    for i, key in enumerate("abcd"):
        cache.put(key, i)
    assert len(cache) == 3
    assert "a" not in cache and cache.get("a") is None
    assert [cache.get(k) for k in "bcd"] == [1, 2, 3]


def test_a_rewritten_entry_is_the_newest() -> None:
    cache: BoundedCache[str, int] = BoundedCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 3)  # a is now newer than b
    cache.put("c", 4)
    assert "b" not in cache
    assert (cache.get("a"), cache.get("c")) == (3, 4)


def test_threads_never_push_it_past_its_bound() -> None:
    cache: BoundedCache[int, int] = BoundedCache(100)

    def fill(start: int) -> None:
        for i in range(start, start + 5_000):
            cache.put(i, i)

    threads = [threading.Thread(target=fill, args=(n * 5_000,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 100


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        BoundedCache(0)
