"""One ``asyncio.Lock`` per key, alive only while someone holds or awaits it (no growing map)."""

from __future__ import annotations

import asyncio
import weakref


class KeyedLocks:
    """``locks[key]`` returns the key's lock; asyncio locks are FIFO, so waiters keep their order."""

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def __getitem__(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock

    def __len__(self) -> int:
        return len(self._locks)
