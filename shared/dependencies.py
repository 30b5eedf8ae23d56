"""Which failures are a dependency being down, and which are the message's own (decided once, here).

A message that meets an unavailable dependency (OTC's circuit open or OTC rate limiting us, IAM,
MongoDB, RabbitMQ publishing) is not at fault: the consumer holds it and retries it, without counting
an attempt, once a probe of that dependency succeeds. Everything else is the message's own failure
and spends attempts (or dead-letters at once when it can never succeed, see :func:`never_succeeds`).

Each boundary marks its own errors by deriving from :class:`DependencyUnavailable` (the OTC client's
``OtcUnavailableError``, the publisher's ``PublishError``); MongoDB's driver errors are recognised by
type here because PyMongo's hierarchy is not ours to extend.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import bson.errors
import pymongo.errors

Probe = Callable[[], Awaitable[bool]]
"""True when the dependency answers again; must not raise and must be time-bounded."""

MONGODB = "mongodb"
RABBITMQ = "rabbitmq"

# MongoDB server codes of a document or value the server can never store.
_NEVER_STORABLE = frozenset({10334, 17419, 17420})


class DependencyUnavailable(Exception):
    """Base of every boundary's "the dependency is down, not the message" error."""

    dependency: str = "unknown"

    def __init__(self, message: str, *, dependency: str | None = None) -> None:
        super().__init__(message)
        if dependency is not None:
            self.dependency = dependency


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 16:
        seen.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return seen


def unavailable_dependency(exc: BaseException) -> str | None:
    """The name of the dependency that is down when ``exc`` (or what caused it) says so, else None."""
    for err in _chain(exc):
        if isinstance(err, DependencyUnavailable):
            return err.dependency
        if isinstance(err, pymongo.errors.ConnectionFailure | pymongo.errors.WaitQueueTimeoutError):
            return MONGODB
        if isinstance(err, pymongo.errors.ExecutionTimeout):
            return MONGODB
    return None


def never_succeeds(exc: BaseException) -> str | None:
    """Why ``exc`` can never succeed on a retry (a document MongoDB cannot store), else None."""
    for err in _chain(exc):
        if isinstance(err, pymongo.errors.DocumentTooLarge):
            return "document over MongoDB's size limit"
        if isinstance(err, OverflowError):
            return "integer out of BSON's 64-bit range"
        if isinstance(err, bson.errors.InvalidDocument | bson.errors.InvalidStringData):
            return "value BSON cannot store"
        if isinstance(err, pymongo.errors.WriteError) and err.code in _NEVER_STORABLE:
            return "document MongoDB refuses to store"
    return None
