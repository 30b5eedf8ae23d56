"""The emulator's clock: wall time plus an offset tests can advance (token expiry, 429 windows)."""

from __future__ import annotations

import time


class Clock:
    """Wall clock with an adjustable offset, so tests can expire tokens without sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds
