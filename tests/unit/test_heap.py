"""shared/heap.py: survivors leave the cyclic GC's walks; garbage in cycles among them is still freed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from shared import heap


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_settle_freezes_the_survivors_and_collect_frozen_frees_their_cycles() -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a  # a reference cycle: only the cyclic collector can free it
    gone = weakref.ref(a)
    heap.settle()
    assert gc.get_freeze_count() > 0
    del a, b
    gc.collect()  # a full collection does not look at frozen objects
    assert gone() is not None
    assert heap.collect_frozen() > 0
    assert gone() is None
    assert gc.get_freeze_count() > 0  # frozen again after the collection
