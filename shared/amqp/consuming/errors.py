"""The consumer's error hierarchy: what a handler (or the decoding) raises to choose an outcome.

:mod:`shared.amqp.consuming.settle` maps it, in one place, to what happens to the message.
"""

from __future__ import annotations

from shared.urls import scrub_urls


class RetryableError(Exception):
    """A transient failure: try again later."""


class PermanentError(Exception):
    """The message can never succeed as it is: dead-letter it with this reason."""


class InvalidMessage(PermanentError):
    """The message cannot be read as its consumer expects (envelope, data model, key): dead-lettered
    at once with :attr:`reason`, before it takes a place in a lane."""

    def __init__(self, reason: str, error: BaseException) -> None:
        super().__init__(f"{reason}: {describe(error)}")
        self.reason = reason
        self.error = error


def describe(exc: BaseException) -> str:
    """The error a retry or dead letter carries in its headers (a message: no URL credentials)."""
    return scrub_urls(f"{type(exc).__name__}: {exc}")
