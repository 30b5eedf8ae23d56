"""The broker's error hierarchy; the HTTP middleware maps it (and only it) to status + description."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydantic import ValidationError


class BrokerError(Exception):
    """An answer other than success; ``description`` is safe to show (no secrets, no input echo)."""

    status = 500

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description

    @property
    def headers(self) -> Mapping[str, str]:
        """Headers the answer must carry (HTTP semantics, e.g. ``Allow`` on a 405)."""
        return {}


class BadRequest(BrokerError):
    status = 400


class Unauthorized(BrokerError):
    status = 401


class NotFound(BrokerError):
    status = 404


class MethodNotAllowed(BrokerError):
    status = 405

    def __init__(self, description: str, allowed: Iterable[str]) -> None:
        super().__init__(description)
        self.allowed = sorted(set(allowed))

    @property
    def headers(self) -> Mapping[str, str]:
        return {"Allow": ", ".join(self.allowed)}  # RFC 9110 §15.5.6: required on a 405


class RequestTimeout(BrokerError):
    status = 408


class ClientClosedRequest(BrokerError):
    """The client went away before its request was read (nginx's 499): its doing, not a 5xx; the
    answer is never sent, the status labels the request in the metrics."""

    status = 499


class TooManyRequests(BrokerError):
    status = 429

    def __init__(self, description: str, retry_after_s: int) -> None:
        super().__init__(description)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> Mapping[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class PayloadTooLarge(BrokerError):
    status = 413


class Unavailable(BrokerError):
    """Storage unreachable or contention not resolved in time: the request may be retried."""

    status = 503


def from_validation(exc: ValidationError, *, prefix: str = "") -> BadRequest:
    """400 naming each bad field with pydantic's message, never the offending input."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False, include_context=False):
        loc = ".".join(str(p) for p in err["loc"])
        field = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "body"
        msg = "is required" if err["type"] == "missing" else err["msg"]
        parts.append(f"'{field}' {msg}")
    return BadRequest("invalid request: " + "; ".join(parts))
