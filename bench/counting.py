"""Count the MongoDB commands a service process sends (PyMongo command monitoring).

Registered process-wide before the service builds its client, so every command of the service is
seen; handshakes and readiness pings are not work and are left out.
"""

from __future__ import annotations

from collections import Counter

from pymongo import monitoring

_NOT_WORK = frozenset({"hello", "ismaster", "isMaster", "ping", "endSessions", "buildInfo", "saslStart"})


class CommandCounter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.by_name: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_name.values())

    def snapshot(self) -> Counter[str]:
        return Counter(self.by_name)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name not in _NOT_WORK:
            self.by_name[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


COUNTER = CommandCounter()
monitoring.register(COUNTER)


def since(before: Counter[str]) -> dict[str, int]:
    """Commands per name since ``before`` (a ``COUNTER.snapshot()``)."""
    now = COUNTER.snapshot()
    now.subtract(before)
    return {k: v for k, v in sorted(now.items()) if v}
