"""One error hierarchy for everything the Toolchain API and IAM answer (docs/architecture.md §5).

Callers only distinguish *retryable* (try again later: 429, 5xx, network, open breaker, 409, a 2xx
that is malformed, huge or endless) from *permanent* (the request can never succeed as sent: 4xx
other than 404/409/429) and *not found*
(404: the caller decides, e.g. a vanished tool is recreated or counts as deleted). The IBM error
message and ``X-Global-Transaction-ID`` are kept for the dead-letter reason; tokens never are.
"""

from __future__ import annotations

from typing import Any

from shared.dependencies import DependencyUnavailable

TRANSACTION_HEADER = "X-Global-Transaction-ID"


class OtcError(Exception):
    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        transaction_id: str | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        self.message = message
        self.status = status
        self.code = code
        self.transaction_id = transaction_id
        self.method = method
        self.path = path
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [f"{self.method} {self.path}" if self.method else "", f"{self.status}" if self.status else ""]
        head = " ".join(p for p in parts if p)
        tail = f" [{self.code}]" if self.code else ""
        trace = f" (X-Global-Transaction-ID {self.transaction_id})" if self.transaction_id else ""
        return f"{head + ': ' if head else ''}{self.message}{tail}{trace}"


class OtcRetryableError(OtcError):
    """Transient: 429, 5xx, network trouble, timeouts, an open circuit, a 409, a malformed answer."""


class OtcMalformedError(OtcRetryableError):
    """OTC answered 2xx with something that is not the documented answer (cut-off or non-JSON body,
    wrong shape, a field missing), or a body over the size cap: never read as an empty result or a
    guess. OTC's fault, not the message's: retried like a 5xx, and it counts against the breaker."""


class OtcTooLargeError(OtcMalformedError):
    """The answer's body was larger than ``OtcClientConfig.max_body_bytes``: not read further."""


class OtcEndlessListingError(OtcMalformedError):
    """A paged listing did not end: a ``next`` cursor came back again, or the listing passed its
    page, item or time bound. Its partial result is never used (a tool missing from it would look
    deleted)."""


class OtcAmbiguousError(OtcRetryableError):
    """A non-idempotent request may or may not have been applied (sent, then no answer)."""


class OtcUnavailableError(OtcRetryableError, DependencyUnavailable):
    """OTC as a whole is down or holding us off (circuit open, 429 storm): not the message's fault.

    The consumer holds the message without spending an attempt until :meth:`OtcClient.probe` succeeds.
    """

    dependency = "otc"


class OtcCircuitOpenError(OtcUnavailableError):
    """The client refused to call OTC: too many consecutive failures recently."""


class IamUnavailableError(OtcUnavailableError):
    """IAM is unreachable, failing, or refuses our API key: no token, so no call can be made.

    A refused key is fixed by an operator, never by the content of a message: it must not dead-letter
    the messages that happen to be in flight, and it makes otc-writer not ready.
    """

    dependency = "iam"


class OtcConflictError(OtcRetryableError):
    """409: a concurrent change; reading the current state and retrying resolves it."""


class OtcPermanentError(OtcError):
    """4xx other than 404/409/429: the request itself is wrong or not allowed."""


class OtcRefusedError(OtcPermanentError):
    """The Toolchain API refused a tool write for good (4xx other than 401/403/404/409/429): its
    content is wrong or not allowed; sending the same content again cannot succeed."""


# 401/403 are about credentials and permissions, fixed outside the content: never a refusal of it.
_NOT_CONTENT = frozenset({401, 403})


class OtcNotFoundError(OtcError):
    """404: the toolchain or tool does not exist (any more)."""


def ibm_message(body: Any) -> tuple[str | None, str | None]:
    """(message, code) from an IBM error body, parsed defensively (otc-api.md §4.6)."""
    if not isinstance(body, dict):
        return None, None
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        msg = first.get("message")
        code = first.get("code")
        return (str(msg) if msg is not None else None), (str(code) if code is not None else None)
    for key in ("errorMessage", "error", "message", "description"):
        if isinstance(body.get(key), str):
            code = body.get("errorCode") or body.get("code")
            return body[key], (str(code) if code is not None else None)
    return None, None


def classify(
    status: int,
    message: str,
    *,
    code: str | None,
    transaction_id: str | None,
    method: str,
    path: str,
    write: bool = False,
) -> OtcError:
    """The error for an answer; ``write``: the request was a tool write (POST or PATCH of a tool)."""
    kwargs: dict[str, Any] = {
        "status": status,
        "code": code,
        "transaction_id": transaction_id,
        "method": method,
        "path": path,
    }
    if status == 404:
        return OtcNotFoundError(message, **kwargs)
    if status == 409:
        return OtcConflictError(message, **kwargs)
    if status == 429 or status >= 500 or status == 408:
        return OtcRetryableError(message, **kwargs)
    if write and status not in _NOT_CONTENT:
        return OtcRefusedError(message, **kwargs)
    return OtcPermanentError(message, **kwargs)
