"""HTTP Basic parsing that never crashes on what a client sends, and failed-auth throttling.

Only printable ASCII base64 is a Basic value: anything else (``Basic \\xff\\xfe``) is no credential
at all, hence a 401, never an encoding error deeper down.

The throttle counts failed authentications per client address in a sliding minute. Past the limit
the client's *failed* attempts are answered 429 with ``Retry-After`` (and cost no MongoDB lookup);
the right credentials are still checked first and always pass, so a flood of wrong guesses from one
address never locks out the legitimate caller. Guessing stays pointless: the broker secret and the
toolchain credentials are random values far beyond what 20 guesses a minute can reach.
"""

from __future__ import annotations

import base64
import binascii
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

_BASE64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


def basic_value(header: str | None) -> str | None:
    """The base64 part of ``Authorization: Basic <value>``, if it is plain base64; else None."""
    if not header or header[:6].lower() != "basic ":
        return None
    value = header[6:].strip()
    if not value or not value.isascii() or not set(value.encode()) <= _BASE64:
        return None
    return value


def basic_credentials(header: str | None) -> tuple[bytes, bytes] | None:
    """(user, password) of a Basic header, or None for anything that is not one."""
    value = basic_value(header)
    if value is None:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    return (user, password) if sep else None


class AuthThrottle:
    """Failed authentications per client in a sliding window; bounded memory (LRU of clients)."""

    def __init__(
        self,
        limit: int,
        *,
        window_s: float = 60.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str) -> deque[float] | None:
        stamps = self._failures.get(client)
        if stamps is None:
            return None
        horizon = self._clock() - self.window_s
        while stamps and stamps[0] <= horizon:
            stamps.popleft()
        if not stamps:
            del self._failures[client]
            return None
        return stamps

    def retry_after(self, client: str) -> int | None:
        """Seconds until ``client`` may fail again, when it is over the limit; else None."""
        stamps = self._recent(client)
        if stamps is None or len(stamps) < self.limit:
            return None
        return max(1, math.ceil(stamps[0] + self.window_s - self._clock()))

    def failed(self, client: str) -> None:
        stamps = self._recent(client)
        if stamps is None:
            stamps = self._failures[client] = deque()
            while len(self._failures) > self._max_clients:
                self._failures.popitem(last=False)
        self._failures.move_to_end(client)
        if len(stamps) < self.limit:
            stamps.append(self._clock())
