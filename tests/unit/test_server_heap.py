"""`settle_heap`, run by `opsgate serve` before it takes requests: what is alive at
start is kept out of every later collection, and young collections run less often;
garbage made while serving, cycles included, is still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from opsgate.server import settle_heap
from opsgate.server.app import YOUNG_COLLECTION_THRESHOLD


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_settling_freezes_what_lives_and_still_collects_later_cycles(
    restored_collector: None,
) -> None:
    before = gc.get_threshold()
    settle_heap()

    assert gc.get_freeze_count() > 1000  # the modules' and the app's objects
    assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, before[1], before[2])
    a, b = _Node(), _Node()
    a.other, b.other = b, a  # a cycle made after start: garbage once dropped
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None
